"""Which ``kd_lib`` code produced a notebook's stored outputs: a digest of the code it imports.

Every notebook's first cell calls ``print_versions("NN_name.ipynb")``, which prints the package
versions and a line ``kd_lib code   <12 hex digits> (<n> modules)``. The digest covers the code --
not the comments or docstrings -- of every ``kd_lib`` module the notebook imports, directly or
through other ``kd_lib`` modules (imports inside functions included). ``tests/test_notebooks.py``
recomputes it from the current tree and names the notebooks whose stored outputs came from code
that has changed since: re-execute them with ``make notebooks NB=05``.

Course infrastructure (every notebook's first cell), not taught in a notebook.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import io
import json
import tokenize
from pathlib import Path

__all__ = ["DIGEST_LABEL", "code_digest", "imported_modules", "notebook_digest", "stored_digest"]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../kd_lib
DIGEST_LABEL = "kd_lib code"
# The versions cell itself: printing versions produces no result, and this module must be able to
# change without making every notebook stale.
NOT_DIGESTED = frozenset({"kd_lib.check", "kd_lib.course.provenance"})


def _module_file(name: str) -> Path | None:
    """The file of ``kd_lib`` module ``name`` (``kd_lib.a.b``), or None if there is none."""
    parts = name.split(".")
    if parts[0] != "kd_lib":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_from(package: str, name: str) -> str | None:
    """The module that ``from package import name`` reads ``name`` from."""
    submodule = f"{package}.{name}"
    if _module_file(submodule) is not None:
        return submodule
    if _module_file(package) is None:
        return None
    if _module_file(package).name == "__init__.py":
        # a package may re-export lazily (PEP 562 ``__getattr__``): ask it where the name lives
        obj = getattr(importlib.import_module(package), name, None)
        where = getattr(obj, "__module__", None)
        if isinstance(where, str) and _module_file(where) is not None:
            return where
    return package


def _imports(tree: ast.AST, current: str | None = None, is_package: bool = False) -> set[str]:
    """``kd_lib`` modules named by the import statements anywhere in ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kd_lib")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside kd_lib
                if current is None:
                    continue
                parts = current.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "kd_lib":
                continue
            found.add(base)
            found.update(filter(None, (_resolve_from(base, a.name) for a in node.names)))
    return found


def _with_parents(names: set[str]) -> set[str]:
    """Importing ``kd_lib.a.b`` also runs ``kd_lib/__init__.py`` and ``kd_lib/a/__init__.py``."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {n for n in out if _module_file(n) is not None}


def _notebook_code(path: Path) -> str:
    """The code cells of a notebook, IPython magics and shell lines dropped."""
    cells = json.loads(Path(path).read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def imported_modules(notebook: str | Path) -> list[str]:
    """Every ``kd_lib`` module a notebook imports, directly or through other ``kd_lib`` modules.

    Imports inside functions count (a lazily imported module still runs). The modules in
    ``NOT_DIGESTED`` are listed but not followed: what they import (``kd_lib.check`` imports the
    data and model modules to verify them) does not produce a notebook's results. Sorted names.


    Course infrastructure (the notebooks' versions cell), not taught in a notebook.
    """
    todo = _with_parents(_imports(ast.parse(_notebook_code(Path(notebook)))))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        if name in NOT_DIGESTED:  # their own imports serve the versions cell and `kd_lib check`, not results
            continue
        file = _module_file(name)
        found = _imports(ast.parse(file.read_text()), name, file.name == "__init__.py")
        todo |= _with_parents(found) - seen
    return sorted(seen)


def _code_only(source: str) -> str:
    """``source`` without comments, docstrings, blank lines and trailing spaces."""
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = getattr(first, "value", None)
            if isinstance(first, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                skip.update(range(first.lineno, first.end_lineno + 1))
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(ln.rstrip() for i, ln in enumerate(lines, 1) if i not in skip and ln.strip())


def code_digest(modules: list[str]) -> str:
    """12 hex digits of sha256 over the code (not comments or docstrings) of ``modules``.

    Course infrastructure (the notebooks' versions cell), not taught in a notebook.
    """
    h = hashlib.sha256()
    for name in sorted(set(modules) - NOT_DIGESTED):
        h.update(f"{name}\n{_code_only(_module_file(name).read_text())}\n".encode())
    return h.hexdigest()[:12]


def notebook_digest(notebook: str | Path) -> tuple[str, int]:
    """The digest of the ``kd_lib`` code a notebook imports, and how many modules it covers.

    Course infrastructure (the notebooks' versions cell), not taught in a notebook.
    """
    modules = [m for m in imported_modules(notebook) if m not in NOT_DIGESTED]
    return code_digest(modules), len(modules)


def stored_digest(notebook: str | Path) -> str | None:
    """The digest printed in the notebook's stored versions cell (None if it has none).

    Course infrastructure (the notebooks' versions cell), not taught in a notebook.
    """
    cells = json.loads(Path(notebook).read_text())["cells"]
    for cell in cells:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            for line in "".join(out.get("text", "")).splitlines():
                if line.startswith(DIGEST_LABEL):
                    return line[len(DIGEST_LABEL) :].split()[0]
    return None
