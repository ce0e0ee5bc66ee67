"""Automatic feedback for the course's exercises: ``check_…`` functions, one per checkable answer.

Each check takes either *your function* (implement-a-piece exercises: it is called on small fixed
inputs and compared with the reference in ``kd_lib``) or *your number* (predict-then-check
exercises: it is compared with the value ``kd_lib`` computes for the notebook's setting). It
returns a :class:`CheckResult` -- ``✓ correct`` or ``✗`` with a hint about the likely mistake,
recognised numerically (a loss ``1/C`` of the expected value points to ``reduction="mean"``, one
``1/T²`` of it to a missing ``T²``, and so on). A wrong answer never raises; only arguments of the
wrong *type* do (``TypeError``, naming the argument).

Usage in a notebook::

    from kd_lib.exercises import check_kd_loss
    check_kd_loss(my_kd_loss)          # displays ✓ or ✗ + hint
    assert check_kd_loss(my_kd_loss)   # a CheckResult is truthy when correct

Every check runs in well under a second on a CPU (tiny tensors, no training, no model download).
Worked solutions: ``notebooks/solutions/NN_solutions.ipynb``.

Conventions: ``B`` batch, ``L`` sequence length, ``C`` classes, ``D`` hidden width, ``T`` temperature.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.ensemble import ensemble_probs
from kd_lib.evaluate import expected_calibration_error
from kd_lib.losses import IGNORE_INDEX, distillation_loss, hidden_state_loss, kd_loss, layer_map, softmax_t
from kd_lib.trainer import training_memory_gb

__all__ = [
    "CheckResult",
    "check_bert_base_counts",
    "check_bert_param_formula",
    "check_cosine_hidden_loss",
    "check_csr_break_even",
    "check_csr_bytes",
    "check_distillation_loss",
    "check_ece",
    "check_effective_alpha",
    "check_entropy_derivative",
    "check_fold_token_types",
    "check_grad_accumulation",
    "check_high_temperature_gradient",
    "check_kd_loss",
    "check_kl_directions",
    "check_largest_batch",
    "check_layer_map",
    "check_mixture_flip_temperature",
    "check_next_token_labels",
    "check_pad_share",
    "check_pair_difference_layer",
    "check_projection_count",
    "check_qr_index",
    "check_shift_invariance",
    "check_softmax_overflow",
    "check_temperature_for_target",
    "check_temperature_scaling",
    "check_token_kd_loss",
    "check_tokenize_prediction",
    "check_validation_split",
]


# ---------------------------------------------------------------------------------------------
# The verdict and the machinery shared by the checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
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


def _ok(name: str, message: str) -> CheckResult:
    return CheckResult(True, message, name)


def _wrong(name: str, message: str) -> CheckResult:
    return CheckResult(False, message, name)


def _require_callable(fn: Any, arg: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{arg} must be a function {signature}; got {type(fn).__name__}")


def _require_number(value: Any, arg: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{arg} must be a number; got {type(value).__name__}")
    return float(value)


def _require_int(value: Any, arg: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | Real) or float(value) != int(value):
        raise TypeError(f"{arg} must be a whole number; got {value!r} of type {type(value).__name__}")
    return int(value)


def _require_bool(value: Any, arg: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{arg} must be True or False; got {type(value).__name__}")
    return value


class _Failed(Exception):
    """Raised inside a check when the learner's function fails; turned into a ✗ verdict."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


