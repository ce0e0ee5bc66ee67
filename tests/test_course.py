"""kd_lib.course: the exercises package exports exactly its checks, and loads a notebook's module
(and that module's heavy imports) only when one of its checks is used."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kd_lib.course import exercises as ex

EXERCISES_DIR = Path(ex.__file__).resolve().parent
NOTEBOOK_MODULES = [f"kd_lib.course.exercises.nb{n:02d}" for n in range(1, 15)]
# imported only inside the functions that need them: kd_lib.trainer loads transformers.Trainer
HEAVY = ("kd_lib.trainer", "transformers")


def _fresh_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.strip()


def test_one_module_per_notebook():
    assert sorted(p.stem for p in EXERCISES_DIR.glob("nb*.py")) == [m.rsplit(".", 1)[1] for m in NOTEBOOK_MODULES]


def test_notebook_01_checks_do_not_load_the_trainer():
    code = "import sys, kd_lib.course.exercises.nb01 as m; print('transformers.trainer' in sys.modules)"
    assert _fresh_python(code) == "False"


def test_a_check_looked_up_in_the_package_loads_only_its_notebook_module():
    code = (
        "import sys; from kd_lib.course.exercises import check_kd_loss; "
        "print(sorted(m for m in sys.modules if m.startswith('kd_lib.course.exercises.')), "
        "'transformers.trainer' in sys.modules)"
    )
    assert _fresh_python(code) == ("['kd_lib.course.exercises.nb02', 'kd_lib.course.exercises.verdict'] False")


def test_all_lists_exactly_the_checks_of_the_notebook_modules_and_the_verdict():
    defined = {}
    for name in NOTEBOOK_MODULES:
        module = importlib.import_module(name)
        checks = {
            n for n, obj in vars(module).items() if n.startswith("check_") and callable(obj) and obj.__module__ == name
        }
        assert checks, name
        assert checks == {n for n in module.__all__ if n.startswith("check_")}, name
        assert not checks & defined.keys(), f"{name} redefines {checks & defined.keys()}"
        defined |= {n: getattr(module, n) for n in checks}
    assert ex.__all__[0] == "Verdict"
    assert sorted(ex.__all__) == sorted([*defined, "Verdict"])
    assert len(ex.__all__) == len(set(ex.__all__))
    for n, fn in defined.items():
        assert getattr(ex, n) is fn, n
    assert ex.Verdict is importlib.import_module("kd_lib.course.exercises.verdict").Verdict
    assert set(ex.__all__) <= set(dir(ex))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="check_nothing"):
        ex.check_nothing  # noqa: B018
    with pytest.raises(ImportError):
        from kd_lib.course.exercises import CheckResult  # noqa: F401


@pytest.mark.parametrize("path", sorted(EXERCISES_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_heavy_modules_are_imported_only_inside_functions(path):
    tree = ast.parse(path.read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [a.name for node in top_level if isinstance(node, ast.Import) for a in node.names]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module]
    heavy = [n for n in names if n.startswith(HEAVY)]
    assert not heavy, f"{path.name} imports {heavy} at module level"


# --- provenance: the digest of the kd_lib code a notebook imports ---------------------------------


def _package(tmp_path, monkeypatch, files: dict[str, str]):
    from kd_lib.course import provenance

    for name, text in files.items():
        path = tmp_path / "kd_lib" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path / "kd_lib")
    return provenance


def _notebook(tmp_path, code: str):
    path = tmp_path / "nb.ipynb"
    cell = {"cell_type": "code", "source": [code], "outputs": [], "metadata": {}, "execution_count": None}
    path.write_text(json.dumps({"cells": [cell]}))
    return path


def test_digest_follows_imports_anywhere_but_ignores_comments_and_docstrings(tmp_path, monkeypatch):
    files = {
        "__init__.py": "",
        "a.py": '"""Module a."""\nfrom kd_lib import b\n\ndef f():\n    """Doc."""\n    return b.g()  # note\n',
        "b.py": "def g():\n    from .c import h\n    return h()\n",
        "c.py": "def h():\n    return 1\n",
        "unused.py": "x = 1\n",
    }
    prov = _package(tmp_path, monkeypatch, files)
    nb = _notebook(tmp_path, "%matplotlib inline\nfrom kd_lib.a import f\nprint(f())")
    assert prov.imported_modules(nb) == ["kd_lib", "kd_lib.a", "kd_lib.b", "kd_lib.c"]
    digest, n = prov.notebook_digest(nb)
    assert n == 4 and len(digest) == 12
    # comments, docstrings and blank lines are not code: the digest stays
    (tmp_path / "kd_lib" / "a.py").write_text(
        files["a.py"].replace("Doc.", "Other words.").replace("# note", "") + "\n\n"
    )
    assert prov.notebook_digest(nb)[0] == digest
    # a changed line of code in a module reached only through an import inside a function: it moves
    (tmp_path / "kd_lib" / "c.py").write_text("def h():\n    return 2\n")
    assert prov.notebook_digest(nb)[0] != digest
    # a module the notebook does not reach does not matter
    changed = prov.notebook_digest(nb)[0]
    (tmp_path / "kd_lib" / "unused.py").write_text("x = 2\n")
    assert prov.notebook_digest(nb)[0] == changed


def test_digest_does_not_follow_the_imports_of_the_versions_cell(tmp_path, monkeypatch):
    # kd_lib.check (print_versions, in every notebook) imports modules to verify them; those are not
    # the notebook's code, so changing one of them must not make every notebook stale
    files = {
        "__init__.py": "",
        "check.py": "def print_versions():\n    from kd_lib import splits\n    return splits.x\n",
        "splits.py": "x = 1\n",
        "a.py": "y = 1\n",
    }
    prov = _package(tmp_path, monkeypatch, files)
    nb = _notebook(tmp_path, "from kd_lib.check import print_versions\nfrom kd_lib import a")
    assert prov.imported_modules(nb) == ["kd_lib", "kd_lib.a", "kd_lib.check"]
    digest, n = prov.notebook_digest(nb)
    assert n == 2  # kd_lib and kd_lib.a; kd_lib.check is listed, never digested
    (tmp_path / "kd_lib" / "splits.py").write_text("x = 2\n")
    assert prov.notebook_digest(nb)[0] == digest
    # ... but a notebook that imports splits itself does depend on it
    nb2 = _notebook(tmp_path, "from kd_lib.check import print_versions\nfrom kd_lib import splits")
    before = prov.notebook_digest(nb2)[0]
    (tmp_path / "kd_lib" / "splits.py").write_text("x = 3\n")
    assert prov.notebook_digest(nb2)[0] != before


def test_stored_digest_reads_the_versions_cell(tmp_path):
    from kd_lib.course.provenance import stored_digest

    path = _notebook(tmp_path, "print_versions('nb.ipynb')")
    nb = json.loads(path.read_text())
    nb["cells"][0]["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": ["torch 2\n", "kd_lib code   abc123def456 (4 modules)\n"]}
    ]
    path.write_text(json.dumps(nb))
    assert stored_digest(path) == "abc123def456"
    assert stored_digest(_notebook(tmp_path, "1")) is None
