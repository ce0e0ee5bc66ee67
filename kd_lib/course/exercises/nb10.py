"""Checks for the exercises of notebook 10 · Many teachers, many tasks.

:func:`check_mixture_flip_temperature`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import math

import torch

from kd_lib.course.exercises.verdict import Verdict, ok, require_number, wrong
from kd_lib.ensemble import ensemble_probs

__all__ = ["check_mixture_flip_temperature"]


_TEACHERS_10 = torch.tensor([[[8.0, 0.0]], [[0.0, 2.0]], [[0.0, 2.0]]], dtype=torch.float64)  # [K=3, N=1, C=2]


def _mixture_flip() -> float:
    def p0(t: float) -> float:
        return ensemble_probs(_TEACHERS_10, t, mode="probs")[0, 0].item()

    lo, hi = 1.0, 4.0  # class 1 at T = 1, class 0 at T = 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p0(mid) < 0.5 else (lo, mid)
    return (lo + hi) / 2


def check_mixture_flip_temperature(temperature: float) -> Verdict:
    """Exercise 10.1: the temperature at which the mixture of notebook 10's three teachers
    (logits ``[8, 0]``, ``[0, 2]``, ``[0, 2]``) switches from class 1 to class 0.

    Args:
        temperature: your answer (to 2 decimals).
    """
    name = "check_mixture_flip_temperature"
    t = require_number(temperature, "temperature")
    expected = _mixture_flip()
    if abs(t - expected) <= 0.01:
        return ok(name, f"T ≈ {expected:.3f}: above it the mixture picks class 0; the product (mean logits "
                        "[8/3, 4/3]) picks class 0 at every T")
    if not (math.isfinite(t) and t > 0):
        return wrong(name, f"{t} is not a temperature (finite, > 0)")
    p0 = ensemble_probs(_TEACHERS_10, t, mode="probs")[0, 0].item()
    side = ("still class 1 there: the flip is at a higher T" if p0 < 0.5
            else "already class 0 there: the flip is at a lower T")
    return wrong(name, f"at T = {t:g} the mixture gives p(class 0) = {p0:.4f}, {side}. Average the *probabilities* "
                       "softmax(z_k / T) (mode='probs'), and bisect on p(class 0) - 0.5")
