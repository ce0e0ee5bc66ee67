"""Checks for the exercises of notebook 13 · On-policy distillation.

:func:`check_completion_labels`, :func:`check_generation_tokens`, :func:`check_position_mean`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    generator,
    ok,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)

__all__ = ["check_completion_labels", "check_generation_tokens", "check_position_mean"]


def _labels(prompts: torch.Tensor, completions: torch.Tensor, eos: int, keep_eos: bool = True,
            shifted: bool = True) -> torch.Tensor:
    """Reference labels (and named mistakes): pre-shifted or not, the EOS a target or not."""
    stops = (completions == eos).long().cumsum(1)
    after = (stops - (completions == eos).long() * keep_eos) > 0
    ids = torch.cat([prompts, completions.masked_fill(after, -100)], 1)
    labels = torch.full_like(ids, -100)
    p = prompts.shape[1]
    if shifted:
        labels[:, p - 1:-1] = ids[:, p:]
    else:
        labels[:, p:] = ids[:, p:]
    return labels


@checked
def check_completion_labels(completion_labels: Callable) -> Verdict:
    """Exercise 13.1: the pre-shifted labels of a batch of prompts and continuations.

    Args:
        completion_labels: your function ``(prompts [B, P], completions [B, G], eos) -> labels [B, P + G]``:
            ``labels[t]`` is the token at position ``t + 1`` where that token belongs to the continuation, -100
            elsewhere; a continuation ends at its first ``eos``, which is still a target, and what follows is not.
    """
    name = "check_completion_labels"
    require_callable(completion_labels, "completion_labels", "(prompts, completions, eos) -> labels")
    eos = 0
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    completions = torch.tensor([[11, eos, 12, 13], [14, 15, 16, 17]])  # row 0 stops after one token
    expected = _labels(prompts, completions, eos)
    got = to_tensor(name, call(name, completion_labels, prompts.clone(), completions.clone(), eos), "labels",
                    tuple(expected.shape))
    if torch.equal(got.long(), expected):
        return ok(name, "position t predicts the token at t + 1: the prompt's last position is the first target, the "
                        "end-of-text token is one, and nothing after it")
    mistakes = [
        (_labels(prompts, completions, eos, shifted=False), "these are TRL's unshifted labels (labels[t] = token t): "
         "the course's are shifted -- position t predicts the token at t + 1, so the targets start at the prompt's "
         "last position"),
        (_labels(prompts, completions, eos, keep_eos=False), "the end-of-text token is a target too: the student chose "
         "to stop there, and the teacher should grade that choice"),
        (_labels(prompts, completions, eos=-1), "row 0 stops at its first end-of-text token: the tokens after it are "
         "padding, not targets"),
    ]
    for mistake, hint in mistakes:
        if torch.equal(got.long(), mistake):
            return wrong(name, hint)
    if (got[:, : prompts.shape[1] - 1] != -100).any():
        return wrong(name, "the prompt is given, not predicted: only positions whose next token is in the "
                           "continuation get a label")
    return wrong(name, f"expected {expected.tolist()}, got {got.long().tolist()}")


@checked
def check_generation_tokens(generation_tokens: Callable[[int, int, int], int]) -> Verdict:
    """Exercise 13.2: tokens a model's forward passes process to sample a continuation with a key/value cache.

    Args:
        generation_tokens: your function ``(batch, prompt_tokens, new_tokens) -> int``: the tokens through the
            model's forward passes when it samples ``new_tokens`` after prompts of ``prompt_tokens`` (a batch of
            ``batch`` rows, nobody stopping early), reusing the key/value cache.
    """
    name = "check_generation_tokens"
    require_callable(generation_tokens, "generation_tokens", "(batch, prompt_tokens, new_tokens) -> int")
    for batch, p, g in ((8, 16, 16), (1, 5, 1), (3, 1, 7), (4, 32, 64)):
        expected = batch * (p + g - 1)
        got = call(name, generation_tokens, batch, p, g)
        try:
            got = require_int(got, "the result")
        except TypeError:
            return wrong(name, f"generation_tokens({batch}, {p}, {g}) returned {got!r}: return a whole number of "
                               "tokens")
        if got == expected:
            continue
        case = f"generation_tokens({batch}, {p}, {g}) = {got}, expected {expected}"
        if got == batch * (p + g):
            return wrong(name, f"{case}: the last sampled token is never fed back -- nothing comes after it")
        if got == batch * sum(p + i for i in range(g)):
            return wrong(name, f"{case}: that is without a cache (every step re-reads the whole prefix); with the "
                               "key/value cache each step reads only the newest token")
        if got == batch * g:
            return wrong(name, f"{case}: the prompt is read once too, by the first forward pass")
        return wrong(name, f"{case}: the prompt once, then one token per row for every new token but the last")
    return ok(name, "batch x (prompt + new - 1): the prompt once, then one token per step -- what TokenCounter counts")


@checked
def check_position_mean(position_mean: Callable) -> Verdict:
    """Exercise 13.3: the mean of a per-token measure at each position of the continuation, padding left out.

    Args:
        position_mean: your function ``(values [B, L], mask [B, L] bool, prompt_tokens) -> [G]``, ``G = L - P``:
            for each continuation token ``j = 0 .. G - 1`` (predicted at position ``P - 1 + j``), the mean of
            ``values`` over the rows whose ``mask`` is True there.
    """
    name = "check_position_mean"
    require_callable(position_mean, "position_mean", "(values [B, L], mask [B, L], prompt_tokens) -> [G]")
    g = generator(13)
    p, length = 3, 8
    values = torch.rand(4, length, generator=g, dtype=torch.float64)
    mask = torch.zeros(4, length, dtype=torch.bool)
    mask[:, p - 1:-1] = True
    mask[0, 4:] = False  # row 0 stopped early
    mask[1, 6:] = False
    values = values * mask
    expected = (values.sum(0) / mask.sum(0).clamp_min(1))[p - 1:-1]
    got = to_tensor(name, call(name, position_mean, values.clone(), mask.clone(), p), "the result",
                    (length - p,))
    if torch.allclose(got.double(), expected, atol=1e-9):
        return ok(name, "positions P - 1 .. L - 2, each averaged over the rows still writing there")
    if torch.allclose(got.double(), (values.sum(0) / values.shape[0])[p - 1:-1], atol=1e-9):
        return wrong(name, "divided by the batch size: rows that stopped early count as zeros -- divide by the "
                           "number of rows whose mask is True at that position")
    if torch.allclose(got.double(), (values.sum(0) / mask.sum(0).clamp_min(1))[p:], atol=1e-9):
        return wrong(name, "off by one position: with shifted labels the first continuation token is predicted at "
                           "the prompt's last position, P - 1")
    return wrong(name, f"expected {[round(v, 4) for v in expected.tolist()]}")
