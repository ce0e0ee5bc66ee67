"""The verdict of a check and the machinery the ``check_…`` functions of every notebook share.

A check returns a :class:`Verdict` -- ``✓ correct`` or ``✗`` with a hint about the likely
mistake. The helpers build verdicts (:func:`ok`, :func:`wrong`), validate the learner's arguments
(``require_…``: a wrong *type* raises ``TypeError``, naming the argument), run the learner's code
(:func:`call`: an exception becomes a ✗ via :class:`Failed` and the :func:`checked` decorator),
compare results and name the likely mistake (:func:`to_tensor`, :func:`close`,
:func:`diagnose`), and keep the learner's random state untouched (:func:`own_rng`,
:func:`generator`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch

__all__ = [
    "Failed",
    "Verdict",
    "call",
    "checked",
    "close",
    "diagnose",
    "generator",
    "kl_rows",
    "ok",
    "own_rng",
    "require_bool",
    "require_callable",
    "require_int",
    "require_number",
    "to_tensor",
    "wrong",
]


@dataclass(frozen=True)
class Verdict:
    """The verdict of one check.

    Attributes:
        ok: True when the answer is right.
        message: what was checked (when right) or what is wrong and the likely mistake (when not).
        name: the check's name, e.g. ``"check_kd_loss"``.
    """

    ok: bool
    message: str
    name: str = "check"

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        mark = "✓ correct" if self.ok else "✗ not yet"
        return f"{mark} ({self.name}): {self.message}"

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        mark = "**✓ correct**" if self.ok else "**✗ not yet**"
        return f"{mark} (`{self.name}`): {self.message}"


def ok(name: str, message: str) -> Verdict:
    return Verdict(True, message, name)


def wrong(name: str, message: str) -> Verdict:
    return Verdict(False, message, name)


def require_callable(fn: Any, arg: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{arg} must be a function {signature}; got {type(fn).__name__}")


def require_number(value: Any, arg: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{arg} must be a number; got {type(value).__name__}")
    return float(value)


def require_int(value: Any, arg: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | Real) or float(value) != int(value):
        raise TypeError(f"{arg} must be a whole number; got {value!r} of type {type(value).__name__}")
    return int(value)


def require_bool(value: Any, arg: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{arg} must be True or False; got {type(value).__name__}")
    return value


class Failed(Exception):
    """Raised inside a check when the learner's function fails; turned into a ✗ verdict."""

    def __init__(self, result: Verdict) -> None:
        super().__init__(result.message)
        self.result = result


def call(name: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the learner's code: report it, do not crash the notebook
        raise Failed(wrong(name, f"your function raised {type(exc).__name__}: {exc}")) from exc


def to_tensor(name: str, value: Any, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The learner's output as a float64 tensor (or a ✗ verdict if it is not one)."""
    try:
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).double()
    except Exception as exc:
        raise Failed(wrong(name, f"{what} should be a tensor or a number; got {type(value).__name__}")) from exc
    if shape is not None and tuple(t.shape) != shape and not (shape == () and t.numel() == 1):
        raise Failed(wrong(name, f"{what} has shape {tuple(t.shape)}; expected {shape}"))
    return t.reshape(shape) if shape is not None else t


def close(a: torch.Tensor | float, b: torch.Tensor | float, rtol: float = 1e-4, atol: float = 1e-7) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and torch.allclose(a, b, rtol=rtol, atol=atol)


def diagnose(
    name: str,
    got: torch.Tensor,
    expected: torch.Tensor,
    mistakes: Sequence[tuple[str, torch.Tensor | float]],
    rtol: float = 1e-4,
    atol: float = 1e-7,
) -> Verdict | None:
    """None if ``got`` matches ``expected``; else a ✗ naming the first mistake whose value it matches."""
    if close(got, expected, rtol, atol):
        return None
    if not bool(torch.isfinite(got).all()):
        return wrong(name, "your result contains nan or inf: use log_softmax (not log(softmax)) and shift by the "
                           "max before exp")
    for hint, value in mistakes:
        if close(got, value, rtol, atol):
            return wrong(name, hint)
    if got.numel() == 1:
        g, e = got.item(), expected.item()
        ratio = f" (ratio {g / e:.4g})" if e != 0 else ""
        return wrong(name, f"got {g:.6g}, expected {e:.6g}{ratio}; this is none of the usual mistakes -- compare "
                           "your code with the formula step by step")
    err = (got - expected).abs().max().item()
    return wrong(name, f"max abs difference from the expected values {err:.3g}; this is none of the usual mistakes")


def checked(fn: Callable[..., Verdict]) -> Callable[..., Verdict]:
    """Turn a Failed raised while running the learner's code into the ✗ verdict it carries."""

    def wrapper(*args: Any, **kwargs: Any) -> Verdict:
        try:
            return fn(*args, **kwargs)
        except Failed as failed:
            return failed.result

    wrapper.__name__, wrapper.__doc__, wrapper.__qualname__ = fn.__name__, fn.__doc__, fn.__qualname__
    wrapper.__module__ = fn.__module__  # the nbXX module that defines the check, not this one
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


@contextmanager
def own_rng() -> Iterator[None]:
    """Run a block that seeds or draws random numbers without touching the learner's random state."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dim from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)
