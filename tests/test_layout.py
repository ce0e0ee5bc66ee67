"""The library's layout: no private name crosses a module boundary, and the README's library table
lists exactly the modules that exist (so concept -> module -> test stays one search)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY_FILES = sorted(p for d in ("kd_lib", "scripts", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(tree: ast.AST, own_module: str | None, attributes: bool) -> list[str]:
    """``from kd_lib.x import _y`` (and, with ``attributes``, ``kd_lib_module._y``) outside module x."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kd_lib"):
            for alias in node.names:
                if _private(alias.name) and node.module != own_module:
                    found.append(f"from {node.module} import {alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kd_lib"):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    if attributes:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != own_module):
                found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_across_modules(path):
    rel = path.relative_to(ROOT)
    module = ".".join(rel.with_suffix("").parts) if rel.parts[0] == "kd_lib" else None
    # tests may reach a private seam to simulate a crash (monkeypatch), but never import one
    found = _private_uses(ast.parse(path.read_text()), module, attributes=rel.parts[0] != "tests")
    assert not found, f"{rel}: private names used across modules: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_only_public_names(path):
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    assert not _private_uses(ast.parse(code), None, attributes=True)


def _modules() -> set[str]:
    """``kd_lib.<module>`` for every module of the library, and ``kd_lib.course`` for the course helpers."""
    names = {f"kd_lib.{p.stem}" for p in (ROOT / "kd_lib").glob("*.py") if p.stem not in {"__init__", "__main__"}}
    return names | {f"kd_lib.{p.name}" for p in (ROOT / "kd_lib").iterdir() if (p / "__init__.py").is_file()}


def test_readme_library_table_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The library", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `kd_lib")]
    listed = {name for row in rows for name in re.findall(r"`(kd_lib\.\w+)`", row.split("|")[1])}
    missing, unknown = _modules() - listed, listed - _modules()
    assert not missing and not unknown, f"missing from the README: {missing}; no such module: {unknown}"


def _sections() -> dict[tuple[str, int], str]:
    """``(notebook number, section number) -> title`` of every ``## N · Title`` heading."""
    found = {}
    for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                for m in re.finditer(r"^## (\d+) · (.+)$", "".join(cell["source"]), re.M):
                    found[(nb.stem[:2], int(m.group(1)))] = m.group(2).strip()
    return found


def _public_objects():
    import importlib

    paths = [*(ROOT / "kd_lib").glob("*.py"), ROOT / "kd_lib/course/digits.py", ROOT / "kd_lib/course/widgets.py"]
    for path in sorted(paths):
        if path.stem.startswith("__"):
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (callable(obj) or isinstance(obj, type)) and getattr(obj, "__module__", None) == module.__name__:
                yield f"{module.__name__}.{name}", obj


def test_every_public_function_names_the_notebook_section_that_teaches_it():
    """d2l's habit: concept -> notebook -> function -> test is one search. The cited section must exist."""
    sections, missing, wrong = _sections(), [], []
    for name, obj in _public_objects():
        doc = obj.__doc__ or ""
        if "not taught in a notebook" in doc:
            continue
        cited = re.findall(r"Taught in notebook (\d\d), section (\d+) \(([^\n]+?)\)\.", doc)
        if not cited:
            missing.append(name)
        wrong += [f"{name}: {nb} §{sec}" for nb, sec, title in cited if sections.get((nb, int(sec))) != title]
    assert not missing, f"docstrings without 'Taught in notebook NN, section N (Title).': {missing}"
    assert not wrong, f"cited sections that do not exist (or have another title): {wrong}"
