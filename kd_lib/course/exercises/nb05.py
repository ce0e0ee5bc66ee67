"""Checks for the exercises of notebook 05 · From BERT to DistilBERT.

:func:`check_pair_difference_layer`, :func:`check_fold_token_types`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    ok,
    own_rng,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)

__all__ = ["check_fold_token_types", "check_pair_difference_layer"]


@lru_cache(maxsize=1)
def _pair_difference_layer() -> int:
    """First index of ``hidden_states`` at which a full-depth student differs from its teacher on a pair."""
    from transformers import BertConfig, BertModel

    from kd_lib.students import distilbert_from_bert

    with own_rng():  # leave the learner's random state alone
        torch.manual_seed(0)
        teacher = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32)).eval()
        student = distilbert_from_bert(teacher, layers=[0, 1], num_labels=2).eval()
    ids = torch.tensor([[2, 11, 12, 3, 21, 22, 23, 3]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        h_t = teacher(input_ids=ids, token_type_ids=types, output_hidden_states=True).hidden_states
        h_s = student.distilbert(input_ids=ids, output_hidden_states=True).hidden_states
    return next(i for i, (a, b) in enumerate(zip(h_t, h_s, strict=True)) if (a - b).abs().max() > 1e-5)


def check_pair_difference_layer(index: int) -> Verdict:
    """Exercise 05.4: at which index of ``hidden_states`` a full-depth student first differs from the teacher
    on a sentence pair (``token_type_ids = 1`` on the second sentence).

    Args:
        index: your answer, an index into ``outputs.hidden_states`` (0 = the embedding output).
    """
    name = "check_pair_difference_layer"
    index = require_int(index, "index")
    expected = _pair_difference_layer()
    if index == expected:
        return ok(name, "hidden_states[0]: the embedding output already differs on the second sentence, whose "
                        "tokens get S[1] in the teacher but the folded S[0] in the student")
    if index == expected + 1:
        return wrong(name, "one too late: hidden_states[0] is the embedding output, not layer 1 -- and the "
                           "difference is already there")
    return wrong(name, f"index {index}: where do the teacher and the student first treat token type 1 differently?")


@checked
def check_fold_token_types(fold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Verdict:
    """Exercise 05.4: the fold of BERT's token-type embeddings into DistilBERT's position embeddings.

    Args:
        fold: your function ``(position_embeddings [P, H], token_type_embeddings [S, H]) -> [P, H]``,
            the student's position table that reproduces the teacher for single-segment input.
    """
    name = "check_fold_token_types"
    require_callable(fold, "fold", "(position_embeddings [P, H], token_type_embeddings [S, H]) -> [P, H]")
    g = generator(8)
    pos, types = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g)
    from kd_lib.students import bert_to_distilbert_state_dict

    state = {"embeddings.word_embeddings.weight": torch.zeros(3, 4), "embeddings.position_embeddings.weight": pos,
             "embeddings.token_type_embeddings.weight": types, "embeddings.LayerNorm.weight": torch.ones(4),
             "embeddings.LayerNorm.bias": torch.zeros(4)}
    expected = bert_to_distilbert_state_dict(state, [])["distilbert.embeddings.position_embeddings.weight"]
    got = to_tensor(name, call(name, fold, pos.clone(), types.clone()), "the folded table", (6, 4))
    mistakes = [
        ("you added token type 1; single-segment input uses token type 0 everywhere", pos + types[1]),
        ("you added the mean of the token types; single-segment input uses token type 0 only", pos + types.mean(0)),
        ("nothing was folded: the teacher adds token_type_embeddings[0] to every token, the student must too", pos),
    ]
    verdict = diagnose(name, got, expected.double(), mistakes, rtol=1e-6, atol=1e-6)
    if verdict is not None:
        return verdict
    return ok(name, "position' = position + token_type[0], as kd_lib.students maps it")
