"""The committed notebooks: executed, error-free, quiet, and shaped by notebooks/STYLE.md.

nbval (run on ``notebooks/`` by the same pytest command) re-executes each notebook with
``KD_FAST=1``; but it silently passes cells that have no stored outputs, so these tests make
sure the committed files hold a real, complete, clean run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kd_lib.course.provenance import notebook_digest, stored_digest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS_DIR / "solutions").glob("[0-9][0-9]_solutions.ipynb"))
EXPECTED = ["01_softmax_and_temperature", "02_distillation_losses", "03_first_distillation"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _code(path: Path) -> list[dict]:
    return [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]


def test_course_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS][: len(EXPECTED)] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_was_executed_in_order(path):
    counts = [c["execution_count"] for c in _code(path)]
    assert None not in counts, f"{path.name}: cells without stored outputs (never executed)"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not run top to bottom in one go"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_errors_or_stderr_noise(path):
    for i, cell in enumerate(_code(path)):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name} cell {i}: stored error {out.get('ename')}"
            if out.get("name") == "stderr":
                text = "".join(out["text"])
                pytest.fail(f"{path.name} cell {i}: stderr output stored: {text[:200]!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_follows_the_style_guide(path):
    cells = _cells(path)
    intro = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and intro.startswith(f"# {path.stem[:2]} · ")
    assert re.search(r"[Rr]uns in about \d+(\.\d+)? min(utes)? on a laptop CPU", intro)
    code = _code(path)
    assert f'print_versions("{path.name}")' in _source(code[0]) and _source(code[0]).startswith("# NBVAL_IGNORE_OUTPUT")
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    assert "fast_mode()" in _source(params[0])
    assert any("assert " in _source(c) for c in code), f"{path.name}: asserts no result"
    assert any("NBVAL_CHECK_OUTPUT" in _source(c) for c in code), f"{path.name}: no cell output is compared"
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Summary", markdown, re.M) and re.search(r"^#+ .*Exercises", markdown, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_size_is_reasonable(path):
    assert path.stat().st_size < 2_000_000


def test_stored_outputs_come_from_the_current_kd_lib_code():
    """Each notebook's versions cell printed the digest of the kd_lib code it imports; it must
    still match, or the stored outputs were produced by code that has changed since."""
    stale = []
    for path in NOTEBOOKS + SOLUTIONS:
        stored, (current, _) = stored_digest(path), notebook_digest(path)
        if stored != current:
            stale.append(f"{path.relative_to(NOTEBOOKS_DIR)} (stored {stored}, current code {current})")
    numbers = " ".join(sorted({Path(s).name[:2] for s in stale}))
    assert not stale, (
        "notebooks whose stored outputs came from kd_lib code that has changed since:\n  "
        + "\n  ".join(stale)
        + f'\nre-execute them with their defaults: make notebooks NB="{numbers}"'
    )
