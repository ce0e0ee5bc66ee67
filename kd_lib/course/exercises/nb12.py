"""Checks for the exercises of notebook 12 · Distilling a pretrained LLM.

:func:`check_reverse_kl`, :func:`check_topk_bytes`, :func:`check_truncate_topk`,
:func:`check_student_log_rest`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Failed,
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    kl_rows,
    ok,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)

__all__ = ["check_reverse_kl", "check_student_log_rest", "check_topk_bytes", "check_truncate_topk"]


@checked
def check_reverse_kl(reverse_kl: Callable) -> Verdict:
    """Exercise 12.1: the reverse KL ``KL(q || p)`` of token-level logits, averaged over the masked positions.

    Args:
        reverse_kl: your function ``(student_logits [B, L, V], teacher_logits [B, L, V], mask [B, L] bool)
            -> scalar``: the mean over the positions where ``mask`` is True of
            ``sum_v q_v (log q_v - log p_v)``, ``q`` the student's softmax and ``p`` the teacher's (T = 1).
    """
    name = "check_reverse_kl"
    require_callable(reverse_kl, "reverse_kl", "(student_logits, teacher_logits, mask) -> scalar")
    g = generator(12)
    s = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    t = 2 * torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    reverse, forward = kl_rows(log_q, log_p), kl_rows(log_p, log_q)  # [B, L]
    got = to_tensor(name, call(name, reverse_kl, s.clone(), t.clone(), mask.clone()), "the loss", ())
    verdict = diagnose(name, got, reverse[mask].mean(), [
        ("that is the forward KL(p || q): in the reverse KL the *student's* probabilities weigh the log-ratio "
         "log q - log p", forward[mask].mean()),
        ("the padded positions were averaged in: take the mean over the positions where mask is True only",
         reverse.mean()),
        ("summed over the positions and divided by the batch size (KLDivLoss's batchmean on [B, L, V]): divide by "
         "the number of masked positions instead", reverse[mask].sum() / s.shape[0]),
        ("summed over the positions: divide by the number of masked positions", reverse[mask].sum()),
        ("averaged over the vocabulary too: sum over the vocabulary, then average over the positions",
         reverse[mask].mean() / s.shape[-1]),
    ])
    if verdict is not None:
        return verdict
    return ok(name, "the student's probabilities weigh log q - log p, summed over the vocabulary, averaged over the "
                    "real positions")


def _id_bytes(vocab_size: int) -> int:
    return 1 if vocab_size <= 2**8 else 2 if vocab_size <= 2**16 else 4


@checked
def check_topk_bytes(cache_bytes: Callable[[int, int], int]) -> Verdict:
    """Exercise 12.2: bytes per token of a top-k cache with the smallest unsigned id type.

    Args:
        cache_bytes: your function ``(k, vocab_size) -> int``: ``k`` ids in the smallest of 8-, 16- or 32-bit
            unsigned integers that holds every id ``0 .. vocab_size - 1``, ``k`` float16 log-probabilities and
            one float32 for the probability left out.
    """
    name = "check_topk_bytes"
    require_callable(cache_bytes, "cache_bytes", "(k, vocab_size) -> int")
    for k, vocab in ((32, 49_152), (8, 256), (8, 257), (16, 65_536), (16, 65_537), (64, 262_144), (1, 100)):
        expected = k * (_id_bytes(vocab) + 2) + 4
        got = call(name, cache_bytes, k, vocab)
        try:
            got = require_int(got, "the result")
        except TypeError:
            return wrong(name, f"cache_bytes({k}, {vocab}) returned {got!r}: return a whole number of bytes")
        if got == expected:
            continue
        case = f"cache_bytes({k}, {vocab:,}) = {got}, expected {expected}"
        if got == k * (_id_bytes(vocab) + 2):
            return wrong(name, f"{case}: add the 4 bytes of the float32 left-out mass (one per token)")
        if got == k * 6 + 4:
            return wrong(name, f"{case}: int32 ids waste space -- a vocabulary of {vocab:,} needs only "
                               f"{8 * _id_bytes(vocab)}-bit ids")
        if vocab in (256, 2**16) and got == k * (2 * _id_bytes(vocab) + 2) + 4:
            return wrong(name, f"{case}: ids go from 0 to vocab_size - 1, so {vocab:,} tokens still fit in "
                               f"{8 * _id_bytes(vocab)} bits")
        if vocab in (257, 2**16 + 1) and got == k * (_id_bytes(vocab) // 2 + 2) + 4:
            return wrong(name, f"{case}: {vocab:,} ids do not fit in {4 * _id_bytes(vocab)} bits; use the next type")
        return wrong(name, f"{case}: k ids, k float16 values (2 bytes each) and one float32")
    return ok(name, "ids in the smallest unsigned type, float16 values and a float32 rest: at SmolLM2's 49,152 "
                    "tokens, 16-bit ids give 4k + 4 bytes per token")


def _case(k_total: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sorted top-``k_total`` cache (float64) of three positions, at one of which the top ``k`` keep almost all
    the mass, and the top-``k`` cache it truncates to (computed from the full distributions)."""
    g = generator(21)
    vocab = 40
    logits = torch.randn(3, vocab, generator=g, dtype=torch.float64) * 2
    logits[1, :] = -45.0  # position 1: the top k hold all but about 1e-17 of the mass
    logits[1, :k] = torch.linspace(10.0, 8.0, k, dtype=torch.float64)
    logits[1, k:k_total] = -30.0
    log_p = F.log_softmax(logits, -1).sort(-1, descending=True).values

    def cache(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return log_p[:, :n].clone(), torch.logsumexp(log_p[:, n:], -1)

    return (*cache(k_total), *cache(k))


@checked
def check_truncate_topk(truncate_topk: Callable) -> Verdict:
    """Exercise 12.3: a top-k cache from a larger one, without computing ``1 - sum(p)``.

    Args:
        truncate_topk: your function ``(logp [..., K], log_rest [...], k) -> (logp_k [..., k], log_rest_k [...])``:
            ``logp`` holds the top ``K`` log-probabilities per position, most likely first, and ``log_rest`` the log
            of the probability left out; return the top ``k < K`` and the log of what *they* leave out.
    """
    name = "check_truncate_topk"
    require_callable(truncate_topk, "truncate_topk", "(logp, log_rest, k) -> (logp_k, log_rest_k)")
    logp, log_rest, want_logp, want_rest = _case(12, 5)
    out = call(name, truncate_topk, logp.clone(), log_rest.clone(), 5)
    if not isinstance(out, tuple | list) or len(out) != 2:
        return wrong(name, f"return a pair (logp_k, log_rest_k); got {type(out).__name__}")
    got_logp = to_tensor(name, out[0], "logp_k", tuple(want_logp.shape))
    got_rest = to_tensor(name, out[1], "log_rest_k", tuple(want_rest.shape))
    if not torch.equal(got_logp, want_logp):
        return wrong(name, "logp_k should be the first k columns: the cache is sorted, most likely first")
    error = (got_rest - want_rest).abs()
    if not torch.isfinite(got_rest).all() or error.max() > 1e-6:
        if bool(torch.isfinite(got_rest[[0, 2]]).all()) and error[[0, 2]].max() <= 1e-6:
            return wrong(name, "right where the cache leaves out a fair share, wrong at position 1, where the top 5 "
                               "keep all but about 1e-17 of the mass and 1 - sum(p) loses it to rounding: add the "
                               "dropped probabilities to the old rest in log space, "
                               "logaddexp(log_rest, logsumexp(logp[..., k:]))")
        if (got_rest - log_rest).abs().max() < 1e-9:
            return wrong(name, "log_rest_k is the old log_rest: the k..K columns you drop are left out too")
        return wrong(name, f"log_rest_k is off by up to {error.max():.3g} (in log space)")
    return ok(name, "the first k columns, and the rest grows by the dropped mass -- added in log space, exact even "
                    "where almost nothing is left out")


@checked
def check_student_log_rest(student_log_rest: Callable) -> Verdict:
    """Exercise 12.4: the log of the student's probability off a top-k cache's ids (the bucket loss's ``log r_s``).

    Args:
        student_log_rest: your function ``(student_logits [N, V], ids [N, k]) -> [N]``:
            ``log(1 - sum_{v in ids} softmax(student_logits)_v)``, computed so that it stays finite and exact
            when the ids hold almost all of the student's probability.
    """
    name = "check_student_log_rest"
    require_callable(student_log_rest, "student_log_rest", "(student_logits [N, V], ids [N, k]) -> [N]")
    g = generator(34)
    logits = torch.randn(3, 30, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(30, generator=g)[:6] for _ in range(3)])
    logits[2] = -40.0
    logits[2, ids[2]] = 5.0  # row 2: the ids hold all but about 1e-17 of the mass
    expected = torch.logsumexp(logits.scatter(-1, ids, -math.inf), -1) - torch.logsumexp(logits, -1)
    got = to_tensor(name, call(name, student_log_rest, logits.clone(), ids.clone()), "the result", (3,))
    if not torch.isfinite(got).all() or (got - expected).abs().max() > 1e-6:
        if torch.isfinite(got[:2]).all() and (got[:2] - expected[:2]).abs().max() < 1e-6:
            return wrong(name, "right on ordinary rows, wrong where the ids hold almost all the mass (row 2): "
                               "1 - sum(p) cancels there. Use the log-sum-exp of the logits *off* the ids (scatter "
                               "-inf onto the ids) minus the log-sum-exp of all of them")
        kept = torch.logsumexp(logits.gather(-1, ids), -1) - torch.logsumexp(logits, -1)
        if (got - kept).abs().max() < 1e-6:
            return wrong(name, "that is the log of the mass *on* the ids; the bucket is everything else")
        raise Failed(wrong(name, f"off by up to {(got - expected).abs().max():.3g} (in log space) from "
                                 "logsumexp(logits off the ids) - logsumexp(logits)"))
    return ok(name, "logsumexp over the tokens off the ids minus logsumexp over all: finite and exact even when the "
                    "ids hold nearly everything")
