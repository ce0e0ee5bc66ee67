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
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KD_TEMPERATURE_MAX_FLOAT64",
    "KD_TEMPERATURE_RANGE",
    "attention_loss",
    "check_alpha",
    "check_temperature",
    "distillation_loss",
    "hidden_state_loss",
    "kd_loss",
    "layer_map",
    "softmax_t",
]

IGNORE_INDEX = -100  # the label value that marks a position to skip (as in PyTorch and HF)

# The temperatures at which the KD loss is computed accurately in float32 (and float16/bfloat16 training):
# above 100 the soft targets differ from uniform by little more than float32's rounding, so the KL
# (which the T^2 factor then multiplies by 10^4 or more) is mostly rounding error: measured relative
# error 1e-4 at T = 100, 1e-3 at 1000, 100 % at 10^4. Below 0.01 the softmax is its arg-max for any
# logit gap above 0.5 (a factor e^-50) and T^2 < 1e-4 scales the term away: that is hard-label
# training (alpha = 0). In float64 the upper end moves to 10^4 (relative error about 1e-8).
KD_TEMPERATURE_RANGE = (0.01, 100.0)
KD_TEMPERATURE_MAX_FLOAT64 = 1e4


def check_temperature(temperature: float, name: str = "temperature", *, kd: bool = False,
                      dtype: torch.dtype = torch.float32) -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` if it is not finite and > 0.

    With ``kd=True`` (the temperature of a KD loss computed in ``dtype``) it must also lie in
    :data:`KD_TEMPERATURE_RANGE` (the upper end is :data:`KD_TEMPERATURE_MAX_FLOAT64` for float64):
    outside it the loss is rounding error or vanishes, and the message says why.

    Taught in notebook 02, section 5 (Five traps).
    """
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
    if kd:
        low, high = KD_TEMPERATURE_RANGE
        if dtype == torch.float64:
            high = KD_TEMPERATURE_MAX_FLOAT64
        if value > high:
            raise ValueError(
                f"{name} {temperature!r} is too high for a KD loss in {str(dtype).removeprefix('torch.')}: above "
                f"{high:g} the soft targets are uniform up to rounding, so the loss (times T² = {value:.3g}²) "
                f"is mostly rounding error; use {name} <= {high:g} (typical values 1-10)"
            )
        if value < low:
            raise ValueError(
                f"{name} {temperature!r} is too low for a KD loss: below {low:g} the soft targets are the "
                f"teacher's one-hot arg-max and T² < {low ** 2:g} scales the term away; for hard labels use "
                f"alpha = 0 (plain cross-entropy), else {name} >= {low:g} (typical values 1-10)"
            )
    return value


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` if it is not in [0, 1].

    Taught in notebook 02, section 5 (Five traps).
    """
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


def _check_not_empty(logits: torch.Tensor) -> None:
    if logits.shape[0] == 0 or (logits.dim() == 3 and logits.shape[1] == 0):
        raise ValueError(f"the batch is empty (logits of shape {tuple(logits.shape)}): there is nothing to average "
                         "over; skip empty batches (e.g. DataLoader(drop_last=...) or a filter) before the loss")


def softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities at temperature ``T``: ``softmax(logits / T)`` over the last dimension.

    Args:
        logits: tensor of shape ``[..., C]``.
        temperature: ``T > 0``. ``T = 1`` is the ordinary softmax; ``T > 1`` flattens the
            distribution (revealing the "dark knowledge" in the small probabilities);
            ``T -> inf`` tends to uniform, ``T -> 0`` to one-hot on the arg-max.

    Returns:
        Tensor of the same shape as ``logits``, non-negative, summing to 1 over the last dim.

    Taught in notebook 01, section 1 (Softmax with temperature).
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

    Taught in notebook 02, section 3 (Hinton's KD loss).
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature, kd=True, dtype=student_logits.dtype)
    _check_not_empty(student_logits)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    # KL(p_t || p_s) per position = sum_c p_t * (log p_t - log p_s), what kl_div(log_target=True)
    # computes. A class the teacher rules out (logit -inf, e.g. a masked token) has p_t = 0 and
    # contributes 0 -- but kl_div would compute 0 * (-inf - log p_s) = nan there, so such terms are
    # set to 0 explicitly (where the teacher has mass, the terms are kl_div's, bit for bit).
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    kl = torch.where(log_p_t == -math.inf, torch.zeros_like(terms), terms).sum(dim=-1)
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

    Taught in notebook 02, section 4 (The full distillation loss).
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature, kd=True, dtype=student_logits.dtype)
    alpha = check_alpha(alpha)
    _check_not_empty(student_logits)
    num_classes = student_logits.shape[-1]
    expected = tuple(student_logits.shape[:-1])
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != expected:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape {expected}; got {got}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices; got dtype {labels.dtype}")
    labels = labels.long()  # any integer dtype (int32 from NumPy, uint8, ...): cross_entropy wants int64
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


# ---------------------------------------------------------------------------------------------
# Feature-based losses: matching what happens *inside* the models (FitNets, PKD, TinyBERT, MiniLM)
# ---------------------------------------------------------------------------------------------


def _check_features(name: str, t: torch.Tensor, dims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a floating-point tensor; got {got}")
    if t.dim() not in dims:
        shapes = " or ".join({2: "[B, D]", 3: "[B, L, D]", 4: "[B, H, L, L]"}[d] for d in dims)
        raise ValueError(f"{name} must have shape {shapes}; got {tuple(t.shape)}")


def _token_mask(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """The ``[B, L]`` boolean mask of real tokens (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, length):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape [B, L] = {(batch, length)} (the attention mask); got {got}")
    mask = mask.to(device=device, dtype=torch.bool)
    if not mask.any():
        raise ValueError("mask selects no position (all zeros): there is nothing to average over")
    return mask


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "mse",
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Distance between student and teacher representations (FitNets, PKD, TinyBERT, DistilBERT).

    Args:
        student_hidden: ``[B, L, D_s]`` token states of one student layer, or ``[B, D_s]``
            (e.g. sentence embeddings).
        teacher_hidden: ``[B, L, D_t]`` (or ``[B, D_t]``) of the matched teacher layer; detached.
        mask: for ``[B, L, D]`` inputs, ``[B, L]`` (bool or 0/1) marking real tokens; padding is
            excluded from the average. ``None``: every position counts.
        kind: ``"mse"`` -- mean squared error over the unmasked positions *and* the ``D_t``
            features (the value of ``nn.MSELoss()`` on the selected rows, as TinyBERT uses);
            ``"cosine"`` -- mean of ``1 - cos(h_s, h_t)`` over unmasked positions (DistilBERT's
            cosine embedding loss), which ignores the vectors' lengths.
        projection: a module mapping ``D_s -> D_t`` (typically a learnable ``nn.Linear``, whose
            parameters must be trained with the student), required when the widths differ.

    Returns:
        A 0-dim tensor (mse: squared units of the hidden states; cosine: in ``[0, 2]``).

    Taught in notebook 06, section 3 (Hidden-state loss (with a projection)).
    """
    if kind not in {"mse", "cosine"}:
        raise ValueError(f"kind must be 'mse' or 'cosine'; got {kind!r}")
    _check_features("student_hidden", student_hidden, (2, 3))
    _check_features("teacher_hidden", teacher_hidden, (2, 3))
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            "student_hidden and teacher_hidden must agree in every dimension but the last (batch and sequence "
            f"length); got {tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"hidden widths differ: student {student_hidden.shape[-1]}, teacher {teacher_hidden.shape[-1]}; pass "
            f"projection=nn.Linear({student_hidden.shape[-1]}, {teacher_hidden.shape[-1]}) (trained with the student)"
        )
    teacher_hidden = teacher_hidden.detach()
    if student_hidden.dim() == 3:
        keep = _token_mask(mask, *student_hidden.shape[:2], student_hidden.device)
        student_hidden, teacher_hidden = student_hidden[keep], teacher_hidden[keep]
    elif mask is not None:
        raise ValueError("mask is only for token-level inputs [B, L, D]; pass mask=None for [B, D]")
    if kind == "mse":
        return F.mse_loss(student_hidden, teacher_hidden)
    return (1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)).mean()


def attention_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "kl",
    heads: str = "match",
) -> torch.Tensor:
    """Attention transfer: make the student attend where the teacher attends.

    Inputs are attention *probabilities* (what ``output_attentions=True`` returns: each row
    sums to 1 over the keys).

    Args:
        student_attn: ``[B, H_s, L, L]`` of one student layer.
        teacher_attn: ``[B, H_t, L, L]`` of the matched teacher layer; detached.
        mask: ``[B, L]`` real-token mask. Padded *queries* are left out of the average; padded
            *keys* carry (almost) no probability in either model and are left out too.
        kind: ``"kl"`` -- ``KL(teacher row || student row)`` summed over keys, averaged over
            heads and real queries (MiniLM's self-attention distribution transfer);
            ``"mse"`` -- squared error averaged over heads and real (query, key) pairs
            (TinyBERT's attention loss, here on probabilities rather than raw scores).
        heads: ``"match"`` compares head h with head h (needs ``H_s == H_t``); ``"average"``
            first averages each model's heads, so students with fewer heads can learn too.

    Returns:
        A 0-dim tensor (nats for ``"kl"``).

    Taught in notebook 06, section 4 (Attention transfer).
    """
    if kind not in {"kl", "mse"}:
        raise ValueError(f"kind must be 'kl' or 'mse'; got {kind!r}")
    if heads not in {"match", "average"}:
        raise ValueError(f"heads must be 'match' or 'average'; got {heads!r}")
    _check_features("student_attn", student_attn, (4,))
    _check_features("teacher_attn", teacher_attn, (4,))
    (b, h_s, length, length2), h_t = student_attn.shape, teacher_attn.shape[1]
    if length != length2 or teacher_attn.shape[0] != b or teacher_attn.shape[2:] != student_attn.shape[2:]:
        raise ValueError(
            "student_attn and teacher_attn must both be [B, H, L, L] with the same B and L; got "
            f"{tuple(student_attn.shape)} and {tuple(teacher_attn.shape)}"
        )
    teacher_attn = teacher_attn.detach()
    if heads == "average":
        student_attn, teacher_attn = student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    elif h_s != h_t:
        raise ValueError(f"the student has {h_s} heads and the teacher {h_t}: pass heads='average'")
    keep = _token_mask(mask, b, length, student_attn.device)
    keys = keep[:, None, None, :]  # [B, 1, 1, L]
    n_heads = student_attn.shape[1]
    n_queries = keep.sum() * n_heads  # real (example, head, query) rows
    if kind == "kl":
        # sum over real keys of p_t * (log p_t - log p_s); xlogy makes 0 * log 0 = 0, and the
        # clamp keeps a student probability that underflowed to 0 from producing inf * 0.
        p_t = teacher_attn * keys
        row = (torch.xlogy(p_t, p_t) - p_t * student_attn.clamp_min(1e-12).log()).sum(-1)  # [B, H, L]
        return (row * keep[:, None, :]).sum() / n_queries
    pairs = keep[:, None, :, None] & keys  # [B, 1, L, L]
    diff2 = (student_attn - teacher_attn).pow(2) * pairs
    return diff2.sum() / (pairs.sum() * n_heads)


def _num_layers(model_or_count, name: str) -> int:
    if isinstance(model_or_count, int) and not isinstance(model_or_count, bool):
        n = model_or_count
    else:
        cfg = getattr(model_or_count, "config", None)
        n = next((getattr(cfg, a) for a in ("num_hidden_layers", "n_layers", "n_layer") if hasattr(cfg, a)), None)
        if n is None:
            raise ValueError(
                f"{name} must be a layer count or a transformers model with a config; got {model_or_count!r}"
            )
    if n < 1:
        raise ValueError(f"{name} must have at least one layer; got {n}")
    return int(n)


def layer_map(
    student,
    teacher,
    strategy: str | Sequence[int] = "uniform",
) -> list[tuple[int, int]]:
    """Which teacher layer each student layer learns from, as ``(student_layer, teacher_layer)``.

    Layers are numbered 1..N, which is also their index into ``outputs.hidden_states`` (index 0
    is the embedding output); the attention of layer ``l`` is ``outputs.attentions[l - 1]``.
    Mind the two conventions: a student built by copying teacher layers (``--student-layers 0,2,4``,
    :func:`kd_lib.students.distilbert_from_bert`) names ``encoder.layer`` modules counted from 0, and
    module ``i`` produces ``hidden_states[i + 1]``; ``strategy="copied"`` does that conversion for you.

    Args:
        student, teacher: layer counts, or models (their ``config`` gives the count).
        strategy:
            ``"uniform"`` -- student layer ``i`` learns from teacher layer ``i * T // S``: evenly
            spaced, the last to the last (TinyBERT; PKD-skip's "every k-th layer").
            ``"last"`` -- the teacher's last ``S`` layers (PKD-last).
            ``"copied"`` -- each student layer learns from the layer it was copied from (a student
            model whose ``config.teacher_layers`` lists the copied modules, counted from 0).
            a list of ``S`` teacher layers, e.g. ``[2, 4, 6]`` -- any explicit choice (1..T).

    Returns:
        ``S`` pairs ``(i, j)`` with ``1 <= i <= S`` and ``1 <= j <= T``.

    Taught in notebook 06, section 2 (Layer mapping).
    """
    s, t = _num_layers(student, "student"), _num_layers(teacher, "teacher")
    if s > t:
        raise ValueError(f"the student has more layers ({s}) than the teacher ({t}): map a subset of the student's")
    if isinstance(strategy, str):
        if strategy == "uniform":
            targets = [i * t // s for i in range(1, s + 1)]
        elif strategy == "last":
            targets = list(range(t - s + 1, t + 1))
        elif strategy == "copied":
            copied = getattr(getattr(student, "config", None), "teacher_layers", None)
            if not copied:
                raise ValueError("strategy='copied' needs a student model whose config.teacher_layers lists the "
                                 "teacher layers it was built from (distilbert_from_bert records them)")
            targets = [int(i) + 1 for i in copied]  # module i (from 0) outputs hidden_states[i + 1]
        else:
            raise ValueError(
                f"strategy must be 'uniform', 'last', 'copied' or a list of teacher layers; got {strategy!r}")
    else:
        targets = [int(j) for j in strategy]
        if len(targets) != s:
            raise ValueError(
                f"an explicit strategy lists one teacher layer per student layer: {s} needed, got {targets}"
            )
        bad = [j for j in targets if not 1 <= j <= t]
        if bad:
            raise ValueError(
                f"teacher layers {bad} do not exist: the teacher's layers are 1..{t} (hidden_states[1..{t}]; "
                "hidden_states[0] is the embedding output, not a layer)"
            )
    return list(zip(range(1, s + 1), targets, strict=True))
