"""Checks for the exercises of notebook 03 · Your first distillation.

:func:`check_distillation_loss`, :func:`check_validation_split`, :func:`check_fixed_snippet`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.course.exercises.verdict import (
    Failed,
    Verdict,
    call,
    checked,
    close,
    diagnose,
    generator,
    ok,
    own_rng,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)
from kd_lib.losses import distillation_loss, kd_loss

__all__ = ["check_distillation_loss", "check_fixed_snippet", "check_validation_split"]


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


def _snippet_models() -> tuple[nn.Module, nn.Module]:
    """A tiny teacher (with dropout, so train mode shows) and student: 8 features -> 3 classes."""
    with own_rng():
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
        student = nn.Linear(8, 3).double()
    return teacher, student


def _check_optimizer(name: str, make_optimizer: Callable[[nn.Module], Any], student: nn.Module) -> None:
    opt = call(name, make_optimizer, student)
    if not isinstance(opt, torch.optim.Optimizer):
        raise Failed(wrong(name, f"make_optimizer returned {type(opt).__name__}, not a torch.optim optimizer"))
    given = {id(p) for group in opt.param_groups for p in group["params"]}
    if given != {id(p) for p in student.parameters()}:
        raise Failed(wrong(name, "the optimizer does not hold exactly the student's parameters: build it on the "
                                 "student *instance* (student.parameters()), not on its class or on the teacher"))


@checked
def check_fixed_snippet(
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    train_step: Callable[..., Any],
) -> Verdict:
    """Exercise 03.6: the repaired distillation snippet -- an optimizer and one training step.

    Runs your code on a tiny teacher (with dropout) and student (8 features -> 3 classes), float64, and
    compares the returned loss and the student's new weights with ``distillation_loss`` and a plain SGD
    step computed here; watches the teacher's mode and autograd state while your step calls it.

    Args:
        make_optimizer: ``student -> torch.optim.Optimizer`` over exactly ``student.parameters()``.
        train_step: ``(teacher, student, optimizer, x [B, 8], y [B], T, alpha) -> loss`` (tensor or float):
            one step of ``alpha · T² · KL + (1 - alpha) · CE`` that updates the student only.
    """
    name = "check_fixed_snippet"
    require_callable(make_optimizer, "make_optimizer", "student -> torch.optim optimizer")
    require_callable(train_step, "train_step", "(teacher, student, optimizer, x, y, T, alpha) -> loss")
    teacher, student = _snippet_models()
    _check_optimizer(name, make_optimizer, student)
    teacher.train()  # as a model comes back from its own training; the step must switch it to eval()
    seen: list[tuple[bool, bool]] = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    student_calls: list[int] = []
    student.register_forward_hook(lambda m, i, o: student_calls.append(1))
    g = generator(3)
    teacher_before = copy.deepcopy(teacher.state_dict())
    for step, (temperature, alpha) in enumerate(((4.0, 0.7), (2.0, 0.5))):
        x, y = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
        reference = copy.deepcopy(student)
        with torch.no_grad():
            t_logits = copy.deepcopy(teacher).eval()(x)
        s_logits = reference(x)  # reference is a deep copy: it carries the hook, hence the clear() below
        expected = distillation_loss(s_logits, t_logits, y, temperature, alpha)
        expected.backward()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        seen.clear()
        student_calls.clear()
        got = to_tensor(name, call(name, train_step, teacher, student, optimizer, x, y, temperature, alpha),
                        "the returned loss", ())
        verdict = _snippet_verdict(name, seen, student_calls, teacher, teacher_before, got, expected,
                                   s_logits.detach(), t_logits, y, temperature, alpha)
        if verdict is not None:
            return verdict
        for p, r in zip(student.parameters(), reference.parameters(), strict=True):
            if not close(p.detach(), (r - 0.1 * r.grad).detach(), 1e-6, 1e-9):
                hint = ("forgot optimizer.zero_grad(): the second step added the first step's gradient"
                        if step else "the student's weights are not one optimizer step along the loss's gradient: "
                                     "call loss.backward() then optimizer.step()")
                return wrong(name, hint)
    return ok(name, "optimizer on the student instance; teacher in eval() under no_grad and unchanged; student "
                    "called; loss = distillation_loss(student, teacher, …); one step per call, gradients zeroed")


def _snippet_verdict(
    name: str, seen: list, student_calls: list, teacher: nn.Module, teacher_before: dict,
    got: torch.Tensor, expected: torch.Tensor, s_logits: torch.Tensor, t_logits: torch.Tensor,
    y: torch.Tensor, temperature: float, alpha: float,
) -> Verdict | None:
    """The ✗ for the first thing ``train_step`` did wrong in one call, or None."""
    if not seen:
        return wrong(name, "the teacher was never called: its logits are the soft targets")
    if any(training for training, _ in seen):
        return wrong(name, "the teacher ran in train mode (dropout on): call teacher.eval() before using it")
    if any(grad for _, grad in seen):
        return wrong(name, "the teacher ran with autograd on: wrap its forward pass in torch.no_grad()")
    if any(not torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items()):
        return wrong(name, "the teacher's weights changed: only the student's parameters belong to the optimizer")
    if not student_calls:
        return wrong(name, "the student is never called: the loss must compare student(x) with teacher(x)")
    return diagnose(name, got, expected.detach(), [
        ("student and teacher logits are swapped: distillation_loss(student_logits, teacher_logits, labels, T, alpha)",
         distillation_loss(t_logits, s_logits, y, temperature, alpha)),
        ("the loss compares the teacher with itself", distillation_loss(t_logits, t_logits, y, temperature, alpha)),
    ])
