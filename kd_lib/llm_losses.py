"""Token-level divergences for distilling language models: forward KL, reverse KL, generalised JSD.

A language model predicts a distribution over the vocabulary at every position, so each loss here is
a per-token divergence summed over the vocabulary, averaged over the positions that have a target
(``mask``), and multiplied by ``T**2`` (Hinton's convention, as :func:`kd_lib.losses.kd_loss`: the
gradient's size does not shrink as the temperature grows). With ``p_t`` the teacher's and ``p_s``
the student's softmax at temperature ``T``:

* forward KL, ``KL(p_t || p_s)``: mean-seeking -- the student must cover every token the teacher
  gives mass to (Hinton et al. 2015, token-level KD);
* reverse KL, ``KL(p_s || p_t)``: mode-seeking -- the student is punished for mass where the teacher
  has little, and may ignore some of the teacher's modes (MiniLLM, Gu et al. 2024);
* generalised Jensen-Shannon, ``beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` with the mixture
  ``m = beta * p_t + (1 - beta) * p_s`` (GKD, Agarwal et al. 2024). As ``beta`` goes to 0 or 1 it
  goes to 0, not to a KL: :func:`gkd_divergence` follows TRL's ``GKDTrainer``, whose ``beta = 0`` and
  ``beta = 1`` *mean* forward and reverse KL.

:func:`chunked_gkd_divergence` computes the same losses from the student's last hidden states and
output matrix a chunk of tokens at a time, so that the ``[tokens, V]`` student logits -- 49,152 floats
per token -- never exist all at once, in the forward pass or the backward pass.

The teacher's logits never receive a gradient. Everything is computed in float32 (float64 stays
float64): a 49,152-token softmax in bf16 loses the small probabilities KD is about.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kd_lib.losses import check_alpha, check_temperature
from kd_lib.training import LossFunction, forward, freeze

__all__ = ["chunked_gkd_divergence", "forward_kl", "generalized_jsd", "gkd_divergence", "kd_from_teacher",
           "reverse_kl"]


def _log_probs(student_logits, teacher_logits, temperature: float):
    """Both log-softmaxes at ``temperature`` (float32 at least), the teacher's detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape [..., V] (the same vocabulary); got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    return (F.log_softmax(student_logits.to(dtype) / temperature, dim=-1),
            F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dimension; terms where ``p = 0`` count 0 (not ``0 * inf``)."""
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(log_p == -math.inf, torch.zeros_like(terms), terms).sum(dim=-1)


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_token [...]`` over the positions where ``mask`` is true (all without a mask)."""
    if mask is None:
        return per_token.mean()
    if mask.shape != per_token.shape:
        raise ValueError(f"mask must have the logits' shape without the vocabulary, {tuple(per_token.shape)}; "
                         f"got {tuple(mask.shape)} (use labels != -100)")
    keep = mask.bool()
    if not keep.any():
        raise ValueError("mask selects no position: there is nothing to distil (check the labels and padding)")
    return per_token[keep].mean()


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean over masked positions of KL(p_t || p_s)``: a scalar, in nats.

    Args:
        student_logits, teacher_logits: ``[..., V]``, e.g. ``[B, L, V]``, the same vocabulary.
        mask: ``[...]`` (e.g. ``labels != -100``): the positions that count; all of them if ``None``.
        temperature: softmax temperature ``T > 0``.

    Taught in notebook 12, section 2 (Three divergences).
    """
    temperature = check_temperature(temperature, kd=True)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * _token_mean(_kl(log_p_t, log_p_s), mask)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean over masked positions of KL(p_s || p_t)``: a scalar, in nats (arguments as :func:`forward_kl`).

    Taught in notebook 12, section 2 (Three divergences).
    """
    temperature = check_temperature(temperature, kd=True)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * _token_mean(_kl(log_p_s, log_p_t), mask)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean of beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``, ``m = beta p_t + (1 - beta) p_s``.

    ``beta`` must lie strictly between 0 and 1 (at either end the mixture is one of the two
    distributions and the divergence is 0); ``beta = 0.5`` is the Jensen-Shannon divergence, at most
    ``log 2`` per token. Other arguments as :func:`forward_kl`.

    Taught in notebook 12, section 2 (Three divergences).
    """
    temperature = check_temperature(temperature, kd=True)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1:
        raise ValueError(f"beta must be a number strictly between 0 and 1 (0.5: Jensen-Shannon); got {beta!r}; "
                         "for forward or reverse KL use forward_kl / reverse_kl, or gkd_divergence(beta=0 or 1)")
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0)
    per_token = beta * _kl(log_p_t, log_m) + (1 - beta) * _kl(log_p_s, log_m)
    return temperature**2 * _token_mean(per_token, mask)


def gkd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                   mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """The divergence of TRL's ``GKDTrainer`` for ``beta`` in [0, 1]: forward KL at 0, reverse KL at 1,
    :func:`generalized_jsd` in between -- times ``T**2`` (TRL's own loss has no ``T**2``; at ``T = 1``
    the two agree). Arguments as :func:`forward_kl`.

    Taught in notebook 12, section 2 (Three divergences).
    """
    if beta == 0:
        return forward_kl(student_logits, teacher_logits, mask, temperature)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, mask, temperature)
    return generalized_jsd(student_logits, teacher_logits, beta, mask, temperature)


def _chunk_total(hidden: torch.Tensor, head_weight: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                 temperature: float) -> torch.Tensor:
    """The sum over a chunk's tokens of the per-token divergence (times ``T**2``)."""
    return gkd_divergence(hidden @ head_weight.T, teacher_logits, beta, None, temperature) * hidden.shape[0]


