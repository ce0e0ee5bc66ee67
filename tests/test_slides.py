"""The slide decks (slides/*.md → scripts/build_slides.py) build, are non-trivial, and every image resolves.

The figures come from the committed notebooks' stored outputs, so these tests also fail — naming the
notebook — when a deck refers to a notebook that has not been executed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_slides  # noqa: E402

DECKS = build_slides.deck_sources()
PARTS = {  # deck file stem prefix -> the notebooks that part covers
    "part1": {"01", "02", "03"},
    "part2": {"04", "05", "06", "07"},
    "part3": {"08", "09", "10", "11"},
    "part4": {"12", "13", "14"},
}
MIN_SLIDES = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _blocks(deck: Path) -> list[tuple[str, dict[str, str]]]:
    """Every ```figure / ```output block of a deck source, with its fields."""
    text = deck.read_text(encoding="utf-8")
    return [
        (kind, build_slides._fields(body, deck.name))
        for kind, body in re.findall(r"^```(figure|output)\n(.*?)^```", text, re.S | re.M)
    ]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("slides")
    written = build_slides.build(out)
    return {p.stem: p for p in written}


def test_one_deck_per_part():
    stems = [d.stem for d in DECKS]
    assert len(stems) == len(PARTS), stems
    for prefix in PARTS:
        assert sum(s.startswith(prefix) for s in stems) == 1, f"no single deck for {prefix}: {stems}"


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.stem)
def test_deck_draws_on_its_own_notebooks(deck):
    part = next(notebooks for prefix, notebooks in PARTS.items() if deck.stem.startswith(prefix))
    blocks = _blocks(deck)
    figures = [f for kind, f in blocks if kind == "figure"]
    assert len(figures) >= 4, f"{deck.name}: only {len(figures)} figures"
    used = {fields["notebook"][:2] for _, fields in blocks}
    assert used <= part, f"{deck.name} uses notebooks {sorted(used - part)} from another part"
    executed_figures = {f["notebook"][:2] for f in figures}
    assert len(executed_figures) >= 2, f"{deck.name}: figures from fewer than two notebooks"


@pytest.mark.parametrize("deck", DECKS, ids=lambda p: p.stem)
def test_every_selector_matches_exactly_one_cell(deck):
    # independent of execution: catches a renamed marker or a deleted cell in any notebook
    for kind, fields in _blocks(deck):
        nb_path = build_slides.find_notebook(fields["notebook"], build_slides.NOTEBOOKS_DIR)
        cell = build_slides.find_cell(nb_path, cell_id=fields.get("cell"), contains=fields.get("contains"))
        assert cell["cell_type"] == "code", f"{deck.name}: {kind} {fields} selects a {cell['cell_type']} cell"


def test_every_deck_builds_with_enough_slides(built):
    assert set(built) == {d.stem for d in DECKS}
    for stem, path in built.items():
        html = path.read_text(encoding="utf-8")
        n_slides = html.count('<section class="slide"')
        assert n_slides >= MIN_SLIDES, f"{stem}: {n_slides} slides"
        assert re.search(r"<title>Part [IV]+ · .+</title>", html), f"{stem}: no 'Part N · ...' title"
        assert "\\(" in html or "\\[" in html, f"{stem}: no maths"
        assert "MathJax" in html  # inlined, so the deck needs no network
        for slide in re.findall(r'<section class="slide".*?</section>', html, re.S):
            assert re.search(r"<h[12]>", slide), f"{stem}: a slide without a heading"


def test_every_image_resolves(built):
    for stem, path in built.items():
        html = path.read_text(encoding="utf-8")
        sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
        assert len(sources) >= 4, f"{stem}: {len(sources)} images"
        for src in sources:
            if src.startswith("data:"):
                assert src.startswith("data:image/png;base64,"), f"{stem}: {src[:40]}"
                width, height = _png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
                assert width > 50 and height > 50, f"{stem}: a {width}x{height} image"
            else:
                assert "://" not in src, f"{stem}: remote image {src}"
                assert (path.parent / src).is_file(), f"{stem}: missing {src}"
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html), f"{stem}: loads a remote asset"


def test_figures_are_the_notebooks_own_pngs(built):
    # the first figure of part I is byte for byte the PNG stored in notebook 01
    deck = next(d for d in DECKS if d.stem.startswith("part1"))
    fields = next(f for k, f in _blocks(deck) if k == "figure")
    nb_path = build_slides.find_notebook(fields["notebook"], build_slides.NOTEBOOKS_DIR)
    cell = build_slides.find_cell(nb_path, cell_id=fields.get("cell"), contains=fields.get("contains"))
    png = build_slides.cell_pngs(nb_path, cell)[0]
    html = built[deck.stem].read_text(encoding="utf-8")
    assert base64.b64encode(png).decode("ascii") in html


def test_slides_split_on_rules_outside_code_only():
    text = "# A\n\n---\n\n## B\n\n```python\nx = 1\n---\n```\n\n---\n\n## C\n"
    slides = build_slides.split_slides(text)
    assert len(slides) == 3
    assert "---" in slides[1]


def test_unexecuted_notebook_fails_clearly(tmp_path):
    source = ROOT / "notebooks" / "01_softmax_and_temperature.ipynb"
    nb = json.loads(source.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / source.name).write_text(json.dumps(nb), encoding="utf-8")
    deck = tmp_path / "part9_test.md"
    deck.write_text("# Part IX · test\n\n---\n\n## A figure\n\n```figure\nnotebook: 01\ncell: 0efb1833\n```\n")
    with pytest.raises(build_slides.SlideBuildError) as err:
        build_slides.build(tmp_path / "out", [deck], notebooks)
    message = str(err.value)
    assert "part9_test.md, slide 2" in message
    assert "01_softmax_and_temperature.ipynb" in message and "never been executed" in message
    assert not (tmp_path / "out" / "part9_test.html").exists()


def test_bad_selector_fails_clearly(tmp_path):
    deck = tmp_path / "part9_test.md"
    deck.write_text("# Part IX · test\n\n```figure\nnotebook: 01\ncontains: no cell has this text\n```\n")
    with pytest.raises(build_slides.SlideBuildError, match="0 cells match a code cell containing"):
        build_slides.build(tmp_path / "out", [deck])


def test_command_line_writes_the_decks(tmp_path):
    deck = next(d for d in DECKS if d.stem.startswith("part1"))
    shutil.copy(deck, tmp_path / deck.name)
    assert build_slides.main(["--out", str(tmp_path / "out"), str(tmp_path / deck.name)]) == 0
    assert (tmp_path / "out" / f"{deck.stem}.html").stat().st_size > 100_000
