"""Checks for the exercises of notebook 01 · Softmax and temperature.

:func:`check_temperature_for_target`, :func:`check_softmax_overflow`,
:func:`check_entropy_derivative`, :func:`check_high_temperature_gradient`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    ok,
    require_callable,
    require_number,
    to_tensor,
    wrong,
)
from kd_lib.losses import kd_loss, softmax_t

__all__ = [
    "check_entropy_derivative",
    "check_high_temperature_gradient",
    "check_softmax_overflow",
    "check_temperature_for_target",
]


_LOGITS_01 = torch.tensor([13.2, 9.8, 8.1, 7.5, 2.4, 1.9, 1.2], dtype=torch.float64)  # like the notebook's teacher


@checked
def check_temperature_for_target(temperature_for: Callable[[torch.Tensor, float], float]) -> Verdict:
    """Exercise 01.2: ``temperature_for(logits, target) -> T`` with ``softmax_t(logits, T).max() == target``.

    Args:
        temperature_for: your function; ``logits`` is a float64 tensor ``[C]``, ``target`` a
            probability in ``(1/C, 1)``; it returns the temperature (a float), found by bisection.
    """
    name = "check_temperature_for_target"
    require_callable(temperature_for, "temperature_for", "(logits [C], target) -> T")
    for target in (0.5, 0.9, 0.3):
        t = to_tensor(name, call(name, temperature_for, _LOGITS_01.clone(), target), "the returned T", ()).item()
        if not (math.isfinite(t) and t > 0):
            return wrong(name, f"for target {target} you returned T = {t}; a temperature must be finite and > 0")
        p_top = softmax_t(_LOGITS_01, t).max().item()
        if abs(p_top - target) < 1e-3:
            continue
        if abs(softmax_t(_LOGITS_01, 1.0 / t).max().item() - target) < 1e-3:
            return wrong(name, f"for target {target} your T = {t:.4g} works as 1/T: you returned beta = 1/T (or "
                               "multiplied the logits by T instead of dividing)")
        lo_hi = "raise" if p_top > target else "lower"
        return wrong(name, f"for target {target}: p_top(T = {t:.4g}) = {p_top:.4f}. p_top decreases as T grows, so "
                           f"you need to {lo_hi} T; if T sits at an end of your search interval, bisection moved "
                           "the wrong way or the interval is too small")
    return ok(name, "p_top(T) hits 0.5, 0.9 and 0.3 to within 1e-3")


def _naive_nan(x: float, dtype: torch.dtype) -> bool:
    z = torch.tensor([x, 0.0], dtype=dtype)
    e = torch.exp(z)
    return bool(torch.isnan(e / e.sum()).any())


@checked
def check_softmax_overflow(x_float32: float, x_float64: float) -> Verdict:
    """Exercise 01.3: the smallest logit ``x`` for which ``naive_softmax(tensor([x, 0.0]), 1.0)`` is nan.

    An answer counts as right when ``x`` gives nan and ``x - 1`` does not (so the smallest whole
    number and the exact threshold both pass).

    Args:
        x_float32: your answer for float32 tensors.
        x_float64: your answer for float64 tensors.
    """
    name = "check_softmax_overflow"
    answers = {"float32": require_number(x_float32, "x_float32"), "float64": require_number(x_float64, "x_float64")}
    limits = {"float32": math.log(torch.finfo(torch.float32).max), "float64": math.log(torch.finfo(torch.float64).max)}
    if abs(answers["float32"] - limits["float64"]) < 2 and abs(answers["float64"] - limits["float32"]) < 2:
        return wrong(name, "your two answers are swapped: float32 overflows first (its largest number is ~3.4e38)")
    for dtype_name, x in answers.items():
        dtype = getattr(torch, dtype_name)
        if not _naive_nan(x, dtype):
            return wrong(name, f"{dtype_name}: at x = {x:g} exp(x) is still finite (< {torch.finfo(dtype).max:.3g}), "
                               "so the naive softmax works; nan appears only when exp(x) overflows to inf and "
                               "the division computes inf / inf")
        if _naive_nan(x - 1.0, dtype):
            return wrong(name, f"{dtype_name}: x = {x:g} gives nan, but so does x - 1 = {x - 1:g}: look for a "
                               "smaller x (think of log of the largest finite number)")
    return ok(name, f"nan from x ≈ {limits['float32']:.4f} (float32) and x ≈ {limits['float64']:.4f} (float64): "
                    "log of the largest finite number, where exp overflows to inf and inf / inf = nan")


def _entropy(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(z / t, dim=-1)
    return -(log_p.exp() * log_p).sum()


@checked
def check_entropy_derivative(entropy_derivative: Callable[[torch.Tensor, float], Any]) -> Verdict:
    """Exercise 01.4: ``entropy_derivative(z, T) -> dH/dT`` in closed form (``Var_p(z) / T^3``).

    Args:
        entropy_derivative: your function; ``z`` is a float64 tensor of logits ``[C]``, ``T > 0``;
            it returns the derivative of the entropy of ``softmax(z / T)`` with respect to ``T``.
    """
    name = "check_entropy_derivative"
    require_callable(entropy_derivative, "entropy_derivative", "(z [C], T) -> dH/dT")
    for temperature in (2.0, 0.7):
        z = _LOGITS_01.clone()
        t = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
        (expected,) = torch.autograd.grad(_entropy(z, t), t)
        got = to_tensor(name, call(name, entropy_derivative, z.clone(), temperature), "dH/dT", ())
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
        verdict = diagnose(name, got, expected, mistakes, rtol=1e-5)
        if verdict is not None:
            return wrong(name, f"at T = {temperature}: {verdict.message}")
    return ok(name, "matches autograd's dH/dT at T = 2 and T = 0.7")


@checked
def check_high_temperature_gradient(limit_gradient: Callable[[torch.Tensor, torch.Tensor], Any]) -> Verdict:
    """Exercise 01.5: the ``T -> inf`` limit of ``d kd_loss / dz`` for one example.

    Args:
        limit_gradient: your function ``(z [C], v [C]) -> [C]`` giving the limit of the gradient of
            ``kd_loss(z[None], v[None], T)`` (student logits ``z``, teacher logits ``v``) with respect to
            ``z`` as ``T -> inf`` -- ``((z - mean z) - (v - mean v)) / C``.
    """
    name = "check_high_temperature_gradient"
    require_callable(limit_gradient, "limit_gradient", "(z [C], v [C]) -> gradient [C]")
    g = generator(1)
    z, v = torch.randn(10, generator=g, dtype=torch.float64) + 1.0, torch.randn(10, generator=g, dtype=torch.float64)
    c = z.numel()
    expected = ((z - z.mean()) - (v - v.mean())) / c
    got = to_tensor(name, call(name, limit_gradient, z.clone(), v.clone()), "the gradient", (c,))
    mistakes = [
        ("off by a factor of C: the softmax's first-order expansion is (1 + (z_i - mean z)/T) / C", expected * c),
        ("the logits must be mean-centred: only differences between logits matter, so subtract each vector's mean",
         (z - v) / c),
        ("wrong sign: the gradient pushes z towards v, so it is (z - v) minus their means, not (v - z)", -expected),
        ("off by a factor of T at T = 100: the limit is reached after the T² of kd_loss cancels the 1/T of the "
         "softmax differences -- no T remains", expected * 100),
    ]
    verdict = diagnose(name, got, expected, mistakes, rtol=1e-6, atol=1e-9)
    if verdict is not None:
        return verdict
    zz = z.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(kd_loss(zz[None], v[None], 1e4), zz)
    err = (autograd - got).abs().max().item()
    return ok(name, f"equals ((z - z̄) - (v - v̄)) / C; autograd at T = 1e4 differs by {err:.1e}")