def chunked_gkd_divergence(student_hidden: torch.Tensor, head_weight: torch.Tensor, teacher_logits: torch.Tensor,
                           mask: torch.Tensor | None = None, *, beta: float = 0.0, temperature: float = 1.0,
                           chunk_tokens: int = 256) -> torch.Tensor:
    """:func:`gkd_divergence` of the student logits ``student_hidden @ head_weight.T``, a chunk at a time.

    Args:
        student_hidden: ``[..., H]`` the student's last hidden states (after its final norm).
        head_weight: ``[V, H]`` its output matrix (tied models: the input embeddings).
        teacher_logits: ``[..., V]``.
        mask: ``[...]`` the positions that count (all if ``None``); only those are computed.
        beta: 0 forward KL (the default), 1 reverse KL, in between the generalised JSD.
        chunk_tokens: tokens per chunk. Each chunk's logits are recomputed in the backward pass
            (``torch.utils.checkpoint``) instead of being kept, so the memory for the student's logits
            is ``chunk_tokens * V`` floats, not ``tokens * V``; the value and gradients equal the full loss's.

    Taught in notebook 12, section 3 (The vocabulary decides the memory).
    """
    from torch.utils.checkpoint import checkpoint

    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive int (e.g. 256); got {chunk_tokens!r}")
    if student_hidden.shape[:-1] != teacher_logits.shape[:-1] or head_weight.shape != (
            teacher_logits.shape[-1], student_hidden.shape[-1]):
        raise ValueError(f"expected student_hidden [..., H], head_weight [V, H] and teacher_logits [..., V] with the "
                         f"same positions; got {tuple(student_hidden.shape)}, {tuple(head_weight.shape)} and "
                         f"{tuple(teacher_logits.shape)}")
    if mask is not None:
        if mask.shape != student_hidden.shape[:-1]:
            raise ValueError(f"mask must have shape {tuple(student_hidden.shape[:-1])}; got {tuple(mask.shape)}")
        if not mask.bool().any():
            raise ValueError("mask selects no position: there is nothing to distil (check the labels and padding)")
        student_hidden, teacher_logits = student_hidden[mask.bool()], teacher_logits[mask.bool()]
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    teacher = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for start in range(0, hidden.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_total, hidden[part], head_weight, teacher[part], beta, temperature,
                                   use_reentrant=False)
    return total / hidden.shape[0]


def kd_from_teacher(teacher, beta: float = 0.0, temperature: float = 1.0, alpha: float = 1.0) -> LossFunction:
    """``alpha * gkd_divergence + (1 - alpha) * CE`` against a live teacher, for :func:`kd_lib.training.fit`.

    The teacher is frozen (:func:`kd_lib.training.freeze`: eval mode, no gradients) and run under
    ``no_grad`` on every batch -- the dense, full-vocabulary reference that top-k caches
    (:func:`kd_lib.llm_topk.kd_from_topk`) approximate. Positions whose ``labels`` are -100 do not count.

    Taught in notebook 12, section 6 (Healing the pruned student).
    """
    temperature, alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
        raise ValueError(f"beta must be a number in [0, 1] (0: forward KL, 1: reverse KL); got {beta!r}")
    freeze(teacher)

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        labels = batch["labels"].to(logits.device)
        mask = labels != -100
        with torch.no_grad():
            teacher_logits = forward(teacher, batch, logits.device).logits
        kd = gkd_divergence(logits, teacher_logits, beta, mask, temperature)
        if alpha == 1:
            return kd
        return alpha * kd + (1 - alpha) * F.cross_entropy(logits[mask].float(), labels[mask])

    return LossFunction(loss)
