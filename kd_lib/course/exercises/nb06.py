"""Checks for the exercises of notebook 06 · Intermediate-layer distillation.

:func:`check_projection_count`, :func:`check_cosine_hidden_loss`, :func:`check_layer_map`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

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
    own_rng,
    require_callable,
    require_int,
    to_tensor,
    wrong,
)
from kd_lib.losses import hidden_state_loss, layer_map

__all__ = ["check_cosine_hidden_loss", "check_layer_map", "check_projection_count"]


@lru_cache(maxsize=1)
def _projection_reference() -> tuple[int, int]:
    """Projections and their parameters that FeatureDistillLoss creates in notebook 06's setting."""
    from transformers import BertConfig, BertForSequenceClassification

    from kd_lib.distill import FeatureDistillLoss
    from kd_lib.students import narrow_distilbert

    with own_rng():  # leave the learner's random state alone
        teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=384, num_hidden_layers=6,
                                                           num_attention_heads=12, intermediate_size=8,
                                                           max_position_embeddings=16))
        student = narrow_distilbert(teacher, num_layers=3, hidden_size=256, num_heads=4, seed=0)
        loss = FeatureDistillLoss(teacher, student, weights={"logits": 1.0, "hidden": 1.0}, include_embeddings=True)
    return len(loss.projections), sum(p.numel() for p in loss.projections.parameters())


def check_projection_count(n_projections: int, n_params: int) -> Verdict:
    """Exercise 06.1: projections created by ``FeatureDistillLoss`` for notebook 06's narrow student
    (3 layers x 256 wide, teacher 6 layers x 384, uniform map, ``include_embeddings=True``, hidden term on).

    Args:
        n_projections: your predicted ``len(loss_fn.projections)``.
        n_params: your predicted number of parameters in them.
    """
    name = "check_projection_count"
    n_projections, n_params = require_int(n_projections, "n_projections"), require_int(n_params, "n_params")
    exp_n, exp_params = _projection_reference()
    per = exp_params // exp_n
    if n_projections != exp_n:
        hints = {exp_n - 1: "the embedding output is matched too (include_embeddings=True): one more projection",
                 6: "one projection per *student* layer matched (plus the embeddings), not per teacher layer",
                 7: "one projection per *student* layer matched (plus the embeddings), not per teacher layer"}
        return wrong(name, f"n_projections = {n_projections}: " + hints.get(n_projections, "count the matched pairs"))
    if n_params != exp_params:
        hints = {exp_n * 256 * 384: "each nn.Linear(256, 384) also has a bias of 384",
                 exp_n * (384 * 384 + 384): "a projection maps the student's width 256 to the teacher's 384",
                 per: "that is one projection; multiply by their number"}
        return wrong(name, f"n_params = {n_params:,}: " + hints.get(n_params, "each is nn.Linear(256, 384)"))
    return ok(name, f"{exp_n} projections (embeddings + 3 layers), each nn.Linear(256, 384): "
                    f"{exp_params:,} parameters")


@checked
def check_cosine_hidden_loss(
    my_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> Verdict:
    """Exercise 06.2: the masked cosine hidden-state loss, against ``hidden_state_loss(..., kind="cosine")``.

    Args:
        my_loss: your function ``(student_hidden [B, L, D], teacher_hidden [B, L, D], mask [B, L]) -> loss``:
            the mean of ``1 - cos(h_s, h_t)`` over the real tokens.
    """
    name = "check_cosine_hidden_loss"
    require_callable(my_loss, "my_loss", "(student_hidden [B, L, D], teacher_hidden [B, L, D], mask [B, L]) -> loss")
    g = generator(9)
    hs = torch.randn(2, 5, 8, generator=g, dtype=torch.float64) * 3 + 1
    ht = torch.randn(2, 5, 8, generator=g, dtype=torch.float64) * 0.5 + 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    keep = mask.bool()
    cos = F.cosine_similarity(hs, ht, dim=-1)
    expected = hidden_state_loss(hs, ht, mask, kind="cosine")
    mistakes = [
        ("padding is not masked: average over the positions where mask is 1 only", (1 - cos).mean()),
        ("you divided by all B·L positions after zeroing the padding: divide by the number of real tokens",
         ((1 - cos) * keep).sum() / keep.numel()),
        ("unnormalised: that is 1 - h_s·h_t; the cosine divides the dot product by both vectors' lengths",
         (1 - (hs * ht).sum(-1))[keep].mean()),
        ("that is the mean cosine similarity; the loss is 1 - cos (0 when the directions agree)", cos[keep].mean()),
        ("the cosine is taken over the feature dimension D (dim=-1), not over the positions",
         (1 - F.cosine_similarity(hs * keep[..., None], ht * keep[..., None], dim=1)).mean()),
    ]
    got = to_tensor(name, call(name, my_loss, hs.clone(), ht.clone(), mask.clone()), "the loss", ())
    verdict = diagnose(name, got, expected, mistakes)
    if verdict is not None:
        return verdict
    scaled = to_tensor(name, call(name, my_loss, hs * 7.0, ht.clone(), mask.clone()), "the loss", ())
    if not close(scaled, expected):
        return wrong(name, "your loss changes when the student's states are scaled by 7: the cosine must not "
                           "depend on the vectors' lengths")
    return ok(name, "equals hidden_state_loss(kind='cosine') and ignores the scale of the states")


@checked
def check_layer_map(my_layer_map: Callable[[int, int, str], Sequence[int]]) -> Verdict:
    """Exercise 06.3: which teacher ``hidden_states`` index each student layer learns from.

    Args:
        my_layer_map: your function ``(n_student, n_teacher, strategy) -> [teacher index per student layer]``
            for ``strategy`` ``"uniform"`` or ``"last"``; indices into ``outputs.hidden_states``, where
            index 0 is the embedding output and index ``j`` the output of layer ``j``.
    """
    name = "check_layer_map"
    require_callable(my_layer_map, "my_layer_map", "(n_student, n_teacher, strategy) -> list of teacher indices")
    for s, t in ((3, 6), (4, 12), (2, 5), (3, 3)):
        for strategy in ("uniform", "last"):
            got_raw = call(name, my_layer_map, s, t, strategy)
            try:
                got = [int(j) for j in got_raw]
            except (TypeError, ValueError):
                return wrong(name, f"return a list of ints (one teacher index per student layer); got {got_raw!r}")
            expected = [j for _, j in layer_map(s, t, strategy)]
            if got == expected:
                continue
            where = f"{s} student / {t} teacher layers, {strategy!r}: got {got}, expected {expected}"
            if got == [j - 1 for j in expected]:
                return wrong(name, f"{where}. Off by one: hidden_states[0] is the embedding output, so layer j's "
                                   "output is hidden_states[j] (layers count from 1)")
            if strategy == "uniform" and got == [(i - 1) * t // s for i in range(1, s + 1)]:
                return wrong(name, f"{where}. The uniform map ends at the teacher's last layer: student layer i "
                                   "learns from teacher layer i·T//S")
            return wrong(name, where)
    return ok(name, "agrees with kd_lib.losses.layer_map for 'uniform' and 'last' on four teacher/student sizes")