def _call(name: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the learner's code: report it, do not crash the notebook
        raise _Failed(_wrong(name, f"your function raised {type(exc).__name__}: {exc}")) from exc


def _tensor(name: str, value: Any, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The learner's output as a float64 tensor (or a ✗ verdict if it is not one)."""
    try:
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).double()
    except Exception as exc:
        raise _Failed(_wrong(name, f"{what} should be a tensor or a number; got {type(value).__name__}")) from exc
    if shape is not None and tuple(t.shape) != shape and not (shape == () and t.numel() == 1):
        raise _Failed(_wrong(name, f"{what} has shape {tuple(t.shape)}; expected {shape}"))
    return t.reshape(shape) if shape is not None else t


def _close(a: torch.Tensor | float, b: torch.Tensor | float, rtol: float = 1e-4, atol: float = 1e-7) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and torch.allclose(a, b, rtol=rtol, atol=atol)


def _diagnose(
    name: str,
    got: torch.Tensor,
    expected: torch.Tensor,
    mistakes: Sequence[tuple[str, torch.Tensor | float]],
    rtol: float = 1e-4,
    atol: float = 1e-7,
) -> CheckResult | None:
    """None if ``got`` matches ``expected``; else a ✗ naming the first mistake whose value it matches."""
    if _close(got, expected, rtol, atol):
        return None
    if not bool(torch.isfinite(got).all()):
        return _wrong(name, "your result contains nan or inf: use log_softmax (not log(softmax)) and shift by the "
                            "max before exp")
    for hint, value in mistakes:
        if _close(got, value, rtol, atol):
            return _wrong(name, hint)
    if got.numel() == 1:
        g, e = got.item(), expected.item()
        ratio = f" (ratio {g / e:.4g})" if e != 0 else ""
        return _wrong(name, f"got {g:.6g}, expected {e:.6g}{ratio}; this is none of the usual mistakes -- compare "
                            "your code with the formula step by step")
    err = (got - expected).abs().max().item()
    return _wrong(name, f"max abs difference from the expected values {err:.3g}; this is none of the usual mistakes")


def _checked(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
    """Turn a _Failed raised while running the learner's code into the ✗ verdict it carries."""

    def wrapper(*args: Any, **kwargs: Any) -> CheckResult:
        try:
            return fn(*args, **kwargs)
        except _Failed as failed:
            return failed.result

    wrapper.__name__, wrapper.__doc__, wrapper.__qualname__ = fn.__name__, fn.__doc__, fn.__qualname__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


@contextmanager
def _own_rng() -> Iterator[None]:
    """Run a block that seeds or draws random numbers without touching the learner's random state."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dim from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


# ---------------------------------------------------------------------------------------------
# 01 · Softmax and temperature
# ---------------------------------------------------------------------------------------------

_LOGITS_01 = torch.tensor([13.2, 9.8, 8.1, 7.5, 2.4, 1.9, 1.2], dtype=torch.float64)  # like the notebook's teacher


@_checked
def check_temperature_for_target(temperature_for: Callable[[torch.Tensor, float], float]) -> CheckResult:
    """Exercise 01.2: ``temperature_for(logits, target) -> T`` with ``softmax_t(logits, T).max() == target``.

    Args:
        temperature_for: your function; ``logits`` is a float64 tensor ``[C]``, ``target`` a
            probability in ``(1/C, 1)``; it returns the temperature (a float), found by bisection.
    """
    name = "check_temperature_for_target"
    _require_callable(temperature_for, "temperature_for", "(logits [C], target) -> T")
    for target in (0.5, 0.9, 0.3):
        t = _tensor(name, _call(name, temperature_for, _LOGITS_01.clone(), target), "the returned T", ()).item()
        if not (math.isfinite(t) and t > 0):
            return _wrong(name, f"for target {target} you returned T = {t}; a temperature must be finite and > 0")
        p_top = softmax_t(_LOGITS_01, t).max().item()
        if abs(p_top - target) < 1e-3:
            continue
        if abs(softmax_t(_LOGITS_01, 1.0 / t).max().item() - target) < 1e-3:
            return _wrong(name, f"for target {target} your T = {t:.4g} works as 1/T: you returned beta = 1/T (or "
                                "multiplied the logits by T instead of dividing)")
        lo_hi = "raise" if p_top > target else "lower"
        return _wrong(name, f"for target {target}: p_top(T = {t:.4g}) = {p_top:.4f}. p_top decreases as T grows, so "
                            f"you need to {lo_hi} T; if T sits at an end of your search interval, bisection moved "
                            "the wrong way or the interval is too small")
    return _ok(name, "p_top(T) hits 0.5, 0.9 and 0.3 to within 1e-3")


def _naive_nan(x: float, dtype: torch.dtype) -> bool:
    z = torch.tensor([x, 0.0], dtype=dtype)
    e = torch.exp(z)
    return bool(torch.isnan(e / e.sum()).any())


@_checked
def check_softmax_overflow(x_float32: float, x_float64: float) -> CheckResult:
    """Exercise 01.3: the smallest logit ``x`` for which ``naive_softmax(tensor([x, 0.0]), 1.0)`` is nan.

    An answer counts as right when ``x`` gives nan and ``x - 1`` does not (so the smallest whole
    number and the exact threshold both pass).

    Args:
        x_float32: your answer for float32 tensors.
        x_float64: your answer for float64 tensors.
    """
    name = "check_softmax_overflow"
    answers = {"float32": _require_number(x_float32, "x_float32"), "float64": _require_number(x_float64, "x_float64")}
    limits = {"float32": math.log(torch.finfo(torch.float32).max), "float64": math.log(torch.finfo(torch.float64).max)}
    if abs(answers["float32"] - limits["float64"]) < 2 and abs(answers["float64"] - limits["float32"]) < 2:
        return _wrong(name, "your two answers are swapped: float32 overflows first (its largest number is ~3.4e38)")
    for dtype_name, x in answers.items():
        dtype = getattr(torch, dtype_name)
        if not _naive_nan(x, dtype):
            return _wrong(name, f"{dtype_name}: at x = {x:g} exp(x) is still finite (< {torch.finfo(dtype).max:.3g}), "
                                "so the naive softmax works; nan appears only when exp(x) overflows to inf and "
                                "the division computes inf / inf")
        if _naive_nan(x - 1.0, dtype):
            return _wrong(name, f"{dtype_name}: x = {x:g} gives nan, but so does x - 1 = {x - 1:g}: look for a "
                                "smaller x (think of log of the largest finite number)")
    return _ok(name, f"nan from x ≈ {limits['float32']:.4f} (float32) and x ≈ {limits['float64']:.4f} (float64): "
                     "log of the largest finite number, where exp overflows to inf and inf / inf = nan")


def _entropy(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(z / t, dim=-1)
    return -(log_p.exp() * log_p).sum()


@_checked
def check_entropy_derivative(entropy_derivative: Callable[[torch.Tensor, float], Any]) -> CheckResult:
    """Exercise 01.4: ``entropy_derivative(z, T) -> dH/dT`` in closed form (``Var_p(z) / T^3``).

    Args:
        entropy_derivative: your function; ``z`` is a float64 tensor of logits ``[C]``, ``T > 0``;
            it returns the derivative of the entropy of ``softmax(z / T)`` with respect to ``T``.
    """
    name = "check_entropy_derivative"
    _require_callable(entropy_derivative, "entropy_derivative", "(z [C], T) -> dH/dT")
    for temperature in (2.0, 0.7):
        z = _LOGITS_01.clone()
        t = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
        (expected,) = torch.autograd.grad(_entropy(z, t), t)
        got = _tensor(name, _call(name, entropy_derivative, z.clone(), temperature), "dH/dT", ())
        p = softmax_t(z, temperature)
        var_p = (p * z**2).sum() - (p * z).sum() ** 2
        mistakes = [
            ("off by a factor of T: the derivative is Var_p(z) / T^3 (differentiate with respect to beta = 1/T, "
             "then multiply by d beta / dT = -1/T^2)", var_p / temperature**2),
            ("off by a factor of 1/T: the derivative is Var_p(z) / T^3", var_p / temperature**4),
            ("wrong sign: the entropy rises with T, so dH/dT >= 0", -var_p / temperature**3),
            ("you used the unweighted variance of z; the variance must be under p: "
             "sum_i p_i z_i^2 - (sum_i p_i z_i)^2", z.var(unbiased=False) / temperature**3),
            ("you took the variance of z / T instead of z: that divides by T^2 once more",
             var_p / temperature**5),
        ]
        verdict = _diagnose(name, got, expected, mistakes, rtol=1e-5)
        if verdict is not None:
            return _wrong(name, f"at T = {temperature}: {verdict.message}")
    return _ok(name, "matches autograd's dH/dT at T = 2 and T = 0.7")


@_checked
def check_high_temperature_gradient(limit_gradient: Callable[[torch.Tensor, torch.Tensor], Any]) -> CheckResult:
    """Exercise 01.5: the ``T -> inf`` limit of ``d kd_loss / dz`` for one example.

    Args:
        limit_gradient: your function ``(z [C], v [C]) -> [C]`` giving the limit of the gradient of
            ``kd_loss(z[None], v[None], T)`` (student logits ``z``, teacher logits ``v``) with respect to
            ``z`` as ``T -> inf`` -- ``((z - mean z) - (v - mean v)) / C``.
    """
    name = "check_high_temperature_gradient"
    _require_callable(limit_gradient, "limit_gradient", "(z [C], v [C]) -> gradient [C]")
    g = _gen(1)
    z, v = torch.randn(10, generator=g, dtype=torch.float64) + 1.0, torch.randn(10, generator=g, dtype=torch.float64)
    c = z.numel()
    expected = ((z - z.mean()) - (v - v.mean())) / c
    got = _tensor(name, _call(name, limit_gradient, z.clone(), v.clone()), "the gradient", (c,))
    mistakes = [
        ("off by a factor of C: the softmax's first-order expansion is (1 + (z_i - mean z)/T) / C", expected * c),
        ("the logits must be mean-centred: only differences between logits matter, so subtract each vector's mean",
         (z - v) / c),
        ("wrong sign: the gradient pushes z towards v, so it is (z - v) minus their means, not (v - z)", -expected),
        ("off by a factor of T at T = 100: the limit is reached after the T² of kd_loss cancels the 1/T of the "
         "softmax differences -- no T remains", expected * 100),
    ]
    verdict = _diagnose(name, got, expected, mistakes, rtol=1e-6, atol=1e-9)
    if verdict is not None:
        return verdict
    zz = z.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(kd_loss(zz[None], v[None], 1e4), zz)
    err = (autograd - got).abs().max().item()
    return _ok(name, f"equals ((z - z̄) - (v - v̄)) / C; autograd at T = 1e4 differs by {err:.1e}")


# ---------------------------------------------------------------------------------------------
# 02 · Distillation losses
# ---------------------------------------------------------------------------------------------


def check_shift_invariance(per_row: bool, per_class: bool) -> CheckResult:
    """Exercise 02.1: is ``kd_loss`` unchanged when a constant is added to the teacher logits?

    Args:
        per_row: your answer for a different constant per *row* (example), ``teacher + c[:, None]``.
        per_class: your answer for one vector added to every row, ``teacher + u[None, :]``.
    """
    name = "check_shift_invariance"
    per_row, per_class = _require_bool(per_row, "per_row"), _require_bool(per_class, "per_class")
    g = _gen(2)
    s, t = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    base = kd_loss(s, t, 2.0)
    row_same = _close(kd_loss(s, t + torch.randn(4, 1, generator=g, dtype=torch.float64) * 5, 2.0), base)
    class_same = _close(kd_loss(s, t + torch.randn(1, 5, generator=g, dtype=torch.float64) * 5, 2.0), base)
    if per_row != row_same:
        return _wrong(name, "per row: softmax(z + c) = softmax(z) for any constant c added to all the classes of one "
                            "example, so the teacher's probabilities -- and the loss -- do not change")
    if per_class != class_same:
        return _wrong(name, "per class: adding the same vector u to every row changes the *differences* between "
                            "classes (u_i - u_j), so the teacher's probabilities change, and the loss with them")
    return _ok(name, "a per-row constant changes nothing (softmax is shift-invariant within a row); a per-class "
                     "vector changes the logit differences and so the loss")


_P_TEACHER = torch.tensor([0.45, 0.45, 0.05, 0.05], dtype=torch.float64)
_P_COVER = torch.tensor([0.3, 0.3, 0.2, 0.2], dtype=torch.float64)
_P_MODE = torch.tensor([0.85, 0.05, 0.05, 0.05], dtype=torch.float64)


def check_kl_directions(
    forward_cover: float, forward_mode: float, reverse_cover: float, reverse_mode: float
) -> CheckResult:
    """Exercise 02.2: the four KL divergences (in nats) between the bimodal teacher and the two students.

    Teacher ``[0.45, 0.45, 0.05, 0.05]``, covering student ``[0.3, 0.3, 0.2, 0.2]``, mode-seeking
    student ``[0.85, 0.05, 0.05, 0.05]``.

    Args:
        forward_cover: ``KL(p_t || p_cover)``.
        forward_mode: ``KL(p_t || p_mode)``.
        reverse_cover: ``KL(p_cover || p_t)``.
        reverse_mode: ``KL(p_mode || p_t)``.
    """
    name = "check_kl_directions"
    got = torch.tensor([_require_number(forward_cover, "forward_cover"), _require_number(forward_mode, "forward_mode"),
                        _require_number(reverse_cover, "reverse_cover"), _require_number(reverse_mode, "reverse_mode")],
                       dtype=torch.float64)

    def kl(p: torch.Tensor, q: torch.Tensor) -> float:
        return (p * (p / q).log()).sum().item()

    expected = torch.tensor([kl(_P_TEACHER, _P_COVER), kl(_P_TEACHER, _P_MODE), kl(_P_COVER, _P_TEACHER),
                             kl(_P_MODE, _P_TEACHER)], dtype=torch.float64)
    mistakes = [
        ("these are in bits (log base 2); use the natural log (nats), as PyTorch does", expected / math.log(2)),
        ("forward and reverse are swapped: the forward KL is KL(p_t || p_s) = sum p_t log(p_t / p_s)",
         expected[[2, 3, 0, 1]]),
        ("the covering and mode-seeking students are swapped", expected[[1, 0, 3, 2]]),
    ]
    verdict = _diagnose(name, got, expected, mistakes, rtol=1e-3, atol=1e-4)
    if verdict is not None:
        bad = [n for n, a, b in zip(("forward_cover", "forward_mode", "reverse_cover", "reverse_mode"), got, expected,
                                    strict=True) if not _close(a, b, 1e-3, 1e-4)]
        return verdict if "none of the usual" not in verdict.message else _wrong(
            name, f"{', '.join(bad)} wrong; KL(p || q) = sum_i p_i log(p_i / q_i), in nats")
    return _ok(name, "forward KL prefers the covering student (0.226 < 0.703) -- and so does the reverse KL here "
                     "(0.311 < 0.431), only less decisively")


def _ref_kd_mistakes(s: torch.Tensor, t: torch.Tensor, temperature: float) -> list[tuple[str, torch.Tensor]]:
    """Values of the classic wrong KD losses on ``[B, C]`` logits."""
    c, b = s.shape[-1], s.shape[0]
    log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    right = _kl_rows(log_pt, log_ps).mean() * temperature**2
    return [
        (f"your loss is 1/C = 1/{c} of the expected value: did you use reduction='mean'? It divides by B·C; "
         "use reduction='batchmean' (or sum over classes, mean over examples)", right / c),
        (f"your loss is 1/T² = 1/{temperature**2:g} of the expected value: multiply the KL by T²",
         right / temperature**2),
        ("KL arguments swapped: you computed KL(p_student || p_teacher). nn.KLDivLoss(input, target) computes "
         "KL(target || input): pass the student's log-probabilities first, the teacher's probabilities second",
         _kl_rows(log_ps, log_pt).mean() * temperature**2),
        ("softmax instead of log_softmax: KLDivLoss / F.kl_div expect log-probabilities as input",
         F.kl_div(F.softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
         * temperature**2),
        (f"your loss is B = {b} times the expected value: average over the examples (batchmean), do not sum",
         right * b),
        ("the temperature must divide both the student's and the teacher's logits",
         _kl_rows(F.log_softmax(t / temperature, -1), F.log_softmax(s, -1)).mean() * temperature**2),
        ("the temperature must divide both the student's and the teacher's logits",
         _kl_rows(F.log_softmax(t, -1), F.log_softmax(s / temperature, -1)).mean() * temperature**2),
        ("your loss is 1/(C·T²) of the expected value: reduction='mean' *and* no T²", right / (c * temperature**2)),
    ]


@_checked
def check_kd_loss(my_kd_loss: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """Hinton's KD loss on ``[B, C]`` logits (exercise 02.3, first step): compared with ``kd_lib.losses.kd_loss``.

    Args:
        my_kd_loss: your function ``(student_logits [B, C], teacher_logits [B, C], T) -> loss`` (a 0-dim
            tensor): ``T² · KL(p_teacher(T) || p_student(T))``, summed over classes, averaged over examples.
    """
    name = "check_kd_loss"
    _require_callable(my_kd_loss, "my_kd_loss", "(student_logits [B, C], teacher_logits [B, C], T) -> loss")
    g = _gen(3)
    for b, c, temperature in ((4, 5, 3.0), (3, 7, 2.0)):
        s = (torch.randn(b, c, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
        t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
        out = _call(name, my_kd_loss, s, t.clone(), temperature)
        got = _tensor(name, out, "the loss", ())
        expected = kd_loss(s.detach(), t, temperature)
        verdict = _diagnose(name, got, expected, _ref_kd_mistakes(s.detach(), t, temperature))
        if verdict is not None:
            return _wrong(name, f"B = {b}, C = {c}, T = {temperature:g}: {verdict.message}")
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return _wrong(name, "the value is right but no gradient flows to the student logits: keep the loss a "
                                "tensor (no .item(), no torch.no_grad(), no .detach() on the student side)")
    return _ok(name, "equals kd_loss for (B, C, T) = (4, 5, 3) and (3, 7, 2), and its gradient reaches the student")


@_checked
def check_token_kd_loss(
    my_token_kd_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> CheckResult:
    """Exercises 02.3 and 09.2: token-level KD with padding, compared with ``kd_loss(..., mask=mask)``.

    Args:
        my_token_kd_loss: your function ``(student_logits [B, L, C], teacher_logits [B, L, C],
            mask [B, L], T) -> loss``: ``T²`` times the KL per token, averaged over the positions where
            ``mask`` is 1 (padding excluded).
    """
    name = "check_token_kd_loss"
    _require_callable(my_token_kd_loss, "my_token_kd_loss", "(student [B, L, C], teacher [B, L, C], mask [B, L], T)")
    g = _gen(4)
    b, length, c, temperature = 3, 6, 5, 2.0
    s = torch.randn(b, length, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(b, length, c, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    expected = kd_loss(s, t, temperature, mask=mask)
    keep = mask.bool()
    log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = _kl_rows(log_pt, log_ps)  # [B, L]
    mistakes = [
        ("padding is not masked: average the per-token KL over the positions where mask is 1 only",
         kl.mean() * temperature**2),
        ("you averaged over all B·L positions after zeroing the padding: divide by the number of real tokens "
         "(mask.sum()) instead", (kl * keep).sum() / kl.numel() * temperature**2),
        ("reduction='batchmean' on [B, L, C] divides by B only, so your loss is summed over the tokens: flatten the "
         "real positions to [N, C] first", (kl * keep).sum() / b * temperature**2),
        ("reduction='batchmean' on [B, L, C] without a mask: it sums over every position (padding included) and "
         "divides by B only", kl.sum() / b * temperature**2),
        (f"your loss is 1/C = 1/{c} of the expected value: reduction='mean' also divides by the classes; sum over "
         "classes, then average over the real tokens", kl[keep].mean() * temperature**2 / c),
        (f"your loss is 1/T² = 1/{temperature**2:g} of the expected value: multiply by T²", kl[keep].mean()),
        ("KL arguments swapped: you computed KL(p_student || p_teacher)",
         _kl_rows(log_ps, log_pt)[keep].mean() * temperature**2),
    ]
    got = _tensor(name, _call(name, my_token_kd_loss, s.clone(), t.clone(), mask.clone(), temperature), "the loss", ())
    verdict = _diagnose(name, got, expected, mistakes)
    if verdict is not None:
        return verdict
    s2, t2 = s.clone(), t.clone()
    ramp = torch.linspace(-1e4, 1e4, c, dtype=torch.float64)
    s2[~keep], t2[~keep] = ramp, ramp.flip(0)  # huge logits at the padded positions must not matter
    got2 = _tensor(name, _call(name, my_token_kd_loss, s2, t2, mask.clone(), temperature), "the loss", ())
    if not _close(got2, expected):
        return _wrong(name, "right on ordinary inputs, but the loss changes when the padded positions hold huge "
                            "logits: select the real positions (logits[mask.bool()]) before the softmax, rather "
                            "than multiplying a result that may already be nan or inf by the mask")
    return _ok(name, "equals kd_loss(..., mask=mask), and huge logits at padded positions do not change it")


@_checked
def check_effective_alpha(effective_alpha: Callable[[float, int], float]) -> CheckResult:
    """Exercise 02.5: the ``alpha'`` at which the ``reduction="mean"`` bug mixes like the correct loss at ``alpha``.

    With ``reduction="mean"`` the soft term is ``1/C`` of the right one, so
    ``alpha' · KD / C : (1 - alpha') · CE`` must equal ``alpha · KD : (1 - alpha) · CE``.

    Args:
        effective_alpha: your function ``(alpha, num_classes) -> alpha'``.
    """
    name = "check_effective_alpha"
    _require_callable(effective_alpha, "effective_alpha", "(alpha, num_classes) -> alpha'")
    for alpha, c in ((0.5, 10), (0.9, 4), (0.1, 100)):
        got = _tensor(name, _call(name, effective_alpha, alpha, c), "alpha'", ())
        expected = torch.tensor(c * alpha / (1 - alpha + c * alpha), dtype=torch.float64)
        mistakes = [
            ("alpha' = C·alpha can exceed 1 and ignores that (1 - alpha') changes too: solve "
             "alpha'/(C (1 - alpha')) = alpha/(1 - alpha) for alpha'", c * alpha),
            ("wrong direction: the buggy soft term is C times too *small*, so it needs a *larger* weight, not a "
             "smaller one", alpha / (c * (1 - alpha) + alpha)),
            ("wrong direction: the buggy soft term is C times too small, so its weight must grow", alpha / c),
        ]
        verdict = _diagnose(name, got, expected, mistakes, rtol=1e-6)
        if verdict is not None:
            return _wrong(name, f"alpha = {alpha}, C = {c}: {verdict.message}")
    return _ok(name, "alpha' = C·alpha / (1 - alpha + C·alpha): e.g. alpha = 0.5 with 10 classes needs alpha' ≈ 0.909")


# ---------------------------------------------------------------------------------------------
# 03 · Your first distillation
# ---------------------------------------------------------------------------------------------


@_checked
def check_distillation_loss(
    my_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor],
) -> CheckResult:
    """Exercise 03.3: the mixed loss ``alpha · T² · KL + (1 - alpha) · CE``, against ``distillation_loss``.

    Args:
        my_loss: your function ``(student_logits [B, C], teacher_logits [B, C], labels [B], T, alpha) -> loss``.
    """
    name = "check_distillation_loss"
    _require_callable(my_loss, "my_loss", "(student [B, C], teacher [B, C], labels [B], T, alpha) -> loss")
    g = _gen(5)
    b, c = 6, 4
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (b,), generator=g)
    for temperature, alpha in ((4.0, 0.7), (2.0, 0.3), (3.0, 1.0), (3.0, 0.0)):
        expected = distillation_loss(s, t, y, temperature, alpha)
        kd = kd_loss(s, t, temperature)
        ce = F.cross_entropy(s, y)
        mistakes = [
            ("alpha weights the wrong term: alpha multiplies the soft (teacher) term, 1 - alpha the hard-label "
             "cross-entropy", (1 - alpha) * kd + alpha * ce),
            ("the soft term lacks the T² factor", alpha * kd / temperature**2 + (1 - alpha) * ce),
            ("the hard-label cross-entropy is computed at T = 1: do not divide those logits by T",
             alpha * kd + (1 - alpha) * F.cross_entropy(s / temperature, y)),
            (f"the soft term is 1/C = 1/{c} too small: reduction='mean' instead of 'batchmean'",
             alpha * kd / c + (1 - alpha) * ce),
            ("T is a softmax temperature, not a mixing weight", alpha * kd + (1 - alpha) * ce * temperature),
        ]
        got = _tensor(name, _call(name, my_loss, s.clone(), t.clone(), y.clone(), temperature, alpha), "the loss", ())
        verdict = _diagnose(name, got, expected, mistakes)
        if verdict is not None:
            return _wrong(name, f"T = {temperature:g}, alpha = {alpha:g}: {verdict.message}")
        if alpha == 1.0:
            got0 = _tensor(name, _call(name, my_loss, s.clone(), t.clone(), torch.zeros_like(y), temperature, alpha),
                           "the loss", ())
            if not _close(got0, got):
                return _wrong(name, "with alpha = 1 the labels must have zero weight, but your loss changed when the "
                                    "labels were replaced by zeros")
    return _ok(name, "equals distillation_loss at (T, alpha) = (4, 0.7), (2, 0.3), (3, 1) and (3, 0); at alpha = 1 "
                     "the labels do not matter")


def _as_index_list(value: Any, arg: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        items = list(value)
    except TypeError as exc:
        raise TypeError(f"{arg} must be a sequence of row indices; got {type(value).__name__}") from exc
    return [_require_int(v, f"every entry of {arg}") for v in items]


def check_validation_split(
    labels: Sequence[int] | torch.Tensor, fit_rows: Sequence[int], val_rows: Sequence[int]
) -> CheckResult:
    """Exercise 03.5: a stratified split of the training rows into a fitting part and a validation part.

    Args:
        labels: the training labels ``[N]`` (``y_train``).
        fit_rows: the row indices (into ``labels``) the models are trained on.
        val_rows: the row indices used to choose ``(T, alpha)``.
    """
    name = "check_validation_split"
    y = _as_index_list(labels, "labels")
    fit, val = _as_index_list(fit_rows, "fit_rows"), _as_index_list(val_rows, "val_rows")
    n = len(y)
    if not val:
        return _wrong(name, "val_rows is empty")
    outside = [r for r in fit + val if not 0 <= r < n]
    if outside:
        return _wrong(name, f"row {outside[0]} is not a training row (0..{n - 1}): the validation set must come from "
                            "the training images, never from the test set")
    if len(set(fit)) != len(fit) or len(set(val)) != len(val):
        return _wrong(name, "a row appears twice in the same part")
    both = set(fit) & set(val)
    if both:
        return _wrong(name, f"{len(both)} rows are in both parts: a validation row the models trained on makes the "
                            "selection optimistic")
    missing = n - len(fit) - len(val)
    if missing:
        return _wrong(name, f"{missing} training rows are in neither part: use all of them")
    classes = sorted(set(y))
    share = len(val) / n
    worst = max(abs(sum(y[r] == k for r in val) - share * sum(v == k for v in y)) for k in classes)
    if worst > 1.0 + 1e-9:
        return _wrong(name, f"not stratified: a class has {worst:.1f} validation rows more or fewer than its share; "
                            "pass stratify=labels to train_test_split, so every class keeps its proportion")
    return _ok(name, f"{len(fit)} + {len(val)} rows, disjoint, covering the training set, every class in proportion")


# ---------------------------------------------------------------------------------------------
# 04 · A BERT teacher
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    from kd_lib.models import packaged_teacher_path

    return AutoTokenizer.from_pretrained(packaged_teacher_path(), use_fast=True)


def check_tokenize_prediction(text: str, predicted: Sequence[str]) -> CheckResult:
    """Exercise 04.1: your predicted WordPiece tokens of ``text`` against the course tokenizer's.

    Args:
        text: the text, e.g. ``"unfilmable"``.
        predicted: your predicted pieces, e.g. ``["un", "##film", "##able"]`` (without [CLS]/[SEP]).
    """
    name = "check_tokenize_prediction"
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    if isinstance(predicted, str) or not all(isinstance(p, str) for p in predicted):
        raise TypeError("predicted must be a list of str pieces, e.g. ['un', '##film', '##able']")
    predicted = list(predicted)
    actual = _tokenizer().tokenize(text)
    if predicted == actual:
        return _ok(name, f"{text!r} -> {actual}")
    hints = []
    if [p.lower() for p in predicted] == actual:
        hints.append("the tokenizer is uncased: it lowercases (and strips accents) before splitting")
    if [p.removeprefix("##") for p in predicted] == [a.removeprefix("##") for a in actual]:
        hints.append("the pieces are right but the ## marks are not: ## starts every piece that continues a word")
    if "[UNK]" in predicted and "[UNK]" not in actual:
        hints.append("no [UNK] here: single characters are in the vocabulary, so unknown words fall back to pieces")
    if "[UNK]" in actual and "[UNK]" not in predicted:
        hints.append("a character the vocabulary lacks (like an emoji) makes its whole word [UNK]")
    punctuation = {".", "-", ",", "!", "?", "'"}
    if punctuation & set(actual) and not punctuation & set(predicted):
        hints.append("punctuation is split off as its own token before WordPiece runs")
    hint = "; ".join(hints) or "compare with the greedy longest-match-first rule"
    return _wrong(name, f"{text!r} -> {actual}, you predicted {predicted}: {hint}")


def _bert_params(v: int, p: int, s: int, h: int, layers: int, f: int) -> dict[str, int]:
    return {
        "embeddings": (v + p + s) * h + 2 * h,
        "attention": layers * (4 * (h * h + h) + 2 * h),
        "ffn": layers * ((h * f + f) + (f * h + h) + 2 * h),
        "pooler": h * h + h,
    }


@_checked
def check_bert_param_formula(n_params: Callable[[int, int, int, int, int, int], int]) -> CheckResult:
    """Exercise 04.3: your formula for the parameters of a ``BertModel`` (with pooler, without a head).

    Args:
        n_params: your function ``(V, P, S, H, L, F) -> count`` for vocabulary ``V``, positions ``P``,
            token types ``S``, hidden size ``H``, ``L`` layers and FFN size ``F``.
    """
    name = "check_bert_param_formula"
    _require_callable(n_params, "n_params", "(V, P, S, H, L, F) -> parameter count")
    for cfg in ((100, 16, 3, 8, 2, 24), (30522, 512, 2, 384, 6, 1536)):
        _, _, s, h, layers, f = cfg
        parts = _bert_params(*cfg)
        expected = sum(parts.values())
        got = _tensor(name, _call(name, n_params, *cfg), "the returned count", ()).item()
        if got == expected:
            continue
        diff = expected - got
        known = {
            parts["pooler"]: "the pooler (a dense H x H layer with bias on [CLS]) is missing",
            -parts["pooler"]: "too many by H² + H: is the pooler counted twice?",
            2 * h * (1 + 2 * layers): "the LayerNorms are missing: one after the embeddings and two per layer, "
                                      "each with 2H parameters (scale and shift)",
            s * h: "the token-type embeddings (S x H) are missing",
            layers * (4 * h + f + h) + h: "the biases are missing (every Linear has one)",
            layers * (h * f + f + f * h + h): "the feed-forward block (H -> F -> H, with biases) is missing",
            layers * (h * f + f): "the FFN has two Linears, H -> F and F -> H: count both",
            layers * 2 * h * h: "attention has four H x H matrices (query, key, value, output): count all four",
            layers * h * h: "attention has four H x H matrices (query, key, value, output): count all four",
            2 * h: "a LayerNorm (2H) is missing",
        }
        hint = known.get(diff, f"got {got:,.0f}, expected {expected:,}: off by {diff:,.0f}; count part by part "
                               f"(embeddings {parts['embeddings']:,}, attention {parts['attention']:,}, FFN "
                               f"{parts['ffn']:,}, pooler {parts['pooler']:,})")
        return _wrong(name, f"(V, P, S, H, L, F) = {cfg}: {hint}")
    return _ok(name, "matches the BertModel count for all-MiniLM-L6-v2 (22,713,216) and a tiny config")


def check_bert_base_counts(total: int, embedding_share: float, distilbert_6: int) -> CheckResult:
    """Exercise 04.3: bert-base-uncased's parameter count by formula (``V = 30522, P = 512, S = 2, H = 768,
    L = 12, F = 3072``).

    Args:
        total: all parameters of ``BertModel`` with the pooler, without a classification head.
        embedding_share: the embeddings' share of ``total``, as a fraction in ``[0, 1]``.
        distilbert_6: parameters of a 6-layer DistilBERT made from it, without pre-classifier and head
            (no token types, no pooler).
    """
    name = "check_bert_base_counts"
    total = _require_int(total, "total")
    share = _require_number(embedding_share, "embedding_share")
    d6 = _require_int(distilbert_6, "distilbert_6")
    parts = _bert_params(30522, 512, 2, 768, 12, 3072)
    exp_total = sum(parts.values())
    exp_d6 = (30522 + 512) * 768 + 2 * 768 + (parts["attention"] + parts["ffn"]) // 2
    if total != exp_total:
        hint = "without the pooler" if total == exp_total - parts["pooler"] else "see check_bert_param_formula"
        return _wrong(name, f"total: got {total:,}, expected about 109.5 M ({hint})")
    if share > 1 and abs(share / 100 - parts["embeddings"] / exp_total) < 1e-3:
        return _wrong(name, "give the share as a fraction (0.22), not a percentage")
    if abs(share - parts["embeddings"] / exp_total) > 1e-3:
        return _wrong(name, f"embedding_share: got {share:.4f}; the embeddings are (V + P + S)·H + 2H of the total")
    if d6 != exp_d6:
        known = {
            exp_d6 + 2 * 768: "drop the token-type embeddings: DistilBERT has none (folded into the positions)",
            exp_d6 + parts["pooler"]: "H² + H too many: DistilBERT has no pooler (and leave out the pre-classifier, "
                                      "which belongs to the head)",
            exp_d6 + parts["pooler"] + 2 * 768: "drop the pooler and the token-type embeddings: DistilBERT has neither",
        }
        return _wrong(name, f"distilbert_6: got {d6:,}; " + known.get(d6, "(V + P)·H + 2H, plus 6 of the 12 layers"))
    return _ok(name, f"{exp_total:,} parameters, {parts['embeddings'] / exp_total:.1%} of them embeddings; a 6-layer "
                     f"DistilBERT has {exp_d6:,} ({exp_d6 / exp_total:.1%}): half the layers saves 39 % here because "
                     "the embeddings are a smaller share")


@_checked
def check_pad_share(pad_share: Callable[[Sequence[int], int], float]) -> CheckResult:
    """Exercise 04.2: the share of padding positions under dynamic padding.

    Args:
        pad_share: your function ``(lengths, batch_size) -> share``: the rows, in the given order, are cut
            into consecutive batches of ``batch_size`` (the last may be smaller), each padded to its own
            longest row; the result is pad positions / all positions, in ``[0, 1)``.
    """
    name = "check_pad_share"
    _require_callable(pad_share, "pad_share", "(lengths, batch_size) -> share")
    g = _gen(6)
    lengths = (torch.randint(3, 40, (23,), generator=g)).tolist()
    for order, batch_size in ((lengths, 4), (sorted(lengths), 4), (lengths, 5)):
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        real = sum(order)
        slots = sum(len(b) * max(b) for b in batches)
        expected = torch.tensor((slots - real) / slots, dtype=torch.float64)
        full = batches[:-1] if len(batches[-1]) < batch_size else batches
        full_slots, full_real = sum(len(b) * max(b) for b in full), sum(sum(b) for b in full)
        mistakes = [
            ("you padded every row to the longest of the whole set: dynamic padding pads each batch to its own "
             "longest row", 1 - real / (len(order) * max(order))),
            ("divide the pad positions by all positions (real + pad), not by the real tokens", (slots - real) / real),
            ("the last, smaller batch is missing", (full_slots - full_real) / full_slots),
            ("that is the share of real tokens; the pad share is 1 minus it", real / slots),
        ]
        got = _tensor(name, _call(name, pad_share, list(order), batch_size), "the share", ())
        verdict = _diagnose(name, got, expected, mistakes, rtol=1e-6)
        if verdict is not None:
            return verdict
    return _ok(name, "right for shuffled and sorted rows and a partial last batch")


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return F.cross_entropy(logits / temperature, labels).item()


@lru_cache(maxsize=1)
def _mixed_calibration_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[400, 4]`` over-confident on half the rows and under-confident on the other half."""
    g = _gen(13)
    logits = torch.randn(400, 4, generator=g, dtype=torch.float64) * 3
    temperature = torch.where(torch.arange(400) % 2 == 0, 2.5, 0.4).double()[:, None]
    labels = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g).squeeze(1)
    return logits, labels


