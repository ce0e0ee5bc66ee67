"""kd_lib.multitask: the two-head student equals single-task students at the start, one-task
batches cover every row once, the per-task KD loss, and shared frozen embeddings (sizes)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from kd_lib.data import EncodedDataset
from kd_lib.evaluate import count_params
from kd_lib.losses import distillation_loss
from kd_lib.models import packaged_teacher_path
from kd_lib.multitask import (
    ClassificationHead,
    MultiTaskData,
    MultiTaskStudent,
    multitask_from_bert,
    multitask_kd,
    share_frozen_embeddings,
)
from kd_lib.students import distilbert_from_bert
from kd_lib.training import TrainSettings, evaluate_accuracy, fit, predict_logits

TASKS = {"sst2": 2, "ag_news": 4}


@pytest.fixture(scope="module")
def bert():
    """A 4-layer, 32-wide random BERT with the real vocabulary size (so the packaged tokenizer fits)."""
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, num_labels=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_teacher_path())


def encoded(tokenizer, n: int, num_classes: int, word: str) -> EncodedDataset:
    features = Features({"idx": Value("int64"), "text": Value("string"),
                         "label": ClassLabel(names=[f"c{i}" for i in range(num_classes)])})
    split = Dataset.from_dict(
        {"idx": list(range(n)), "text": [f"{word} " * (1 + i % 5) + str(i) for i in range(n)],
         "label": [i % num_classes for i in range(n)]},
        features=features,
    )
    return EncodedDataset(split, tokenizer, max_length=16)


def ids(batch_size: int = 3, length: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[0, 5:] = 0
    return {"input_ids": torch.randint(1000, 2000, (batch_size, length), generator=g), "attention_mask": mask}


# ---------------------------------------------------------------- the student
def test_each_head_starts_as_the_single_task_student(bert):
    multi = multitask_from_bert(bert, [0, 2], TASKS, seed=3).eval()
    x = ids()
    for task, c in TASKS.items():
        single = distilbert_from_bert(bert, [0, 2], num_labels=c, seed=3).eval()
        with torch.no_grad():
            expected = single(**x).logits
            got = multi(**x, task=task).logits
        assert got.shape == (3, c)
        assert torch.allclose(got, expected, atol=1e-6), task


def test_head_is_distilberts_formula(bert):
    single = distilbert_from_bert(bert, [1], num_labels=4, seed=0).eval()
    head = ClassificationHead.from_distilbert(single).eval()
    h = torch.randn(5, 32)
    expected = single.classifier(torch.clamp(single.pre_classifier(h), min=0))
    assert torch.allclose(head(h), expected) and head.num_labels == 4
    with pytest.raises(ValueError, match="DistilBertForSequenceClassification"):
        ClassificationHead.from_distilbert(nn.Linear(2, 2))


def test_forward_without_a_task_gives_every_head(bert):
    multi = multitask_from_bert(bert, [0, 3], TASKS).eval()
    with torch.no_grad():
        out = multi(**ids(), output_hidden_states=True)
        one = multi(**ids(), task="ag_news")
    assert out.logits is None and set(out.task_logits) == set(TASKS)
    assert {t: tuple(z.shape) for t, z in out.task_logits.items()} == {"sst2": (3, 2), "ag_news": (3, 4)}
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    assert list(one.task_logits) == ["ag_news"] and torch.allclose(one.logits, out.task_logits["ag_news"])
    assert multi.tasks == ["sst2", "ag_news"]


def test_unknown_task_and_bad_heads_are_rejected(bert):
    multi = multitask_from_bert(bert, [0], TASKS)
    with pytest.raises(ValueError, match=r"unknown task 'qnli'; this student has heads for \['sst2', 'ag_news'\]"):
        multi(**ids(), task="qnli")
    with pytest.raises(ValueError, match="unknown task"):
        multi.for_task("qnli")
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskStudent(multi.body, {})
    with pytest.raises(ValueError, match="must be a ClassificationHead"):
        MultiTaskStudent(multi.body, {"sst2": nn.Linear(32, 2)})
    wide = ClassificationHead(nn.Linear(64, 64), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="reads 64 features; the body gives 32"):
        MultiTaskStudent(multi.body, {"sst2": wide})
    with pytest.raises(ValueError, match="num_labels must map"):
        multitask_from_bert(bert, [0], {})


def test_task_view_works_with_the_library_evaluation(bert, tokenizer):
    multi = multitask_from_bert(bert, [0, 1], TASKS)
    data = encoded(tokenizer, 10, 4, "news")
    view = multi.for_task("ag_news")
    logits = predict_logits(view, data, batch_size=4)
    with torch.no_grad():
        batch = data.collate([data[i] for i in range(10)])
        expected = multi.eval()(batch["input_ids"], batch["attention_mask"], task="ag_news").logits
    assert logits.shape == (10, 4) and torch.allclose(logits, expected, atol=1e-5)
    expected_acc = (expected.argmax(-1) == torch.tensor(data.labels)).float().mean().item()
    assert evaluate_accuracy(view, data) == pytest.approx(expected_acc)


# ---------------------------------------------------------------- batches of two tasks
def test_shuffled_epoch_covers_every_row_of_every_task_once(tokenizer):
    data = MultiTaskData({"sst2": encoded(tokenizer, 10, 2, "film"), "ag_news": encoded(tokenizer, 7, 4, "news")})
    assert len(data) == 17
    batches = list(data.loader(4, shuffle=True, seed=5))
    assert len(batches) == len(data.loader(4, shuffle=True, seed=5)) == 3 + 2  # ceil(10/4) + ceil(7/4)
    seen = Counter()
    for b in batches:
        assert b["input_ids"].shape[0] == b["labels"].shape[0] <= 4
        seen.update((b["task"], r) for r in b["row"].tolist())
    assert seen == Counter([("sst2", r) for r in range(10)] + [("ag_news", r) for r in range(7)])
    # labels travel with their rows
    ag = data.datasets["ag_news"]
    for b in batches:
        if b["task"] == "ag_news":
            assert b["labels"].tolist() == [ag.labels[r] for r in b["row"].tolist()]


def test_order_is_seeded_and_unshuffled_order_is_tasks_in_turn(tokenizer):
    data = MultiTaskData({"sst2": encoded(tokenizer, 12, 2, "film"), "ag_news": encoded(tokenizer, 12, 4, "news")})

    def order(**kw):
        return [(b["task"], b["row"].tolist()) for b in data.loader(3, **kw)]

    assert order(shuffle=True, seed=1) == order(shuffle=True, seed=1)
    assert order(shuffle=True, seed=1) != order(shuffle=True, seed=2)
    plain = order()
    assert [t for t, _ in plain] == ["sst2"] * 4 + ["ag_news"] * 4
    assert [r for _, r in plain[:4]] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_multitask_data_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskData({})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        MultiTaskData({"sst2": encoded(tokenizer, 3, 2, "film")}).loader(0)


# ---------------------------------------------------------------- the loss and training
def test_multitask_kd_uses_the_batch_tasks_head_and_teacher(bert, tokenizer):
    multi = multitask_from_bert(bert, [0], TASKS).eval()
    sets = {"sst2": encoded(tokenizer, 6, 2, "film"), "ag_news": encoded(tokenizer, 6, 4, "news")}
    g = torch.Generator().manual_seed(1)
    teacher = {"sst2": torch.randn(6, 2, generator=g), "ag_news": torch.randn(6, 4, generator=g)}
    loss_fn = multitask_kd(teacher, temperature=3.0, alpha=0.25)
    for batch in MultiTaskData(sets).loader(4, shuffle=True, seed=0):
        with torch.no_grad():
            out = multi(batch["input_ids"], batch["attention_mask"])
        task = batch["task"]
        expected = distillation_loss(out.task_logits[task], teacher[task][batch["row"]], batch["labels"], 3.0, 0.25)
        assert torch.allclose(loss_fn(out, batch), expected)
    with pytest.raises(ValueError, match="batch of task 'qnli'"):
        loss_fn(out, {**batch, "task": "qnli"})
    with pytest.raises(ValueError, match="at least one task"):
        multitask_kd({})


def test_fit_trains_both_heads_and_leaves_frozen_embeddings_alone(bert, tokenizer):
    torch.manual_seed(0)
    multi = multitask_from_bert(bert, [0, 1], TASKS)
    share_frozen_embeddings([multi])
    before = {k: v.clone() for k, v in multi.state_dict().items()}
    sets = {"sst2": encoded(tokenizer, 8, 2, "film"), "ag_news": encoded(tokenizer, 8, 4, "news")}
    g = torch.Generator().manual_seed(2)
    teacher = {"sst2": torch.randn(8, 2, generator=g), "ag_news": torch.randn(8, 4, generator=g)}
    history = fit(multi, MultiTaskData(sets), multitask_kd(teacher), TrainSettings(epochs=2, lr=1e-3, batch_size=4),
                  progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history)))
    after = multi.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("heads.sst2.") for k in changed) and any(k.startswith("heads.ag_news.") for k in changed)
    assert any(k.startswith("body.transformer.") for k in changed)
    assert not any(k.startswith("body.embeddings.") for k in changed)


# ---------------------------------------------------------------- shared frozen embeddings and sizes
def embedding_params(model) -> int:
    return sum(p.numel() for p in model.distilbert.embeddings.parameters())


def test_sharing_frozen_embeddings_counts_the_table_once_and_changes_no_output(bert):
    a = distilbert_from_bert(bert, [0, 1], num_labels=2, seed=0).eval()
    b = distilbert_from_bert(bert, [2, 3], num_labels=4, seed=0).eval()
    x = ids()
    with torch.no_grad():
        before = (a(**x).logits, b(**x).logits)
    separate = count_params(a) + count_params(b)
    shared = share_frozen_embeddings([a, b])
    assert b.distilbert.embeddings is a.distilbert.embeddings is shared
    assert not any(p.requires_grad for p in shared.parameters())
    assert count_params(nn.ModuleList([a, b])) == separate - embedding_params(a)
    with torch.no_grad():
        assert torch.equal(a(**x).logits, before[0]) and torch.equal(b(**x).logits, before[1])


def test_a_two_head_student_and_two_half_depth_students_have_equal_size(bert):
    # the notebook's matching: a 4-layer two-head student against a 2-layer student per task,
    # all sharing one frozen embedding table
    multi = multitask_from_bert(bert, [0, 1, 2, 3], TASKS)
    singles = [distilbert_from_bert(bert, [0, 2], num_labels=c) for c in TASKS.values()]
    share_frozen_embeddings([multi])
    share_frozen_embeddings(singles)
    assert count_params(multi) == count_params(nn.ModuleList(singles))
    layer = sum(p.numel() for p in multi.body.transformer.layer[0].parameters())
    heads = sum(count_params(h) for h in multi.heads.values())
    assert count_params(multi) == embedding_params(singles[0]) + 4 * layer + heads


def test_sharing_refuses_different_embeddings_and_other_models(bert):
    a = distilbert_from_bert(bert, [0])
    b = distilbert_from_bert(bert, [0])
    with torch.no_grad():
        b.distilbert.embeddings.word_embeddings.weight[0] += 1
    with pytest.raises(ValueError, match="differ from the first model's"):
        share_frozen_embeddings([a, b])
    with pytest.raises(ValueError, match="has no DistilBERT embeddings"):
        share_frozen_embeddings([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="at least one model"):
        share_frozen_embeddings([])
