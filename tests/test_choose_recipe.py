"""scripts/choose_recipe.py: the dev-split recipe search reuses only main-job runs of the incumbent recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "choose_recipe.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("choose_recipe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, **config) -> Path:
    base = {"preset": "default", "temperature": 2.0, "alpha": 0.5, "epochs": 2, "train_limit": 8000,
            "teacher_seed": 0, "backend": "loop"}
    (folder / "results.json").write_text(json.dumps({"seed": 1, "config": {**base, **config}}))
    return folder


@pytest.mark.parametrize(("change", "named"), [({"temperature": 4.0}, "temperature"), ({"epochs": 3}, "epochs"),
                                               ({"preset": "fast", "train_limit": 512}, "preset")])
def test_a_run_of_another_recipe_is_refused(script, tmp_path, change, named):
    with pytest.raises(SystemExit, match=rf"is not a run of the incumbent recipe \(differs in .*'{named}'"):
        script.main_job_student(_run(tmp_path, **change), dev=None)


def test_a_run_with_another_teacher_subset_or_backend_is_refused(script, tmp_path):
    for change in ({"teacher_seed": 1}, {"backend": "trainer"}):
        with pytest.raises(SystemExit, match="not a run of the incumbent recipe"):
            script.main_job_student(_run(tmp_path, **change), dev=None)


def test_the_incumbent_is_a_candidate_and_the_preset(script):
    from kd_lib.pipeline import config_from_preset

    preset = config_from_preset("default")
    incumbent = script.CANDIDATES[script.INCUMBENT]
    assert (preset.temperature, preset.alpha, preset.epochs) == (
        incumbent["temperature"], incumbent["alpha"], incumbent["epochs"])
    assert len(script.CANDIDATES) >= 3 and all(0 < c["alpha"] <= 1 for c in script.CANDIDATES.values())
