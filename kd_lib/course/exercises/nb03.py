"""Checks for the exercises of notebook 03 · Your first distillation.

:func:`check_distillation_loss`, :func:`check_validation_split`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    close,
    diagnose,
    generator,
    ok,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)
from kd_lib.losses import distillation_loss, kd_loss

__all__ = ["check_distillation_loss", "check_validation_split"]


@checked
def check_distillation_loss(
    my_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor],
) -> Verdict:
    """Exercise 03.3: the mixed loss ``alpha · T² · KL + (1 - alpha) · CE``, against ``distillation_loss``.

    Args:
        my_loss: your function ``(student_logits [B, C], teacher_logits [B, C], labels [B], T, alpha) -> loss``.
    """
    name = "check_distillation_loss"
    require_callable(my_loss, "my_loss", "(student [B, C], teacher [B, C], labels [B], T, alpha) -> loss")
    g = generator(5)
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
        got = to_tensor(name, call(name, my_loss, s.clone(), t.clone(), y.clone(), temperature, alpha), "the loss", ())
        verdict = diagnose(name, got, expected, mistakes)
        if verdict is not None:
            return wrong(name, f"T = {temperature:g}, alpha = {alpha:g}: {verdict.message}")
        if alpha == 1.0:
            got0 = to_tensor(name, call(name, my_loss, s.clone(), t.clone(), torch.zeros_like(y), temperature, alpha),
                             "the loss", ())
            if not close(got0, got):
                return wrong(name, "with alpha = 1 the labels must have zero weight, but your loss changed when the "
                                   "labels were replaced by zeros")
    return ok(name, "equals distillation_loss at (T, alpha) = (4, 0.7), (2, 0.3), (3, 1) and (3, 0); at alpha = 1 "
                    "the labels do not matter")


def _as_index_list(value: Any, arg: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        items = list(value)
    except TypeError as exc:
        raise TypeError(f"{arg} must be a sequence of row indices; got {type(value).__name__}") from exc
    return [require_int(v, f"every entry of {arg}") for v in items]


def check_validation_split(
    labels: Sequence[int] | torch.Tensor, fit_rows: Sequence[int], val_rows: Sequence[int]
) -> Verdict:
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
        return wrong(name, "val_rows is empty")
    outside = [r for r in fit + val if not 0 <= r < n]
    if outside:
        return wrong(name, f"row {outside[0]} is not a training row (0..{n - 1}): the validation set must come from "
                           "the training images, never from the test set")
    if len(set(fit)) != len(fit) or len(set(val)) != len(val):
        return wrong(name, "a row appears twice in the same part")
    both = set(fit) & set(val)
    if both:
        return wrong(name, f"{len(both)} rows are in both parts: a validation row the models trained on makes the "
                           "selection optimistic")
    missing = n - len(fit) - len(val)
    if missing:
        return wrong(name, f"{missing} training rows are in neither part: use all of them")
    classes = sorted(set(y))
    share = len(val) / n
    worst = max(abs(sum(y[r] == k for r in val) - share * sum(v == k for v in y)) for k in classes)
    if worst > 1.0 + 1e-9:
        return wrong(name, f"not stratified: a class has {worst:.1f} validation rows more or fewer than its share; "
                           "pass stratify=labels to train_test_split, so every class keeps its proportion")
    return ok(name, f"{len(fit)} + {len(val)} rows, disjoint, covering the training set, every class in proportion")
