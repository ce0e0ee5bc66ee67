"""Build the course website from the committed, executed notebooks — offline, nothing re-executed.

    python scripts/build_site.py [--out _build/site] [--notebooks notebooks]

Steps: stage a Sphinx source folder in ``_build/site-src`` (docs/ with conf.py and the instructor
guide; README.md as the front page; every notebooks/NN_*.ipynb with Colab/Binder links and a
commented set-up cell added to the *copy*; notebooks/STYLE.md and data/README.md), build the slide
decks into it (scripts/build_slides.py), then run Sphinx (myst-nb with ``nb_execution_mode = "off"``,
the furo theme, MathJax from the sphinx-mathjax-offline package). Sphinx warnings fail the build.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_slides
import colab_cell

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEFAULT_OUT = ROOT / "_build" / "site"


def notebook_paths(notebooks_dir: Path) -> list[Path]:
    return sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def front_page(readme: str) -> str:
    """README.md with its repository-relative links pointed at the site's pages."""
    text = readme.replace("](docs/instructor_guide.md)", "](instructor_guide.md)")
    text = text.replace("](slides/)", "](slides.md)")
    return text


def slides_page(decks: list[Path]) -> str:
    lines = [
        "# Slides",
        "",
        "One deck per part of the course, built from the Markdown sources in `slides/` with the figures and",
        "printed outputs taken from the committed notebooks (`make slides`). Each deck is one self-contained",
        "HTML file (figures and MathJax inside): copy it to a USB stick and present it offline.",
        "Keys: → / ← (or click), `o` overview, `n` speaker notes; print to PDF for one slide per page.",
        "",
    ]
    for deck in decks:
        html = deck.read_text(encoding="utf-8")
        title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
        slides = html.count('<section class="slide"')
        lines.append(f'- <a href="slides/{deck.name}">{title}</a> ({slides} slides)')
    return "\n".join(lines) + "\n"


def toctrees(notebook_names: list[str], solution_names: list[str]) -> str:
    course = "\n".join(f"notebooks/{name}" for name in notebook_names)
    solutions = "\n".join(f"notebooks/solutions/{name}" for name in solution_names)
    return (
        "\n\n```{toctree}\n:hidden:\n:caption: Course\n\n" + course + "\n```\n\n"
        "```{toctree}\n:hidden:\n:caption: Solutions\n\n" + solutions + "\n```\n\n"
        "```{toctree}\n:hidden:\n:caption: Teaching\n\nslides\ninstructor_guide\n```\n\n"
        "```{toctree}\n:hidden:\n:caption: Reference\n\nnotebooks/STYLE\ndata/README\n```\n"
    )


def stage(src: Path, notebooks_dir: Path) -> list[Path]:
    """Fill ``src`` with everything Sphinx reads; returns the slide decks built into it."""
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "__pycache__"))
    repo_url, branch = colab_cell.repo_settings(DOCS / "conf.py")

    (src / "notebooks").mkdir()
    names = []
    for path in notebook_paths(notebooks_dir):
        nb = json.loads(path.read_text(encoding="utf-8"))
        # the committed notebooks carry the links as markdown; the site shows them with a real
        # (commented) set-up code cell instead
        colab_cell.remove_setup_cells(nb)
        colab_cell.add_setup_cells(nb, path.name, repo_url, branch, code_cell=True)
        (src / "notebooks" / path.name).write_text(colab_cell.dumps(nb), encoding="utf-8")
        names.append(path.stem)
    if not names:
        raise SystemExit(f"no notebooks in {notebooks_dir}")
    solutions = sorted((notebooks_dir / "solutions").glob("[0-9][0-9]_*.ipynb"))
    (src / "notebooks" / "solutions").mkdir()
    for path in solutions:
        shutil.copy(path, src / "notebooks" / "solutions" / path.name)
    shutil.copy(ROOT / "notebooks" / "STYLE.md", src / "notebooks" / "STYLE.md")
    (src / "data").mkdir()
    shutil.copy(ROOT / "data" / "README.md", src / "data" / "README.md")

    decks = build_slides.build(src / "_extra" / "slides", notebooks_dir=notebooks_dir)
    (src / "slides.md").write_text(slides_page(decks), encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (src / "index.md").write_text(front_page(readme) + toctrees(names, [p.stem for p in solutions]),
                                  encoding="utf-8")
    return decks


def build(out: Path = DEFAULT_OUT, notebooks_dir: Path = ROOT / "notebooks", quiet: bool = True) -> Path:
    src = out.parent / f"{out.name}-src"
    stage(src, notebooks_dir)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-E",
           "-d", str(src / "_doctrees"), str(src), str(out)]
    if quiet:
        cmd.insert(5, "-q")
    subprocess.run(cmd, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = build(args.out.resolve(), args.notebooks.resolve(), quiet=False)
    except build_slides.SlideBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: sphinx-build failed (exit {err.returncode}); see the warnings above", file=sys.stderr)
        return 1
    print(f"site built in {time.perf_counter() - start:.0f} s: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