@lru_cache(maxsize=1)
def _calibration_data() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Over-confident synthetic logits ``[400, 4]``, labels drawn at ``T = 2``, and the NLL-optimal T."""
    g = _gen(7)
    logits = torch.randn(400, 4, generator=g, dtype=torch.float64) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g).squeeze(1)
    lo, hi = 0.05, 20.0  # golden-section search on a unimodal NLL
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(logits, labels, a) < _nll(logits, labels, b):
            hi = b
        else:
            lo = a
    return logits, labels, (lo + hi) / 2


@_checked
def check_temperature_scaling(fit_temperature: Callable[[torch.Tensor, torch.Tensor], float]) -> CheckResult:
    """Exercises 04.5 and 07.1: temperature scaling -- the ``T`` minimising the NLL of ``softmax(logits / T)``.

    Args:
        fit_temperature: your function ``(logits [N, C], labels [N]) -> T``. A grid search is fine if it is
            fine enough: the answer counts as right when its NLL is within 1e-3 nats of the optimum.
    """
    name = "check_temperature_scaling"
    _require_callable(fit_temperature, "fit_temperature", "(logits [N, C], labels [N]) -> T")
    logits, labels, best = _calibration_data()
    t = _tensor(name, _call(name, fit_temperature, logits.clone(), labels.clone()), "the returned T", ()).item()
    if not (math.isfinite(t) and t > 0):
        return _wrong(name, f"T = {t} is not a temperature (finite, > 0)")
    gap = _nll(logits, labels, t) - _nll(logits, labels, best)
    if gap <= 1e-3:
        return _ok(name, f"T = {t:.3f} (optimum {best:.3f}); the NLL is {_nll(logits, labels, best):.4f} nats there")
    if abs(1 / t - best) < 0.05 * best:
        return _wrong(name, f"T = {t:.3f} is 1/T of the optimum: divide the logits by T, do not multiply")
    return _wrong(name, f"T = {t:.3f}: its NLL is {gap:.4f} nats above the optimum. Minimise the negative "
                        "log-likelihood (cross-entropy) of softmax(logits / T) -- not the accuracy, which dividing by "
                        "T never changes -- on a fine grid (steps of 0.05 or less) wide enough that T is not at an "
                        "end of it")


# ---------------------------------------------------------------------------------------------
# 05 · From BERT to DistilBERT
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _pair_difference_layer() -> int:
    """First index of ``hidden_states`` at which a full-depth student differs from its teacher on a pair."""
    from transformers import BertConfig, BertModel

    from kd_lib.students import distilbert_from_bert

    with _own_rng():  # leave the learner's random state alone
        torch.manual_seed(0)
        teacher = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32)).eval()
        student = distilbert_from_bert(teacher, layers=[0, 1], num_labels=2).eval()
    ids = torch.tensor([[2, 11, 12, 3, 21, 22, 23, 3]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        h_t = teacher(input_ids=ids, token_type_ids=types, output_hidden_states=True).hidden_states
        h_s = student.distilbert(input_ids=ids, output_hidden_states=True).hidden_states
    return next(i for i, (a, b) in enumerate(zip(h_t, h_s, strict=True)) if (a - b).abs().max() > 1e-5)


def check_pair_difference_layer(index: int) -> CheckResult:
    """Exercise 05.4: at which index of ``hidden_states`` a full-depth student first differs from the teacher
    on a sentence pair (``token_type_ids = 1`` on the second sentence).

    Args:
        index: your answer, an index into ``outputs.hidden_states`` (0 = the embedding output).
    """
    name = "check_pair_difference_layer"
    index = _require_int(index, "index")
    expected = _pair_difference_layer()
    if index == expected:
        return _ok(name, "hidden_states[0]: the embedding output already differs on the second sentence, whose "
                         "tokens get S[1] in the teacher but the folded S[0] in the student")
    if index == expected + 1:
        return _wrong(name, "one too late: hidden_states[0] is the embedding output, not layer 1 -- and the "
                            "difference is already there")
    return _wrong(name, f"index {index}: where do the teacher and the student first treat token type 1 differently?")


@_checked
def check_fold_token_types(fold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """Exercise 05.4: the fold of BERT's token-type embeddings into DistilBERT's position embeddings.

    Args:
        fold: your function ``(position_embeddings [P, H], token_type_embeddings [S, H]) -> [P, H]``,
            the student's position table that reproduces the teacher for single-segment input.
    """
    name = "check_fold_token_types"
    _require_callable(fold, "fold", "(position_embeddings [P, H], token_type_embeddings [S, H]) -> [P, H]")
    g = _gen(8)
    pos, types = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g)
    from kd_lib.students import bert_to_distilbert_state_dict

    state = {"embeddings.word_embeddings.weight": torch.zeros(3, 4), "embeddings.position_embeddings.weight": pos,
             "embeddings.token_type_embeddings.weight": types, "embeddings.LayerNorm.weight": torch.ones(4),
             "embeddings.LayerNorm.bias": torch.zeros(4)}
    expected = bert_to_distilbert_state_dict(state, [])["distilbert.embeddings.position_embeddings.weight"]
    got = _tensor(name, _call(name, fold, pos.clone(), types.clone()), "the folded table", (6, 4))
    mistakes = [
        ("you added token type 1; single-segment input uses token type 0 everywhere", pos + types[1]),
        ("you added the mean of the token types; single-segment input uses token type 0 only", pos + types.mean(0)),
        ("nothing was folded: the teacher adds token_type_embeddings[0] to every token, the student must too", pos),
    ]
    verdict = _diagnose(name, got, expected.double(), mistakes, rtol=1e-6, atol=1e-6)
    if verdict is not None:
        return verdict
    return _ok(name, "position' = position + token_type[0], as kd_lib.students maps it")


# ---------------------------------------------------------------------------------------------
# 06 · Intermediate-layer distillation
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _projection_reference() -> tuple[int, int]:
    """Projections and their parameters that FeatureDistillLoss creates in notebook 06's setting."""
    from transformers import BertConfig, BertForSequenceClassification

    from kd_lib.distill import FeatureDistillLoss
    from kd_lib.students import narrow_distilbert

    with _own_rng():  # leave the learner's random state alone
        teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=384, num_hidden_layers=6,
                                                           num_attention_heads=12, intermediate_size=8,
                                                           max_position_embeddings=16))
        student = narrow_distilbert(teacher, n_layers=3, dim=256, n_heads=4, seed=0)
        loss = FeatureDistillLoss(teacher, student, weights={"logits": 1.0, "hidden": 1.0}, include_embeddings=True)
    return len(loss.projections), sum(p.numel() for p in loss.projections.parameters())


