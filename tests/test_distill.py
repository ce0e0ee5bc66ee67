"""The distillation objectives: cached logits looked up by row, a frozen live teacher."""

from __future__ import annotations

import pytest
import torch

from kd_lib.distill import kd_from_cache, kd_online
from kd_lib.losses import distillation_loss
from kd_lib.training import ForwardNeeds, needs_of
from tests.conftest import tiny_student


def test_kd_from_cache_looks_up_by_row(small_data):
    cached = torch.randn(len(small_data), 2)
    loss_fn = kd_from_cache(cached, temperature=2.0, alpha=1.0)
    batch = small_data.collate([small_data[5], small_data[9]])

    class Out:
        logits = torch.zeros(2, 2)

    # student logits all zero: KD = T² · mean KL(softmax(cached/T) || uniform)
    p = torch.softmax(cached[[5, 9]] / 2.0, -1)
    want = 4.0 * (p * (p.log() - torch.log(torch.tensor(0.5)))).sum(-1).mean()
    torch.testing.assert_close(loss_fn(Out, batch), want)
    with pytest.raises(ValueError, match="temperature"):
        kd_from_cache(cached, temperature=0)


def test_kd_online_freezes_the_teacher_and_matches_the_cached_loss(small_data):
    teacher, student = tiny_student(seed=1).train(), tiny_student(seed=2)
    objective = kd_online(teacher, temperature=3.0, alpha=0.7)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert needs_of(objective) == ForwardNeeds()
    assert needs_of(kd_online(teacher, cosine_weight=0.5)).hidden_states
    batch = small_data.collate([small_data[i] for i in range(8)])
    outputs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = distillation_loss(outputs.logits, t_logits, batch["labels"], 3.0, 0.7)
    torch.testing.assert_close(objective(outputs, batch), want)
    cached = torch.zeros(len(small_data), 2)
    cached[:8] = t_logits
    torch.testing.assert_close(kd_from_cache(cached, 3.0, 0.7)(outputs, batch), want)
    with pytest.raises(ValueError, match="cosine_weight must be >= 0"):
        kd_online(teacher, cosine_weight=-1)
