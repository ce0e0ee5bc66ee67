"""Checks for the exercises of notebook 14 · Different tokenizers, and what to use when.

:func:`check_bits_per_byte`, :func:`check_aligned_pairs`, :func:`check_uld_distance`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import accumulate

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    close,
    generator,
    ok,
    require_callable,
    require_number,
    wrong,
)

__all__ = ["check_aligned_pairs", "check_bits_per_byte", "check_uld_distance"]


@checked
def check_bits_per_byte(to_bits_per_byte: Callable[[float, int, int], float]) -> Verdict:
    """Exercise 14.1: a per-token perplexity converted to bits per byte.

    Args:
        to_bits_per_byte: your function ``(perplexity, n_tokens, n_bytes) -> float``: the bits per byte of a
            model whose per-token perplexity over ``n_tokens`` predicted tokens of a ``n_bytes``-byte text is
            ``perplexity``.
    """
    name = "check_bits_per_byte"
    require_callable(to_bits_per_byte, "to_bits_per_byte", "(perplexity, n_tokens, n_bytes) -> float")
    for ppl, tokens, n_bytes in ((30.0, 1000, 4300), (250.0, 5911, 24746), (2.0, 8, 8)):
        expected = tokens * math.log2(ppl) / n_bytes
        got = require_number(call(name, to_bits_per_byte, ppl, tokens, n_bytes), "the result")
        if close(got, expected):
            continue
        case = f"to_bits_per_byte({ppl}, {tokens}, {n_bytes}) = {got:.4f}, expected {expected:.4f}"
        if close(got, tokens * math.log(ppl) / n_bytes):
            return wrong(name, f"{case}: that is nats per byte -- divide by ln 2 (log base 2) for bits")
        if close(got, math.log2(ppl)):
            return wrong(name, f"{case}: that is bits per token -- multiply by tokens / bytes")
        if close(got, n_bytes * math.log2(ppl) / tokens):
            return wrong(name, f"{case}: tokens / bytes, not bytes / tokens: the total bits are tokens x log2(ppl)")
        if close(got, tokens * math.log10(ppl) / n_bytes):
            return wrong(name, f"{case}: log base 10 -- bits are log base 2")
        return wrong(name, f"{case}: the total loss is n_tokens x ln(perplexity) nats; spread it over the bytes")
    return ok(name, "n_tokens x log2(perplexity) / n_bytes: the same text's total bits, whatever its tokenization")


def _starts(sizes: list[int]) -> list[int]:
    return [0, *accumulate(sizes)][:-1]


@checked
def check_aligned_pairs(aligned_pairs: Callable) -> Verdict:
    """Exercise 14.2: the aligned positions of two tokenizations of one text.

    Args:
        aligned_pairs: your function ``(student_sizes, teacher_sizes) -> list of (t, u)``: given the byte length
            of every token of one text for each tokenizer (position ``t`` predicts token ``t``, as in
            :class:`kd_lib.llm_tokenizers.PieceTokens`), the pairs of positions at which both have read the same
            bytes, in increasing order.
    """
    name = "check_aligned_pairs"
    require_callable(aligned_pairs, "aligned_pairs", "(student_sizes, teacher_sizes) -> [(t, u), ...]")
    student, teacher = [1, 3, 2, 3, 1, 4, 1, 5, 4], [4, 5, 1, 4, 6, 4]  # both 24 bytes
    s_starts, t_starts = _starts(student), _starts(teacher)
    expected = [(t, t_starts.index(b)) for t, b in enumerate(s_starts) if b in t_starts]
    got = call(name, aligned_pairs, list(student), list(teacher))
    try:
        got = [(int(t), int(u)) for t, u in got]
    except (TypeError, ValueError):
        return wrong(name, f"return a list of (student position, teacher position) pairs; got {got!r}")
    if got == expected:
        return ok(name, "the byte offsets both tokenizations start a token at: position 0 always, then every shared "
                        "boundary")
    s_ends, t_ends = list(accumulate(student)), list(accumulate(teacher))
    ends = [(t, t_ends.index(b)) for t, b in enumerate(s_ends) if b in t_ends]
    if got == ends:
        return wrong(name, "those pair tokens that *end* at the same byte: position t predicts token t, so compare "
                           "where the predicted tokens *start* (position 0: byte 0 for both)")
    if got == [(i, i) for i in range(min(len(student), len(teacher)))]:
        return wrong(name, "pairing position i with position i (as when both sequences are cut to the shorter one) "
                           "compares predictions of different text: pair the positions by byte offset")
    return wrong(name, f"expected {expected}, got {got}")


@checked
def check_uld_distance(uld_distance: Callable) -> Verdict:
    """Exercise 14.3: the ULD distance between two next-token distributions over different vocabularies.

    Args:
        uld_distance: your function ``(p [V_t], q [V_s]) -> float``: the L1 distance between the two probability
            vectors sorted in decreasing order, the shorter one padded with zeros (Boizard et al. 2024).
    """
    name = "check_uld_distance"
    require_callable(uld_distance, "uld_distance", "(p, q) -> float")
    g = generator(14)
    p = F.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 2, -1)
    q = F.softmax(torch.randn(7, generator=g, dtype=torch.float64), -1)

    def padded(x, size, descending=True):
        return F.pad(x.sort(descending=descending).values, (0, size - len(x)))

    expected = (padded(p, 12) - padded(q, 12)).abs().sum().item()
    got = require_number(call(name, uld_distance, p.clone(), q.clone()), "the result")
    if close(got, expected):
        swapped = require_number(call(name, uld_distance, q.clone(), p.clone()), "the result")
        if not close(swapped, expected):
            return wrong(name, "uld_distance(q, p) differs from uld_distance(p, q): pad whichever vector is shorter")
        return ok(name, "sorted, zero-padded, L1: token identities never enter, so any two vocabularies compare")
    mistakes = [
        ((F.pad(p, (0, 0)) - F.pad(q, (0, 5))).abs().sum().item(), "sort both vectors first: the ids of two "
         "tokenizers mean different tokens, only the ranks can be compared"),
        ((padded(p, 12, False) - padded(q, 12, False)).abs().sum().item(), "sort in decreasing order, so that the "
         "zero padding lands on the smallest probabilities"),
        ((p.sort(descending=True).values[:7] - q.sort(descending=True).values).abs().sum().item(),
         "pad the shorter vector with zeros rather than cutting the longer one: the teacher's tail carries "
         "probability too"),
        ((padded(p, 12) - padded(q, 12)).sum().item(), "the absolute value of each difference: both vectors sum to "
         "1, so the signed sum is always 0"),
    ]
    for value, hint in mistakes:
        if close(got, value):
            return wrong(name, hint)
    return wrong(name, f"expected {expected:.6f}, got {got:.6f}")
