"""Distillation losses: temperature softmax, Hinton's soft-target loss, and the mixed loss.

Conventions used throughout:

* ``B`` is the batch size, ``C`` the number of classes (or vocabulary size), ``L`` the
  sequence length for token-level losses.
* Logits are unnormalised scores; every loss here takes *logits*, never probabilities, and
  does the (log-)softmax itself, so the classic "softmax passed where log-softmax is
  expected" mistake cannot happen through this API.
* Losses are returned as 0-dim tensors in nats (natural log).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

__all__ = [
    "check_alpha",
    "check_temperature",
    "distillation_loss",
    "kd_loss",
    "softmax_t",
]

IGNORE_INDEX = -100  # the label value that marks a position to skip (as in PyTorch and HF)


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` if it is not finite and > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ValueError(
            f"{name} must be a finite number > 0 (e.g. 2.0); got {temperature!r} "
            f"of type {type(temperature).__name__}"
        )
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (valid range: 0 < {name} < inf, "
            f"typical values 1-10); got {temperature!r}"
        )
    return value


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` if it is not in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise ValueError(
            f"{name} must be a number in [0, 1]; got {alpha!r} of type {type(alpha).__name__}"
        )
    value = float(alpha)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(
            f"{name} must be in the range [0, 1] (it is the weight of the KD term); got {alpha!r}"
        )
    return value


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of logits; got dtype {t.dtype}")
        if t.dim() not in (2, 3):
            raise ValueError(
                f"{name} must have shape [B, C] or [B, L, C]; got {tuple(t.shape)}"
            )
    if student_logits.shape != teacher_logits.shape:
        hint = ""
        if student_logits.shape[:-1] == teacher_logits.shape[:-1]:
            hint = (
                " (the class/vocabulary dimension differs: student and teacher must share the "
                "same label set or tokenizer vocabulary)"
            )
        raise ValueError(
            "student_logits and teacher_logits must have the same shape; got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}{hint}"
        )


def _check_mask(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 3:
        raise ValueError(
            f"mask is only for token-level logits of shape [B, L, C]; got logits of shape "
            f"{tuple(logits.shape)} (pass mask=None for [B, C])"
        )
    if not isinstance(mask, torch.Tensor) or mask.shape != logits.shape[:2]:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape [B, L] = {tuple(logits.shape[:2])}; got {got}")
    mask = mask.to(device=logits.device, dtype=torch.bool)
    if not mask.any():
        raise ValueError("mask selects no position (all zeros): there is nothing to average over")
    return mask


def softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities at temperature ``T``: ``softmax(logits / T)`` over the last dimension.

    Args:
        logits: tensor of shape ``[..., C]``.
        temperature: ``T > 0``. ``T = 1`` is the ordinary softmax; ``T > 1`` flattens the
            distribution (revealing the "dark knowledge" in the small probabilities);
            ``T -> inf`` tends to uniform, ``T -> 0`` to one-hot on the arg-max.

    Returns:
        Tensor of the same shape as ``logits``, non-negative, summing to 1 over the last dim.
    """
    temperature = check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(p_teacher(T) || p_student(T))``.

    The KL divergence is summed over classes and averaged over examples -- the semantics of
    ``nn.KLDivLoss(reduction="batchmean")``, which is the true KL per example.
    (``reduction="mean"`` would also divide by ``C`` and silently shrink the loss.)

    The ``T^2`` factor keeps the soft term's gradients on the same scale as the hard-label
    term's whatever ``T`` is (approximately constant once ``T`` is large): the gradient with
    respect to the student logits is ``T * (p_s - p_t) / B``. Without the factor it would be
    ``(p_s - p_t) / (T * B)``, and since ``p_s - p_t`` itself shrinks like ``1/T``, the soft
    term's gradients would fade like ``1/T^2`` as ``T`` grows.

    The teacher logits are detached: gradient flows to the student only.

    Args:
        student_logits: ``[B, C]``, or ``[B, L, C]`` for token-level distillation.
        teacher_logits: same shape as ``student_logits``.
        temperature: ``T > 0`` applied to both distributions.
        mask: for ``[B, L, C]`` inputs, an optional ``[B, L]`` tensor (bool or 0/1) marking the
            real tokens; padding positions are excluded and the loss is the mean KL over the
            unmasked positions. Without a mask every position counts.

    Returns:
        A 0-dim tensor, ``>= 0``, in nats (times ``T^2``).
    """
    temperature = check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    # KL(p_t || p_s) per position = sum_c p_t * (log p_t - log p_s); kl_div with log_target
    # computes exactly that and treats 0 * log 0 as 0.
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)
    if mask is None:
        mean_kl = kl.mean()
    else:
        mask = _check_mask(mask, student_logits)
        mean_kl = kl[mask].mean()
    return mean_kl * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """The usual KD objective: ``alpha * kd_loss + (1 - alpha) * cross_entropy``.

    ``alpha`` weights the *soft* (teacher) term; ``1 - alpha`` weights the hard-label
    cross-entropy, which is computed at ``T = 1``. ``alpha = 0`` is plain supervised
    training, ``alpha = 1`` pure distillation. The temperature only enters the soft term --
    it is a softmax temperature, not a mixing weight.

    Args:
        student_logits: ``[B, C]`` or ``[B, L, C]``.
        teacher_logits: same shape as ``student_logits``.
        labels: integer class indices, ``[B]`` (or ``[B, L]`` for token-level logits, where
            ``-100`` marks positions to ignore in both terms).
        temperature: ``T > 0`` for the soft term.
        alpha: weight of the KD term, in ``[0, 1]``.

    Returns:
        A 0-dim tensor in nats.
    """
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    _check_logits(student_logits, teacher_logits)
    num_classes = student_logits.shape[-1]
    expected = tuple(student_logits.shape[:-1])
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != expected:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape {expected}; got {got}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices; got dtype {labels.dtype}")
    mask = None
    if student_logits.dim() == 3:
        mask = labels != IGNORE_INDEX
        valid = labels[mask]
    else:
        valid = labels
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        bad = valid[(valid < 0) | (valid >= num_classes)][0].item()
        raise ValueError(
            f"labels must be in the range [0, {num_classes - 1}] for {num_classes} classes; "
            f"got {bad}"
        )
    soft = kd_loss(student_logits, teacher_logits, temperature, mask=mask)
    hard = F.cross_entropy(
        student_logits.reshape(-1, num_classes), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return alpha * soft + (1.0 - alpha) * hard
