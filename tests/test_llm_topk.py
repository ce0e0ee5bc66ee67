"""kd_lib.llm_topk: a teacher's top-k next-token log-probabilities, cached once, and the losses that use them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TokenBlocks
from kd_lib.llm_losses import forward_kl
from kd_lib.llm_topk import (
    TopKCache,
    bytes_per_token,
    kd_from_topk,
    load_topk,
    save_topk,
    teacher_topk,
    topk_kd_loss,
)

V = 40


class TableTeacher(nn.Module):
    """A stand-in causal LM whose logits at a position are a fixed row per input token."""

    def __init__(self, seed: int = 0, scale: float = 3.0):
        super().__init__()
        self.table = nn.Embedding(V, V)
        with torch.no_grad():
            self.table.weight.copy_(scale * torch.randn(V, V, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table(input_ids))


@pytest.fixture(scope="module")
def setup():
    teacher, data = TableTeacher(), TokenBlocks(V)
    batch = data.collate(list(range(len(data.input_ids))))
    with torch.no_grad():
        teacher_logits = teacher(batch["input_ids"]).logits.double()
    student_logits = (2 * torch.randn(teacher_logits.shape, generator=torch.Generator().manual_seed(2),
                                      dtype=torch.float64)).requires_grad_()
    return teacher, data, batch, teacher_logits, student_logits, batch["labels"] != -100


def _rows(cache: TopKCache, batch):
    length = batch["input_ids"].shape[1]
    return cache.ids[batch["row"], :length], cache.logp[batch["row"], :length], cache.log_rest[batch["row"], :length]


@pytest.mark.parametrize("mode", ["renormalize", "bucket"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_with_k_equal_to_the_vocabulary_both_modes_are_the_full_forward_kl(setup, mode, T):
    teacher, data, batch, t_logits, s_logits, mask = setup
    cache = teacher_topk(teacher, data, V, temperature=T)
    loss = topk_kd_loss(s_logits, *_rows(cache, batch), mask, mode=mode, temperature=T)
    assert loss.item() == pytest.approx(forward_kl(s_logits, t_logits, mask, temperature=T).item(), rel=2e-3)  # fp16


@pytest.mark.parametrize("k", [1, 4, 16])
def test_the_bucket_loss_never_exceeds_the_full_kl_and_renormalize_is_its_formula(setup, k):
    teacher, data, batch, t_logits, s_logits, mask = setup
    cache = teacher_topk(teacher, data, k)
    ids, logp, log_rest = _rows(cache, batch)
    bucket = topk_kd_loss(s_logits, ids, logp, log_rest, mask, mode="bucket")
    assert bucket.item() <= forward_kl(s_logits, t_logits, mask).item() + 1e-3  # merging outcomes cannot raise KL
    # renormalize by hand: the kept probabilities scaled to 1 against the student's full softmax
    p = logp[mask].double().exp()
    p = p / p.sum(-1, keepdim=True)
    log_q = F.log_softmax(s_logits[mask], -1).gather(-1, ids[mask].long())
    by_hand = (p * (p.log() - log_q)).sum(-1).mean()
    assert topk_kd_loss(s_logits, ids, logp, log_rest, mask).item() == pytest.approx(by_hand.item(), rel=1e-9)


def test_the_cache_holds_the_largest_log_probabilities_and_the_rest(setup):
    teacher, data, batch, t_logits, _, mask = setup
    cache = teacher_topk(teacher, data, 8)
    ids, logp, log_rest = _rows(cache, batch)
    exact = F.log_softmax(t_logits, -1)
    assert torch.equal(ids[mask].long(), exact[mask].topk(8, -1).indices)
    assert torch.allclose(logp[mask].double(), exact[mask].topk(8, -1).values, rtol=1e-3, atol=0)  # float16
    total = logp[mask].double().exp().sum(-1) + log_rest[mask].double().exp()
    assert torch.allclose(total, torch.ones_like(total), atol=2e-3)
    kept = cache.kept_mass()[batch["row"], : mask.shape[1]][mask].double()
    assert torch.allclose(kept, exact[mask].topk(8, -1).values.exp().sum(-1), atol=2e-3)
    assert cache.ids.dtype == torch.int32 and cache.logp.dtype == torch.float16 and cache.k == 8
    short = 3  # the block of 3 tokens is padded to 7 positions: nothing kept there
    assert torch.isinf(cache.logp[3, short:]).all() and torch.isinf(cache.log_rest[3, short:]).all()


def test_save_and_load_round_trip_and_a_mismatched_cache_is_refused(setup, tmp_path):
    teacher, data, *_ = setup
    cache = teacher_topk(teacher, data, 4, meta={"teacher": "table-0", "tokenizer": "ids"})
    path = save_topk(tmp_path / "topk.safetensors", cache)
    back = load_topk(path, expected_meta={"teacher": "table-0", "k": 4})
    assert all(torch.equal(getattr(back, n), getattr(cache, n)) for n in ("ids", "logp", "log_rest"))
    assert back.meta == cache.meta and back.temperature == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["topk.safetensors"]  # no temporary file left
    with pytest.raises(ValueError, match=r"made with other k, teacher .*delete it to compute it again"):
        load_topk(path, expected_meta={"teacher": "table-1", "k": 8})


def test_the_objective_looks_rows_up_so_shuffled_batches_stay_aligned(setup):
    teacher, data, batch, _, s_logits, mask = setup
    cache = teacher_topk(teacher, data, 6)
    objective = kd_from_topk(cache, "bucket")
    ordered = objective(SimpleNamespace(logits=s_logits), batch)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = {name: value[order] for name, value in batch.items()}
    again = objective(SimpleNamespace(logits=s_logits[order]), shuffled)
    assert again.item() == pytest.approx(ordered.item(), rel=1e-12)
    assert ordered.item() == pytest.approx(topk_kd_loss(s_logits, *_rows(cache, batch), mask, mode="bucket").item())
    mixed = kd_from_topk(cache, "bucket", alpha=0.25)(SimpleNamespace(logits=s_logits), batch)
    ce = F.cross_entropy(s_logits[mask], batch["labels"][mask])
    assert mixed.item() == pytest.approx(0.25 * ordered.item() + 0.75 * ce.item(), rel=1e-6)


def test_bytes_per_token():
    assert bytes_per_token(8) == 52 and bytes_per_token(64) == 388
    assert 49_152 * 4 / bytes_per_token(32) == pytest.approx(1003.1, abs=0.1)  # about a thousandth of dense


@pytest.mark.parametrize(("call", "message"), [
    (lambda c, s, b, m: topk_kd_loss(s, *_rows(c, b), m, mode="dense"), "mode must be one of"),
    (lambda c, s, b, m: topk_kd_loss(s, *_rows(c, b), torch.zeros_like(m)), "mask selects no position"),
    (lambda c, s, b, m: kd_from_topk(c, alpha=1.5), "alpha must be a number in"),
    (lambda c, s, b, m: bytes_per_token(0), "k must be a positive int"),
    (lambda c, s, b, m: teacher_topk(TableTeacher(), TokenBlocks(V), V + 1), "larger than the teacher's vocabulary"),
])
def test_bad_inputs_are_refused_by_name(setup, call, message):
    teacher, data, batch, _, s_logits, mask = setup
    with pytest.raises(ValueError, match=message):
        call(teacher_topk(teacher, data, 4), s_logits, batch, mask)


def test_a_teacher_in_training_mode_is_put_back_as_it_was(setup):
    teacher, data, *_ = setup
    teacher.train()
    teacher_topk(teacher, data, 2)
    assert teacher.training
    assert math.isclose(bytes_per_token(1), 10)
