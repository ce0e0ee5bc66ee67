"""Checks for the exercises of notebook 09 · Distilling a language model.

:func:`check_next_token_labels`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kd_lib.course.exercises.verdict import Verdict, call, checked, ok, require_callable, to_tensor, wrong
from kd_lib.losses import IGNORE_INDEX

__all__ = ["check_next_token_labels"]


@checked
def check_next_token_labels(make_labels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Verdict:
    """Exercise 09.2: next-token targets of a right-padded batch, pre-shifted as ``kd_lib.lm.LMBlocks`` stores them.

    Args:
        make_labels: your function ``(input_ids [B, L], attention_mask [B, L]) -> labels [B, L]`` with
            ``labels[:, t] = input_ids[:, t + 1]`` where position ``t + 1`` is a real token, and ``-100``
            elsewhere (the last real token of each row and all padding).
    """
    name = "check_next_token_labels"
    require_callable(make_labels, "make_labels", "(input_ids [B, L], attention_mask [B, L]) -> labels [B, L]")
    ids = torch.tensor([[5, 8, 13, 21, 34, 55], [7, 9, 11, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    real_next = torch.zeros_like(mask)
    real_next[:, :-1] = mask[:, 1:]
    expected = torch.full_like(ids, IGNORE_INDEX)
    expected[:, :-1] = ids[:, 1:]
    expected[real_next == 0] = IGNORE_INDEX
    got = to_tensor(name, call(name, make_labels, ids.clone(), mask.clone()), "labels", tuple(ids.shape)).long()
    if torch.equal(got, expected):
        return ok(name, "position t predicts token t + 1; the last real token and the padding get -100")
    back = torch.full_like(ids, IGNORE_INDEX)
    back[:, 1:] = ids[:, :-1]
    if torch.equal(got, ids) or torch.equal(got, ids.masked_fill(mask == 0, IGNORE_INDEX)):
        return wrong(name, "no shift: position t must predict the *next* token, labels[:, t] = input_ids[:, t + 1] "
                           "(Hugging Face models shift inside; here the labels are stored pre-shifted)")
    if torch.equal(got[real_next == 1], back[real_next == 1]):
        return wrong(name, "shifted the wrong way: labels[:, t] is input_ids[:, t + 1], the token *after* t")
    if torch.equal(got[real_next == 1], expected[real_next == 1]):
        return wrong(name, "the shift is right, but positions whose next token is padding (or that have none) must "
                           "be -100, or the loss learns to predict the pad token")
    return wrong(name, f"expected\n{expected.tolist()}\ngot\n{got.tolist()}")
