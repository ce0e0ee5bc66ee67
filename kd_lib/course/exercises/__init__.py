"""Automatic feedback for the course's exercises: ``check_…`` functions, one per checkable answer.

Each check takes either *your function* (implement-a-piece exercises: it is called on small fixed
inputs and compared with the reference in ``kd_lib``) or *your number* (predict-then-check
exercises: it is compared with the value ``kd_lib`` computes for the notebook's setting). It
returns a :class:`~kd_lib.course.exercises.verdict.Verdict` -- ``✓ correct`` or ``✗`` with a hint
about the likely mistake, recognised numerically (a loss ``1/C`` of the expected value points to
``reduction="mean"``, one ``1/T²`` of it to a missing ``T²``, and so on). A wrong answer never
raises; only arguments of the wrong *type* do (``TypeError``, naming the argument).

Usage in a notebook::

    from kd_lib.course.exercises import check_kd_loss
    check_kd_loss(my_kd_loss)          # displays ✓ or ✗ + hint
    assert check_kd_loss(my_kd_loss)   # a Verdict is truthy when correct

The checks of notebook ``NN`` live in :mod:`kd_lib.course.exercises.nbNN` (``nb01``, ``nb02``, …);
the verdict and the machinery they share in :mod:`kd_lib.course.exercises.verdict`. This package
imports a check's module only when the check is first looked up, so notebook 01's checks do not
load what notebook 11's need (``transformers.Trainer``, through ``kd_lib.trainer``).

Every check runs in well under a second on a CPU (tiny tensors, no training, no model download).
Worked solutions: ``notebooks/solutions/NN_solutions.ipynb``.

Conventions: ``B`` batch, ``L`` sequence length, ``C`` classes, ``D`` hidden width, ``T`` temperature.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any


def _checks_by_module() -> dict[str, str]:
    """check name -> the module of this package that defines it, read from each ``nbNN.py``'s ``__all__``
    without importing it (a notebook's checks load only when first looked up, PEP 562; and a new
    notebook's module needs no change here)."""
    where = {"Verdict": "verdict"}
    for path in sorted(Path(__file__).parent.glob("nb[0-9][0-9].py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                checks = [n for n in ast.literal_eval(node.value) if n.startswith("check_")]
                where.update(dict.fromkeys(checks, path.stem))
    return where


_WHERE: dict[str, str] = _checks_by_module()

__all__ = ["Verdict", *sorted(n for n in _WHERE if n != "Verdict")]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