def check_projection_count(n_projections: int, n_params: int) -> CheckResult:
    """Exercise 06.1: projections created by ``FeatureDistillLoss`` for notebook 06's narrow student
    (3 layers x 256 wide, teacher 6 layers x 384, uniform map, ``include_embeddings=True``, hidden term on).

    Args:
        n_projections: your predicted ``len(loss_fn.projections)``.
        n_params: your predicted number of parameters in them.
    """
    name = "check_projection_count"
    n_projections, n_params = _require_int(n_projections, "n_projections"), _require_int(n_params, "n_params")
    exp_n, exp_params = _projection_reference()
    per = exp_params // exp_n
    if n_projections != exp_n:
        hints = {exp_n - 1: "the embedding output is matched too (include_embeddings=True): one more projection",
                 6: "one projection per *student* layer matched (plus the embeddings), not per teacher layer",
                 7: "one projection per *student* layer matched (plus the embeddings), not per teacher layer"}
        return _wrong(name, f"n_projections = {n_projections}: " + hints.get(n_projections, "count the matched pairs"))
    if n_params != exp_params:
        hints = {exp_n * 256 * 384: "each nn.Linear(256, 384) also has a bias of 384",
                 exp_n * (384 * 384 + 384): "a projection maps the student's width 256 to the teacher's 384",
                 per: "that is one projection; multiply by their number"}
        return _wrong(name, f"n_params = {n_params:,}: " + hints.get(n_params, "each is nn.Linear(256, 384)"))
    return _ok(name, f"{exp_n} projections (embeddings + 3 layers), each nn.Linear(256, 384): "
                     f"{exp_params:,} parameters")


