"""Feature-based losses (hidden states, attention), the layer map, and FeatureDistillLoss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import save_tiny_bert
from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import CachedTeacherFeatures, FeatureDistillLoss, kd_online
from kd_lib.losses import attention_loss, hidden_state_loss, kd_loss, layer_map
from kd_lib.students import distilbert_from_bert
from kd_lib.training import TrainSettings, fit

FEATURES = json.loads((Path(__file__).parent / "fixtures" / "features.json").read_text())["cases"]


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _attn(batch: int, heads: int, length: int, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Attention probabilities [B, H, L, L] with padded keys at exactly 0, like a real model's."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, length, length, generator=g, dtype=torch.float64) * 2
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


# ------------------------------------------------------------------------- against fixtures
@pytest.mark.parametrize("case", FEATURES, ids=lambda c: c["id"])
def test_feature_losses_match_fixture(case):
    mask = torch.tensor(case["mask"])
    hs, ht = _t(case["student_hidden"]), _t(case["teacher_hidden"])
    a_s, a_t = _t(case["student_attn"]), _t(case["teacher_attn"])
    assert hidden_state_loss(hs, ht, mask, "mse").item() == pytest.approx(case["hidden_mse"], rel=1e-10)
    assert hidden_state_loss(hs, ht, mask, "cosine").item() == pytest.approx(case["hidden_cosine"], rel=1e-10)
    assert attention_loss(a_s, a_t, mask, "kl").item() == pytest.approx(case["attention_kl"], rel=1e-10)
    assert attention_loss(a_s, a_t, mask, "mse").item() == pytest.approx(case["attention_mse"], rel=1e-10)


# ------------------------------------------------------------------------- hidden states
def test_hidden_mse_ignores_padding_and_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = sum(((s[b, i] - t[b, i]) ** 2).sum() for b in range(3) for i in range(5) if mask[b, i]) / (8 * 4)
    assert hidden_state_loss(s, t, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    s2 = s.clone()
    s2[~mask.bool()] = 1e3  # garbage in the padding must not move the loss
    assert hidden_state_loss(s2, t, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert hidden_state_loss(s2, t).item() > 1e4  # ... unless nothing is masked


def test_hidden_on_sentence_embeddings_is_nn_mseloss_and_cosine():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert hidden_state_loss(s, t).item() == pytest.approx(nn.MSELoss()(s, t).item(), rel=1e-6)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    assert hidden_state_loss(s, t, kind="cosine").item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    assert hidden_state_loss(s, 3 * s, kind="cosine").item() == pytest.approx(0.0, abs=1e-6)  # length ignored
    assert hidden_state_loss(s, s).item() == 0.0


def test_hidden_projection_for_narrow_students_and_its_gradient():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 6, generator=g, requires_grad=True)
    proj = nn.Linear(4, 6)
    loss = hidden_state_loss(s, t, projection=proj)
    assert loss.item() == pytest.approx(F.mse_loss(proj(s), t).item(), rel=1e-6)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0 and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher is detached
    with pytest.raises(ValueError, match=r"projection=nn.Linear\(4, 6\)"):
        hidden_state_loss(s, t)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)), "batch and sequence length"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3)), "selects no position"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4)), r"mask must be a tensor of shape \[B, L\]"),
        ((torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4)), "only for token-level"),
        ((torch.zeros(4), torch.zeros(4)), r"\[B, D\] or \[B, L, D\]"),
        ((torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4)), "floating-point"),
    ],
)
def test_hidden_state_loss_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        hidden_state_loss(*args)


def test_hidden_state_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be 'mse' or 'cosine'"):
        hidden_state_loss(torch.zeros(2, 3), torch.zeros(2, 3), kind="l1")


# ------------------------------------------------------------------------- attention
def test_attention_kl_is_zero_for_equal_maps_and_positive_otherwise():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    a, b = _attn(2, 3, 4, mask, 0), _attn(2, 3, 4, mask, 1)
    assert attention_loss(a, a, mask).item() == pytest.approx(0.0, abs=1e-12)  # padded keys are 0: no NaN
    assert attention_loss(a, b, mask).item() > 0
    assert torch.isfinite(attention_loss(a, b, mask))


def test_attention_kl_matches_torch_kl_div_per_row():
    mask = torch.ones(2, 5, dtype=torch.long)
    a_s, a_t = _attn(2, 4, 5, mask, 3), _attn(2, 4, 5, mask, 4)
    rows = F.kl_div(a_s.log().reshape(-1, 5), a_t.reshape(-1, 5), reduction="batchmean")
    assert attention_loss(a_s, a_t, mask, "kl").item() == pytest.approx(rows.item(), rel=1e-10)


def test_attention_heads_average_for_fewer_student_heads():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    a_s, a_t = _attn(2, 2, 4, mask, 5), _attn(2, 6, 4, mask, 6)
    with pytest.raises(ValueError, match="heads='average'"):
        attention_loss(a_s, a_t, mask)
    averaged = attention_loss(a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True), mask)
    assert attention_loss(a_s, a_t, mask, heads="average").item() == pytest.approx(averaged.item(), rel=1e-12)


def test_attention_gradient_reaches_the_student_only():
    mask = torch.ones(1, 3)
    scores = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    teacher = _attn(1, 2, 3, mask, 7).requires_grad_(True)
    attention_loss(scores.softmax(-1), teacher, mask).backward()
    assert scores.grad.abs().sum() > 0 and teacher.grad is None


@pytest.mark.parametrize(
    ("student", "teacher", "kwargs", "match"),
    [
        (torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 4, 4), {}, "same B and L"),
        (torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), {}, r"\[B, H, L, L\]"),
        (torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3), {"kind": "js"}, "kind must be 'kl' or 'mse'"),
        (torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3), {"heads": "first"}, "heads must be"),
    ],
)
def test_attention_loss_rejects_bad_input(student, teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_loss(student, teacher, **kwargs)


# ------------------------------------------------------------------------- layer map
def test_layer_map_strategies():
    assert layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map(4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert layer_map(6, 12, "uniform")[-1] == (6, 12)
    assert layer_map(3, 6, "last") == [(1, 4), (2, 5), (3, 6)]
    assert layer_map(3, 6, [1, 3, 5]) == [(1, 1), (2, 3), (3, 5)]
    assert layer_map(6, 6) == [(i, i) for i in range(1, 7)]


def test_layer_map_reads_models_and_explains_mismatches(tmp_path):
    teacher = save_tiny_bert(tmp_path / "t", num_layers=4)
    student = distilbert_from_bert(teacher, layers=[0, 2])
    assert layer_map(student, teacher) == [(1, 2), (2, 4)]
    with pytest.raises(ValueError, match=r"teacher layers \[5\] do not exist: the teacher's layers are 1..4"):
        layer_map(student, teacher, [2, 5])
    with pytest.raises(ValueError, match="embedding output"):
        layer_map(2, 4, [0, 2])
    with pytest.raises(ValueError, match="one teacher layer per student layer: 2 needed"):
        layer_map(2, 4, [1, 2, 3])
    with pytest.raises(ValueError, match="more layers"):
        layer_map(5, 4)
    with pytest.raises(ValueError, match="strategy must be"):
        layer_map(2, 4, "first")
    with pytest.raises(ValueError, match="layer count or a transformers model"):
        layer_map("three", 4)


def test_layer_map_copied_converts_module_indices_to_hidden_states(tmp_path):
    """A student copied from teacher modules 0 and 2 (counted from 0) learns from hidden_states 1 and 3."""
    teacher = save_tiny_bert(tmp_path / "t", num_layers=4)
    student = distilbert_from_bert(teacher, layers=[0, 2])
    assert list(student.config.teacher_layers) == [0, 2]
    assert layer_map(student, teacher, "copied") == [(1, 1), (2, 3)]
    teacher.eval(), student.eval()
    with torch.no_grad():  # student layer 1 is teacher module 0, whose output is hidden_states[1], not [0]
        ids = torch.tensor([[101, 2023, 2003, 102]])
        t_hidden = teacher.bert(input_ids=ids, output_hidden_states=True).hidden_states
        s_hidden = student.distilbert(input_ids=ids, output_hidden_states=True).hidden_states
    (i, j), _ = layer_map(student, teacher, "copied")
    torch.testing.assert_close(s_hidden[i], t_hidden[j], atol=1e-5, rtol=0)
    assert (s_hidden[i] - t_hidden[j - 1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"config\.teacher_layers"):
        layer_map(2, 4, "copied")


# ------------------------------------------------------------------------- the combined loss
def _tiny_pair(tmp_path, student_hidden: int = 32):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    teacher = save_tiny_bert(tmp_path / "t", num_layers=4)
    if student_hidden == 32:
        student = distilbert_from_bert(teacher, layers=[0, 2])
    else:
        torch.manual_seed(0)
        student = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=30522, dim=student_hidden, n_heads=1, hidden_dim=2 * student_hidden, n_layers=2,
            max_position_embeddings=128))
    return teacher, student


def _data(n: int = 12) -> EncodedDataset:
    from transformers import AutoTokenizer

    from kd_lib.models import packaged_teacher_path

    tok = AutoTokenizer.from_pretrained(packaged_teacher_path())
    return EncodedDataset(load_task("sst2", limit={"train": n}, seed=1)["train"], tok, max_length=16)


def test_feature_loss_terms_equal_the_separate_losses(tmp_path):
    teacher, student = _tiny_pair(tmp_path)
    data = _data(6)
    batch = next(iter(data.loader(6)))
    loss_fn = FeatureDistillLoss(teacher, student, weights={"logits": 1, "hidden": 2, "attention": 3},
                                 temperature=3.0, alpha=0.25)
    assert loss_fn.pairs == [(1, 2), (2, 4)] and len(loss_fn.projections) == 0
    student.eval()
    out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True, output_attentions=True)
    total = loss_fn.train()(out, batch)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True, output_attentions=True)
    m = batch["attention_mask"]
    kd = kd_loss(out.logits, t.logits, 3.0)
    ce = F.cross_entropy(out.logits, batch["labels"])
    hid = (hidden_state_loss(out.hidden_states[1], t.hidden_states[2], m)
           + hidden_state_loss(out.hidden_states[2], t.hidden_states[4], m)) / 2
    att = (attention_loss(out.attentions[0], t.attentions[1], m)
           + attention_loss(out.attentions[1], t.attentions[3], m)) / 2
    expected = 0.25 * kd + 0.75 * ce + 2 * hid + 3 * att
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    logged = loss_fn.history[-1]
    assert logged["hidden"] == pytest.approx(hid.item(), rel=1e-5)
    assert logged["attention"] == pytest.approx(att.item(), rel=1e-5) and logged["attention"] > 0
    assert logged["kd"] == pytest.approx(kd.item(), rel=1e-5) and logged["ce"] == pytest.approx(ce.item(), rel=1e-5)


def test_logits_only_feature_loss_equals_kd_online(tmp_path):
    teacher, student = _tiny_pair(tmp_path)
    batch = next(iter(_data(6).loader(6)))
    student.eval()
    out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    a = FeatureDistillLoss(teacher, student, temperature=2.0, alpha=0.5)(out, batch)
    b = kd_online(teacher, temperature=2.0, alpha=0.5)(out, batch)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_narrow_student_trains_its_projections_with_fit_and_resumes(tmp_path):
    teacher, student = _tiny_pair(tmp_path, student_hidden=16)
    loss_fn = FeatureDistillLoss(teacher, student, weights={"hidden": 1.0, "attention": 1.0},
                                 include_embeddings=True)
    assert len(loss_fn.projections) == 3  # embeddings + 2 layers, 16 -> 32 each
    assert not any(p.requires_grad for p in teacher.parameters())
    before = loss_fn.projections[0].weight.detach().clone()
    teacher_before = teacher.classifier.weight.detach().clone()
    data = _data(12)
    history = fit(student, data, loss_fn, TrainSettings(epochs=2, lr=1e-2, batch_size=4), seed=0,
                  checkpoint=str(tmp_path / "ckpt.pt"), progress=False)
    assert len(history) == 2 and history[1] < history[0]
    assert not torch.equal(before, loss_fn.projections[0].weight)  # the projection learned
    assert torch.equal(teacher_before, teacher.classifier.weight)  # the teacher did not
    assert len(loss_fn.history) == 2 * 3 and {"total", "ce", "kd", "hidden", "attention"} <= set(loss_fn.history[0])
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert any(k.startswith("loss.projections.0") for k in state)  # checkpointed with the student
    assert not any("teacher" in k for k in state)


def test_feature_loss_rejects_bad_settings(tmp_path):
    teacher, student = _tiny_pair(tmp_path)
    with pytest.raises(ValueError, match="unknown terms"):
        FeatureDistillLoss(teacher, student, weights={"hiden": 1})
    with pytest.raises(ValueError, match="not all 0"):
        FeatureDistillLoss(teacher, student, weights={"logits": 0})
    with pytest.raises(ValueError, match="alpha"):
        FeatureDistillLoss(teacher, student, alpha=2)
    with pytest.raises(ValueError, match="do not exist"):
        FeatureDistillLoss(teacher, student, layers=[1, 9])


def test_cached_teacher_features_give_the_same_loss_as_the_live_teacher(tmp_path):
    teacher, student = _tiny_pair(tmp_path, student_hidden=16)
    data = _data(10)
    cache = CachedTeacherFeatures(teacher, data, hidden_layers=[0, 2, 4], attention_layers=[2, 4],
                                  batch_size=3, dtype=torch.float64)
    assert cache.logits.shape == (10, 2) and len(cache.hidden[2]) == 10
    assert cache.hidden[2][0].shape == (len(data.input_ids[0]), 32)
    assert cache.nbytes == 4 * 20 + 8 * sum(3 * 32 * len(x) + 2 * len(x) ** 2 for x in data.input_ids)
    weights = {"hidden": 1.0, "attention": 1.0}
    live = FeatureDistillLoss(teacher, student, weights=weights, include_embeddings=True, seed=4)
    from_cache = FeatureDistillLoss(cache, student, weights=weights, include_embeddings=True, seed=4)
    student.eval()
    batch = next(iter(data.loader(5, shuffle=True, seed=1)))  # shuffled rows: lookups go by batch["row"]
    out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True, output_attentions=True)
    assert from_cache(out, batch).item() == pytest.approx(live(out, batch).item(), rel=1e-5)
    assert from_cache.history[-1]["attention"] > 0
    with pytest.raises(ValueError, match=r"lack layers \[1, 3\]"):
        FeatureDistillLoss(cache, student, layers=[1, 3], weights={"hidden": 1.0})
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist"):
        CachedTeacherFeatures(teacher, data, hidden_layers=[5])
