"""scripts/choose_recipe.py: the dev-split recipe search reuses only main-job runs of the incumbent recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kd_lib.data import load_task
from tests.conftest import load_script, save_tiny_bert


@pytest.fixture(scope="module")
def script():
    return load_script("choose_recipe")


def _run(folder: Path, **config) -> Path:
    base = {"preset": "default", "temperature": 2.0, "alpha": 0.5, "epochs": 2, "lr": 2e-4, "train_limit": 8000,
            "teacher_seed": 0, "backend": "loop"}
    (folder / "results.json").write_text(json.dumps({"seed": 1, "config": {**base, **config}}))
    return folder


@pytest.mark.parametrize(("change", "named"), [({"temperature": 4.0}, "temperature"), ({"epochs": 3}, "epochs"),
                                               ({"lr": 1e-4}, "lr"),
                                               ({"preset": "fast", "train_limit": 512}, "preset")])
def test_a_run_of_another_recipe_is_refused(script, tmp_path, change, named):
    with pytest.raises(SystemExit, match=rf"is not a run of the incumbent recipe \(differs in .*'{named}'"):
        script.main_job_student(_run(tmp_path, **change), dev=None)


def test_a_run_with_another_teacher_subset_or_backend_is_refused(script, tmp_path):
    for change in ({"teacher_seed": 1}, {"backend": "trainer"}):
        with pytest.raises(SystemExit, match="not a run of the incumbent recipe"):
            script.main_job_student(_run(tmp_path, **change), dev=None)


def test_runs_say_whether_they_trained_with_fused_adamw(script, tmp_path):
    assert not script.trained_fused(_run(tmp_path))  # saved before the setting existed: plain AdamW
    assert script.trained_fused(_run(tmp_path, fused_adamw=True))
    assert not script.trained_fused(_run(tmp_path, fused_adamw=False))


def test_the_incumbent_is_a_candidate_and_the_preset(script):
    from kd_lib.pipeline import config_from_preset

    preset = config_from_preset("default")
    incumbent = script.CANDIDATES[script.INCUMBENT]
    assert (preset.temperature, preset.alpha, preset.epochs, preset.lr) == (
        incumbent["temperature"], incumbent["alpha"], incumbent["epochs"], incumbent["lr"])
    assert len(script.CANDIDATES) >= 3 and all(0 < c["alpha"] <= 1 for c in script.CANDIDATES.values())


def test_every_candidate_is_a_distinct_setting_of_the_main_job(script):
    from dataclasses import fields

    from kd_lib.pipeline import DistillConfig, config_from_preset
    from kd_lib.students import choose_student_layers

    known = {f.name for f in fields(DistillConfig)}
    recipes = [{k: v for k, v in c.items() if k not in script.SEARCH_ONLY} for c in script.CANDIDATES.values()]
    for name, recipe in zip(script.CANDIDATES, recipes, strict=True):
        assert set(recipe) <= known, f"{name}: not settings of the main job: {set(recipe) - known}"
        config = config_from_preset("default", **recipe)
        assert len(choose_student_layers(config.student_layers, 6)) == 3, name  # a 3-layer student of 6
    terms = [c["features"] for c in script.CANDIDATES.values() if "features" in c]
    assert terms and all(set(t) <= {"hidden", "attention"} and min(t.values()) > 0 for t in terms)
    distinct = {json.dumps(c, sort_keys=True) for c in
                [{**script.CANDIDATES[script.INCUMBENT], **c} for c in script.CANDIDATES.values()]}
    assert len(distinct) == len(script.CANDIDATES)


def test_the_teacher_incumbent_is_the_preset_and_notebook_04s(script):
    from kd_lib.pipeline import config_from_preset

    assert script.incumbent_teacher_recipe("sst2") == config_from_preset("default").teacher_recipe()
    ag = script.incumbent_teacher_recipe("ag_news")
    assert (ag.task, ag.train_limit, ag.epochs, ag.seed) == ("ag_news", 2000, 1, 0)
    for task in ("sst2", "ag_news"):
        assert script.TEACHER_CANDIDATES[script.TEACHER_INCUMBENT]["lr"] == script.incumbent_teacher_recipe(task).lr


def _decide(script, table: dict[str, list[float]], capsys) -> tuple[str, list[tuple[str, int]], str]:
    calls = []

    def score(name, seed):
        calls.append((name, seed))
        return table[name][seed]

    chosen = script.two_rounds(list(table), "inc", [0, 1, 2], score)
    return chosen, calls, capsys.readouterr().out


def test_a_challenger_behind_on_the_first_seed_is_not_run_again(script, capsys):
    table = {"inc": [0.80, 0.8, 0.8], "a": [0.79, 0.9, 0.9], "b": [0.70, 0.9, 0.9]}
    chosen, calls, out = _decide(script, table, capsys)
    assert chosen == "inc" and ("a", 1) not in calls and ("inc", 2) in calls
    assert "no challenger was ahead" in out and "-1.00 points" in out


def test_a_challenger_replaces_the_incumbent_only_when_its_interval_is_above_zero(script, capsys):
    steady = {"inc": [0.80, 0.81, 0.79], "a": [0.82, 0.83, 0.815], "b": [0.5, 0.5, 0.5]}
    chosen, _, out = _decide(script, steady, capsys)
    assert chosen == "a" and "chosen: a" in out
    noisy = {"inc": [0.80, 0.81, 0.79], "a": [0.82, 0.80, 0.80], "b": [0.5, 0.5, 0.5]}
    chosen, _, out = _decide(script, noisy, capsys)
    assert chosen == "inc" and "interval is not above 0" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--what", "teacher", "--main-job-runs", "runs/seed0"], "--main-job-runs applies to --what student only"),
    (["--task", "ag_news"], "--task applies to --what teacher only"),
    (["--what", "teacher", "--seeds", "0"], "at least 2 different seeds"),
    (["--candidates", "T=9"], "--candidates: unknown ['T=9']"),
    (["--what", "teacher", "--candidates", "T=1, α=0.5, 2 epochs"], "--candidates applies to --what student only"),
    (["--what", "teacher", "--dev", "unseen"], "--dev applies to --what student only"),
    (["--dev", "unseen", "--candidates", "T=2, α=0.5, 2 epochs, + transfer", "T=2, α=0.5, 3 epochs"],
     "--dev unseen: ['T=2, α=0.5, 2 epochs, + transfer'] train on unseen sentences; leave them out"),
])
def test_bad_arguments_are_refused_by_name(script, capsys, argv, message):
    with pytest.raises(SystemExit):
        script.main(argv)
    assert message in capsys.readouterr().err


def test_the_transfer_set_stays_clear_of_the_labelled_rows_and_of_dev(script):
    from kd_lib.data import load_task
    from kd_lib.splits import check_disjoint, dev_split

    dev = list(dev_split("sst2")["text"])
    rows, dropped = script.transfer_rows(16000, dev)
    labelled = set(load_task("sst2", limit={"train": 8000}, seed=0)["train"]["idx"])
    assert len(rows) + dropped == 16000 - 8000 and (len(rows), dropped) == (7307, 693)
    assert not labelled & set(rows["idx"]) and len(set(rows["idx"])) == len(rows)
    check_disjoint(rows, "sst2")
    # by plain substring search (not the script's word n-grams): no kept row of 4+ words is part of a dev
    # sentence, and no dev sentence is part of a kept row
    corpus = "\n".join(dev)
    long = [t for t in rows["text"] if len(t.split()) >= 4]
    assert not [t for t in long if f" {t} " in f" {corpus.replace(chr(10), ' ' + chr(10) + ' ')} "]
    kept = "\n".join(rows["text"])
    assert not [d for d in dev if d in kept]


def test_teacher_features_are_those_of_the_uniform_map_and_computed_once(script, tmp_path, small_data):
    teacher = save_tiny_bert(tmp_path / "t", num_layers=6).eval()
    hidden = script.teacher_features(teacher, small_data, {"hidden": 0.01}, 3)
    assert sorted(hidden.hidden) == [2, 4, 6] and hidden.attention_layers == []
    assert len(hidden.hidden[6]) == len(small_data)
    assert script.teacher_features(teacher, small_data, {"hidden": 0.5}, 3) is hidden  # the same terms: cached
    attention = script.teacher_features(teacher, small_data, {"attention": 0.1}, 2)
    assert attention.attention_layers == [3, 6] and attention.hidden_layers == []


def test_unseen_rows_are_the_long_rows_outside_the_default_subset_sharing_no_phrase_with_it(script):
    """Checked by plain substring search on samples, both ways: every unseen row is clean, every long row
    outside the subset that is not unseen shares a phrase; dev is drawn from the unseen rows."""
    from kd_lib.splits import DEFAULT_TRAIN_LIMIT, PHRASE_WORDS, dev_split

    train = load_task("sst2")["train"]["text"]
    used = load_task("sst2", limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]
    unseen = list(script.unseen_rows())
    assert unseen == sorted(set(unseen)) and len(unseen) > 10 * 872
    assert not set(unseen) & set(used["idx"])
    assert set(dev_split("sst2")["idx"]) <= set(unseen)
    long_rows = [t for t in used["text"] if len(t.split()) >= PHRASE_WORDS]
    corpus = "\n".join(used["text"])

    def shares(text: str) -> bool:
        return any(p in text for p in long_rows) or text in corpus

    rng = np.random.default_rng(0)
    for i in rng.choice(unseen, 150, replace=False):
        assert len(train[i].split()) >= 8 and not shares(train[i]), train[i]
    seen = np.setdiff1d([i for i in range(len(train)) if len(train[i].split()) >= 8], unseen + list(used["idx"]))
    for i in rng.choice(seen, 150, replace=False):
        assert shares(train[i]), train[i]
    assert set(script.unseen_rows(12)) == {i for i in unseen if len(train[i].split()) >= 12}


def test_results_are_stored_under_the_settings_they_trained_with(script, monkeypatch):
    """A candidate that leaves a setting to the preset is stored under the preset's value, so a result of an
    earlier preset is not taken for the current one; two names of the same settings share a key."""
    lr_now = script.config_from_preset("default").lr
    key = script._key("T=1, α=0.5, 2 epochs", 0)
    assert json.loads(key.split(" | ")[0]) == {"temperature": 1.0, "alpha": 0.5, "epochs": 2, "lr": lr_now}
    assert key.endswith(" | seed 0") and key != script._key("T=1, α=0.5, 2 epochs", 1)
    monkeypatch.setitem(script.CANDIDATES, "same as the incumbent", dict(script.CANDIDATES[script.INCUMBENT]))
    assert script._key("same as the incumbent", 2) == script._key(script.INCUMBENT, 2)
    assert script._key("lr 1e-4", 0) == "lr 1e-4 | seed 0"  # the teacher search's keys: name and seed


def test_the_decision_prints_the_interval_and_its_bonferroni_widening(script, capsys):
    """The unseen search of 2026-12-08 (accuracies rounded to 4 digits): lr 2e-4 against 1e-4, four challengers."""
    from scipy.stats import t as student_t

    table = {"inc": [0.8375, 0.8366, 0.8340], "a": [0.8414, 0.8384, 0.8377], "b": [0.8395, 0, 0],
             "c": [0.8389, 0, 0], "d": [0.8366, 0, 0]}
    chosen, _, out = _decide(script, table, capsys)
    assert chosen == "a" and "a − inc: +0.31 points, 95 % interval [+0.03, +0.60] over 3 seeds" in out
    d = np.subtract(table["a"], table["inc"])
    half = student_t.ppf(1 - 0.05 / 4 / 2, 2) * d.std(ddof=1) / np.sqrt(3)  # independent: 4 challengers
    assert f"for the 4 challengers of round 1: [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}]" in out
    assert d.mean() - half < 0  # widened, the interval would include 0