@_checked
def check_cosine_hidden_loss(
    my_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> CheckResult:
    """Exercise 06.2: the masked cosine hidden-state loss, against ``hidden_state_loss(..., kind="cosine")``.

    Args:
        my_loss: your function ``(student_hidden [B, L, D], teacher_hidden [B, L, D], mask [B, L]) -> loss``:
            the mean of ``1 - cos(h_s, h_t)`` over the real tokens.
    """
    name = "check_cosine_hidden_loss"
    _require_callable(my_loss, "my_loss", "(student_hidden [B, L, D], teacher_hidden [B, L, D], mask [B, L]) -> loss")
    g = _gen(9)
    hs = torch.randn(2, 5, 8, generator=g, dtype=torch.float64) * 3 + 1
    ht = torch.randn(2, 5, 8, generator=g, dtype=torch.float64) * 0.5 + 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    keep = mask.bool()
    cos = F.cosine_similarity(hs, ht, dim=-1)
    expected = hidden_state_loss(hs, ht, mask, kind="cosine")
    mistakes = [
        ("padding is not masked: average over the positions where mask is 1 only", (1 - cos).mean()),
        ("you divided by all B·L positions after zeroing the padding: divide by the number of real tokens",
         ((1 - cos) * keep).sum() / keep.numel()),
        ("unnormalised: that is 1 - h_s·h_t; the cosine divides the dot product by both vectors' lengths",
         (1 - (hs * ht).sum(-1))[keep].mean()),
        ("that is the mean cosine similarity; the loss is 1 - cos (0 when the directions agree)", cos[keep].mean()),
        ("the cosine is taken over the feature dimension D (dim=-1), not over the positions",
         (1 - F.cosine_similarity(hs * keep[..., None], ht * keep[..., None], dim=1)).mean()),
    ]
    got = _tensor(name, _call(name, my_loss, hs.clone(), ht.clone(), mask.clone()), "the loss", ())
    verdict = _diagnose(name, got, expected, mistakes)
    if verdict is not None:
        return verdict
    scaled = _tensor(name, _call(name, my_loss, hs * 7.0, ht.clone(), mask.clone()), "the loss", ())
    if not _close(scaled, expected):
        return _wrong(name, "your loss changes when the student's states are scaled by 7: the cosine must not "
                            "depend on the vectors' lengths")
    return _ok(name, "equals hidden_state_loss(kind='cosine') and ignores the scale of the states")


@_checked
def check_layer_map(my_layer_map: Callable[[int, int, str], Sequence[int]]) -> CheckResult:
    """Exercise 06.3: which teacher ``hidden_states`` index each student layer learns from.

    Args:
        my_layer_map: your function ``(n_student, n_teacher, strategy) -> [teacher index per student layer]``
            for ``strategy`` ``"uniform"`` or ``"last"``; indices into ``outputs.hidden_states``, where
            index 0 is the embedding output and index ``j`` the output of layer ``j``.
    """
    name = "check_layer_map"
    _require_callable(my_layer_map, "my_layer_map", "(n_student, n_teacher, strategy) -> list of teacher indices")
    for s, t in ((3, 6), (4, 12), (2, 5), (3, 3)):
        for strategy in ("uniform", "last"):
            got_raw = _call(name, my_layer_map, s, t, strategy)
            try:
                got = [int(j) for j in got_raw]
            except (TypeError, ValueError):
                return _wrong(name, f"return a list of ints (one teacher index per student layer); got {got_raw!r}")
            expected = [j for _, j in layer_map(s, t, strategy)]
            if got == expected:
                continue
            where = f"{s} student / {t} teacher layers, {strategy!r}: got {got}, expected {expected}"
            if got == [j - 1 for j in expected]:
                return _wrong(name, f"{where}. Off by one: hidden_states[0] is the embedding output, so layer j's "
                                    "output is hidden_states[j] (layers count from 1)")
            if strategy == "uniform" and got == [(i - 1) * t // s for i in range(1, s + 1)]:
                return _wrong(name, f"{where}. The uniform map ends at the teacher's last layer: student layer i "
                                    "learns from teacher layer i·T//S")
            return _wrong(name, where)
    return _ok(name, "agrees with kd_lib.losses.layer_map for 'uniform' and 'last' on four teacher/student sizes")


# ---------------------------------------------------------------------------------------------
# 07 · Evaluate and compress
# ---------------------------------------------------------------------------------------------


@_checked
def check_ece(my_ece: Callable[[torch.Tensor, torch.Tensor, int], float]) -> CheckResult:
    """Exercise 07.1: the expected calibration error, against ``kd_lib.evaluate.expected_calibration_error``.

    Args:
        my_ece: your function ``(logits [N, C], labels [N], n_bins) -> ECE``: equal-width confidence bins over
            ``[0, 1]``, ``sum_b (n_b / N) |accuracy_b - confidence_b|``.
    """
    name = "check_ece"
    _require_callable(my_ece, "my_ece", "(logits [N, C], labels [N], n_bins) -> ECE")
    logits, labels = _mixed_calibration_data()
    n_bins = 10
    expected = torch.tensor(expected_calibration_error(logits, labels, n_bins), dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    conf, pred = probs.max(-1)
    correct = pred.eq(labels).double()
    which = torch.bucketize(conf, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    gaps, counts = [], []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            gaps.append((correct[sel].mean() - conf[sel].mean()).abs().item())
            counts.append(sel.sum().item())
    mistakes = [
        ("every bin counts equally in your average: weight each bin's gap by its share of the predictions, n_b / N",
         sum(gaps) / len(gaps)),
        ("that is |overall accuracy - mean confidence| (one bin); ECE bins the predictions by confidence first",
         (correct.mean() - conf.mean()).abs()),
        ("the confidence is the top probability (of the predicted class), not the probability of the true label",
         None),
    ]
    true_p = probs.gather(1, labels[:, None]).squeeze(1)
    which_t = torch.bucketize(true_p, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    ece_true = sum((which_t == b).sum().item() / len(labels)
                   * (correct[which_t == b].mean() - true_p[which_t == b].mean()).abs().item()
                   for b in range(n_bins) if (which_t == b).any())
    mistakes[2] = (mistakes[2][0], ece_true)
    got = _tensor(name, _call(name, my_ece, logits.clone(), labels.clone(), n_bins), "the ECE", ())
    mistakes = [(h, torch.as_tensor(v, dtype=torch.float64)) for h, v in mistakes]
    verdict = _diagnose(name, got, expected, mistakes, rtol=1e-6)
    if verdict is not None:
        return verdict
    return _ok(name, f"ECE = {expected.item():.4f} with 10 bins, as expected_calibration_error computes")


@_checked
def check_csr_bytes(csr_bytes: Callable[[torch.Tensor], int]) -> CheckResult:
    """Exercise 07.4: bytes of a weight matrix stored as CSR (``w.to_sparse_csr()``).

    Args:
        csr_bytes: your function ``(w [R, C] dense, with zeros) -> bytes`` counting the values, the column
            indices and the row pointers, each at the element size torch uses.
    """
    name = "check_csr_bytes"
    _require_callable(csr_bytes, "csr_bytes", "(dense weight [R, C]) -> bytes")
    g = _gen(10)
    w = torch.randn(12, 20, generator=g)
    w[torch.rand(12, 20, generator=g) < 0.7] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = w.to_sparse_csr()
    parts = {k: t.numel() * t.element_size() for k, t in
             (("values", csr.values()), ("cols", csr.col_indices()), ("rows", csr.crow_indices()))}
    expected = sum(parts.values())
    got = _tensor(name, _call(name, csr_bytes, w.clone()), "the returned byte count", ()).item()
    if got == expected:
        return _ok(name, f"{expected} bytes: values {parts['values']}, column indices {parts['cols']}, row pointers "
                         f"{parts['rows']} (int64 indices: 8 bytes each)")
    nnz, rows = csr.values().numel(), w.shape[0]
    known = {
        parts["values"]: "only the values: the column index of each value and the row pointers are stored too",
        parts["values"] + parts["cols"]: "the row pointers (crow_indices, R + 1 of them) are missing",
        4 * nnz + 4 * nnz + 4 * (rows + 1): "torch's CSR indices are int64 (8 bytes), not int32",
        w.numel() * 4: "that is the dense float32 matrix",
        4 * nnz + 8 * nnz + 8 * rows: "there are R + 1 row pointers, not R",
    }
    return _wrong(name, f"got {got:.0f}, expected {expected}: " + known.get(got, "count values (4 B), column indices "
                                                                                 "and row pointers (8 B each)"))


def check_csr_break_even(sparsity: float) -> CheckResult:
    """Exercise 07.4: the sparsity above which CSR (float32 values, int64 indices) takes fewer bytes than
    the dense float32 matrix, for a large matrix.

    Args:
        sparsity: your answer, a fraction of zeros in ``[0, 1]``.
    """
    name = "check_csr_break_even"
    x = _require_number(sparsity, "sparsity")
    expected = 2 / 3  # 12 bytes per non-zero vs 4 per entry: density below 1/3
    if 1 < x <= 100 and abs(x / 100 - expected) < 0.01:
        return _wrong(name, "give the sparsity as a fraction (0.67), not a percentage")
    if abs(x - expected) <= 0.01:
        return _ok(name, "about 2/3: each non-zero costs 4 B of value + 8 B of column index = 12 B against 4 B per "
                         "dense entry, so CSR wins below 1/3 density (the row pointers are negligible)")
    if abs(x - 0.5) <= 0.01:
        return _wrong(name, "that holds for int32 indices; torch's CSR uses int64 (8 bytes) for the column indices")
    if abs(x - 1 / 3) <= 0.01:
        return _wrong(name, "1/3 is the break-even *density* (non-zeros); the sparsity is the share of zeros")
    if x <= 0.01:
        return _wrong(name, "the indices cost bytes too: each non-zero stores its value and its column index")
    return _wrong(name, f"{x:g}: compare 4 bytes per dense entry with the bytes CSR stores per non-zero")


# ---------------------------------------------------------------------------------------------
# 08 · Semantic search
# ---------------------------------------------------------------------------------------------


@_checked
def check_qr_index(compress: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """Exercise 08.4: store ``R [s; 1]`` instead of ``W s + b`` -- same cosines, ``D_s + 1`` numbers.

    Args:
        compress: your function ``(W [D_t, D_s], b [D_t], s [N, D_s]) -> [N, D_s + 1]`` whose rows have the
            same pairwise cosines as the rows of ``s @ W.T + b``.
    """
    name = "check_qr_index"
    _require_callable(compress, "compress", "(W [D_t, D_s], b [D_t], s [N, D_s]) -> [N, D_s + 1]")
    g = _gen(11)
    d_t, d_s, n = 12, 5, 7
    w = torch.randn(d_t, d_s, generator=g, dtype=torch.float64)
    b = torch.randn(d_t, generator=g, dtype=torch.float64) * 2
    s = torch.randn(n, d_s, generator=g, dtype=torch.float64)
    full = s @ w.T + b
    expected = F.normalize(full, dim=-1) @ F.normalize(full, dim=-1).T
    got = _tensor(name, _call(name, compress, w.clone(), b.clone(), s.clone()), "the compressed index")
    if got.dim() != 2 or got.shape[0] != n:
        return _wrong(name, f"expected one row per document, shape [{n}, {d_s + 1}]; got {tuple(got.shape)}")
    cos = F.normalize(got, dim=-1) @ F.normalize(got, dim=-1).T
    if not _close(cos, expected, 1e-6, 1e-8):
        no_bias = F.normalize(s @ w.T, dim=-1) @ F.normalize(s @ w.T, dim=-1).T
        if _close(cos, no_bias, 1e-6, 1e-8):
            return _wrong(name, "the cosines are those of W s, without the bias: factor [W b] (append b as a column) "
                                "and append 1 to every s")
        err = (cos - expected).abs().max().item()
        return _wrong(name, f"the cosines differ from those of W s + b by up to {err:.3g}: the rows must be R [s; 1] "
                            "with [W b] = QR (thin QR, torch.linalg.qr(..., mode='reduced'))")
    if got.shape[1] != d_s + 1:
        return _wrong(name, f"the cosines are right, but each row holds {got.shape[1]} numbers: the thin QR gives "
                            f"{d_s + 1} (R is (D_s + 1) x (D_s + 1))")
    return _ok(name, f"the same cosines as W s + b with {d_s + 1} numbers per document instead of {d_t}")


# ---------------------------------------------------------------------------------------------
# 09 · Distilling a language model
# ---------------------------------------------------------------------------------------------


@_checked
def check_next_token_labels(make_labels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """Exercise 09.2: next-token targets of a right-padded batch, pre-shifted as ``kd_lib.lm.LMBlocks`` stores them.

    Args:
        make_labels: your function ``(input_ids [B, L], attention_mask [B, L]) -> labels [B, L]`` with
            ``labels[:, t] = input_ids[:, t + 1]`` where position ``t + 1`` is a real token, and ``-100``
            elsewhere (the last real token of each row and all padding).
    """
    name = "check_next_token_labels"
    _require_callable(make_labels, "make_labels", "(input_ids [B, L], attention_mask [B, L]) -> labels [B, L]")
    ids = torch.tensor([[5, 8, 13, 21, 34, 55], [7, 9, 11, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    real_next = torch.zeros_like(mask)
    real_next[:, :-1] = mask[:, 1:]
    expected = torch.full_like(ids, IGNORE_INDEX)
    expected[:, :-1] = ids[:, 1:]
    expected[real_next == 0] = IGNORE_INDEX
    got = _tensor(name, _call(name, make_labels, ids.clone(), mask.clone()), "labels", tuple(ids.shape)).long()
    if torch.equal(got, expected):
        return _ok(name, "position t predicts token t + 1; the last real token and the padding get -100")
    back = torch.full_like(ids, IGNORE_INDEX)
    back[:, 1:] = ids[:, :-1]
    if torch.equal(got, ids) or torch.equal(got, ids.masked_fill(mask == 0, IGNORE_INDEX)):
        return _wrong(name, "no shift: position t must predict the *next* token, labels[:, t] = input_ids[:, t + 1] "
                            "(Hugging Face models shift inside; here the labels are stored pre-shifted)")
    if torch.equal(got[real_next == 1], back[real_next == 1]):
        return _wrong(name, "shifted the wrong way: labels[:, t] is input_ids[:, t + 1], the token *after* t")
    if torch.equal(got[real_next == 1], expected[real_next == 1]):
        return _wrong(name, "the shift is right, but positions whose next token is padding (or that have none) must "
                            "be -100, or the loss learns to predict the pad token")
    return _wrong(name, f"expected\n{expected.tolist()}\ngot\n{got.tolist()}")


# ---------------------------------------------------------------------------------------------
# 10 · Many teachers
# ---------------------------------------------------------------------------------------------

_TEACHERS_10 = torch.tensor([[[8.0, 0.0]], [[0.0, 2.0]], [[0.0, 2.0]]], dtype=torch.float64)  # [K=3, N=1, C=2]


def _mixture_flip() -> float:
    def p0(t: float) -> float:
        return ensemble_probs(_TEACHERS_10, t, mode="probs")[0, 0].item()

    lo, hi = 1.0, 4.0  # class 1 at T = 1, class 0 at T = 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p0(mid) < 0.5 else (lo, mid)
    return (lo + hi) / 2


def check_mixture_flip_temperature(temperature: float) -> CheckResult:
    """Exercise 10.1: the temperature at which the mixture of notebook 10's three teachers
    (logits ``[8, 0]``, ``[0, 2]``, ``[0, 2]``) switches from class 1 to class 0.

    Args:
        temperature: your answer (to 2 decimals).
    """
    name = "check_mixture_flip_temperature"
    t = _require_number(temperature, "temperature")
    expected = _mixture_flip()
    if abs(t - expected) <= 0.01:
        return _ok(name, f"T ≈ {expected:.3f}: above it the mixture picks class 0; the product (mean logits "
                         "[8/3, 4/3]) picks class 0 at every T")
    if not (math.isfinite(t) and t > 0):
        return _wrong(name, f"{t} is not a temperature (finite, > 0)")
    p0 = ensemble_probs(_TEACHERS_10, t, mode="probs")[0, 0].item()
    side = ("still class 1 there: the flip is at a higher T" if p0 < 0.5
            else "already class 0 there: the flip is at a lower T")
    return _wrong(name, f"at T = {t:g} the mixture gives p(class 0) = {p0:.4f}, {side}. Average the *probabilities* "
                        "softmax(z_k / T) (mode='probs'), and bisect on p(class 0) - 0.5")


# ---------------------------------------------------------------------------------------------
# 11 · Scaling up
# ---------------------------------------------------------------------------------------------

_BERT_BASE_PARAMS = sum(_bert_params(30522, 512, 2, 768, 12, 3072).values()) + 768 * 3 + 3  # notebook 11's model


def _largest_batch(params: int, layers: int, hidden: int, heads: int, limit_gb: float = 24.0,
                   precision: str = "bf16") -> int:
    batch = 0
    while training_memory_gb(params, layers=layers, hidden=hidden, heads=heads, batch=batch + 1, seq_len=512,
                             precision=precision)["total"] <= limit_gb:
        batch += 1
    return batch


def check_largest_batch(bert_base: int, bert_large: int) -> CheckResult:
    """Exercise 11.4: the largest batch of 512-token sequences that ``training_memory_gb`` says fits in
    24 GB when fine-tuning (bf16 autocast, the default).

    Args:
        bert_base: your answer for bert-base (12 layers, width 768, 12 heads, the notebook's parameter count).
        bert_large: your answer for bert-large (24 layers, width 1024, 16 heads, 335 M parameters).
    """
    name = "check_largest_batch"
    answers = {"bert_base": _require_int(bert_base, "bert_base"), "bert_large": _require_int(bert_large, "bert_large")}
    specs = {"bert_base": (_BERT_BASE_PARAMS, 12, 768, 12), "bert_large": (335_000_000, 24, 1024, 16)}
    for key, spec in specs.items():
        expected, got = _largest_batch(*spec), answers[key]
        if got == expected:
            continue
        if got == expected + 1:
            hint = "one too many: that is the first batch that does *not* fit (total > 24 GB)"
        elif got == _largest_batch(*spec, limit_gb=24 * 2**30 / 1e9):
            hint = "training_memory_gb counts GB = 1e9 bytes; you compared with 24 GiB"
        elif got == _largest_batch(*spec, precision="fp32"):
            hint = "that is for float32 activations; the default (bf16 autocast) keeps 16-bit activations"
        else:
            hint = "increase the batch until training_memory_gb(...)['total'] exceeds 24"
        return _wrong(name, f"{key}: got {got}, expected {expected}; {hint}")
    return _ok(name, f"bert-base: {answers['bert_base']} sequences, bert-large: {answers['bert_large']} -- activations "
                     "dominate, and they grow with layers x width x length²")


@_checked
def check_grad_accumulation(
    accumulate: Callable[[nn.Module, Callable, torch.Tensor, torch.Tensor, int], None],
) -> CheckResult:
    """Exercise 11.2: gradient accumulation over ``k`` micro-batches gives the full batch's gradient.

    Args:
        accumulate: your function ``(model, loss_fn, inputs [B, ...], targets [B], k) -> None`` that splits
            the batch into ``k`` equal micro-batches and leaves in the parameters' ``.grad`` the gradient of
            ``loss_fn`` (a mean over the examples) on the whole batch. It must not step an optimizer.
    """
    name = "check_grad_accumulation"
    _require_callable(accumulate, "accumulate", "(model, loss_fn, inputs, targets, k) -> None")
    g = _gen(12)
    x = torch.randn(8, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    with _own_rng():  # leave the learner's random state alone
        torch.manual_seed(0)
        reference, model, last = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    F.cross_entropy(reference(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()]).double()
    model.load_state_dict(reference.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    _call(name, accumulate, model, F.cross_entropy, x.clone(), y.clone(), 4)
    if any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)):
        return _wrong(name, "the weights changed: accumulate the gradients only, do not step an optimizer")
    if any(p.grad is None for p in model.parameters()):
        return _wrong(name, "no gradients: call loss.backward() on every micro-batch")
    got = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    last.load_state_dict(reference.state_dict())
    F.cross_entropy(last(x[6:]), y[6:]).backward()
    last_grad = torch.cat([p.grad.flatten() for p in last.parameters()]).double()
    mistakes = [
        ("k = 4 times the full-batch gradient: divide each micro-batch's loss by k before backward()", expected * 4),
        ("only the last micro-batch's gradient survives: do not zero the gradients between micro-batches",
         last_grad),
        ("only the last micro-batch's gradient survives, divided by k: zero the gradients once, before the loop",
         last_grad / 4),
        ("1/k of the full-batch gradient: divide each micro-batch's loss by k once, not twice", expected / 4),
    ]
    verdict = _diagnose(name, got, expected, mistakes, rtol=1e-5, atol=1e-7)
    if verdict is not None:
        return verdict
    return _ok(name, "4 micro-batches of 2 give the gradient of the batch of 8; the weights are untouched")
