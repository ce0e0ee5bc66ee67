"""kd_lib.transfer: the labelled/transfer split, withheld labels, and the mixed loss (real values)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Value

from kd_lib.data import EncodedDataset
from kd_lib.losses import distillation_loss, kd_loss
from kd_lib.models import packaged_teacher_path
from kd_lib.training import ForwardNeeds, needs_of
from kd_lib.transfer import WITHHELD, few_label_dataset, kd_with_transfer, labelled_transfer_split, transfer_loss

LN3 = math.log(3.0)
# teacher [ln 3, 0] -> p_t = (3/4, 1/4); student [0, 0] -> p_s = (1/2, 1/2)
KL = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.1308...
CE0 = math.log(2.0)  # cross-entropy of a uniform 2-class prediction


def pool(n: int = 10) -> Dataset:
    features = Features({"idx": Value("int64"), "text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    return Dataset.from_dict(
        {"idx": [100 + i for i in range(n)], "text": [f"sentence {i}" for i in range(n)],
         "label": [i % 2 for i in range(n)]},
        features=features,
    )


# ---------------------------------------------------------------- the split
def test_split_is_disjoint_sized_sorted_and_seeded():
    lab, tr = labelled_transfer_split(50, 7, 20, seed=3)
    assert (len(lab), len(tr)) == (7, 20)
    assert not set(lab) & set(tr)
    assert lab == sorted(lab) and tr == sorted(tr)
    assert all(0 <= i < 50 for i in lab + tr)
    assert labelled_transfer_split(50, 7, 20, seed=3) == (lab, tr)
    assert labelled_transfer_split(50, 7, 20, seed=4) != (lab, tr)


def test_split_default_transfer_is_the_rest():
    lab, tr = labelled_transfer_split(12, 5, seed=0)
    assert sorted(lab + tr) == list(range(12))
    lab, tr = labelled_transfer_split(12, 12, seed=0)
    assert (lab, tr) == (list(range(12)), [])


def test_labelled_sets_of_one_seed_are_nested():
    # one permutation per seed: a larger labelled set extends a smaller one (a learning curve
    # then adds labels instead of redrawing them)
    small, _ = labelled_transfer_split(30, 3, 10, seed=1)
    large, _ = labelled_transfer_split(30, 9, 10, seed=1)
    assert set(small) <= set(large)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 0), "n_labelled must be an integer >= 1"),
        ((10, 3, -1), "n_transfer must be an integer >= 0"),
        ((10, 6, 5), "exceeds the 10 examples"),
        ((0, 1), "n_examples must be an integer >= 1"),
        ((10, 2.5), "n_labelled must be an integer"),
        ((10, True), "n_labelled must be an integer"),
    ],
)
def test_split_rejects_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        labelled_transfer_split(*args)


# ---------------------------------------------------------------- the dataset
def test_few_label_dataset_withholds_transfer_labels_and_keeps_ids():
    data = pool(10)
    out = few_label_dataset(data, [1, 4], [0, 7, 8])
    assert out["idx"] == [101, 104, 100, 107, 108]
    assert out["text"] == ["sentence 1", "sentence 4", "sentence 0", "sentence 7", "sentence 8"]
    assert list(out["label"]) == [1, 0, WITHHELD, WITHHELD, WITHHELD]
    assert out.features == data.features
    labelled_only = few_label_dataset(data, [2, 3])
    assert list(labelled_only["label"]) == [0, 1]


@pytest.mark.parametrize(
    ("lab", "tr", "message"),
    [
        ([1, 2], [2, 3], r"rows \[2\] are both labelled and transfer rows"),
        ([1, 1], [], "a row is listed twice"),
        ([], [1], "labelled_rows is empty"),
        ([1], [10], "outside the split's 10 rows"),
        ([-1], [], "outside the split's 10 rows"),
    ],
)
def test_few_label_dataset_rejects_bad_rows(lab, tr, message):
    with pytest.raises(ValueError, match=message):
        few_label_dataset(pool(10), lab, tr)


def test_withheld_label_cannot_be_trained_on_by_accident():
    logits = torch.zeros(2, 2)
    labels = torch.tensor([0, WITHHELD])
    with pytest.raises((IndexError, RuntimeError)):
        F.cross_entropy(logits, labels)  # plain CE refuses the "no label" value
    with pytest.raises(ValueError, match="labels must be in the range"):
        distillation_loss(logits, logits, labels)


# ---------------------------------------------------------------- the loss, on hand-computed values
def test_transfer_loss_values_by_hand():
    student = torch.zeros(2, 2, dtype=torch.float64)
    teacher = torch.tensor([[LN3, 0.0], [LN3, 0.0]], dtype=torch.float64)
    # one labelled row (label 0), one transfer row, T = 1, alpha = 0.5:
    # labelled: 0.5 * KL + 0.5 * ln 2, transfer: KL; mean over the 2 rows
    got = transfer_loss(student, teacher, torch.tensor([0, WITHHELD]), temperature=1.0, alpha=0.5)
    assert got.item() == pytest.approx((0.5 * KL + 0.5 * CE0 + KL) / 2, rel=1e-12)
    # T = 2 with teacher logits doubled gives the same p_t; the soft term gets the factor T^2 = 4
    got = transfer_loss(student, 2 * teacher, torch.tensor([1, WITHHELD]), temperature=2.0, alpha=0.25)
    assert got.item() == pytest.approx((0.25 * 4 * KL + 0.75 * CE0 + 4 * KL) / 2, rel=1e-12)


def test_transfer_loss_reduces_to_the_known_losses():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    # no transfer rows: exactly distillation_loss; only transfer rows: exactly kd_loss
    torch.testing.assert_close(transfer_loss(s, t, y, 3.0, 0.7), distillation_loss(s, t, y, 3.0, 0.7))
    torch.testing.assert_close(transfer_loss(s, t, torch.full((6,), WITHHELD), 3.0, 0.7), kd_loss(s, t, 3.0))
    # mixed: the row-weighted mean of the two, whatever the order of the rows
    y_mixed = torch.tensor([0, WITHHELD, 1, WITHHELD, WITHHELD, 2])
    lab = y_mixed != WITHHELD
    expected = (3 * distillation_loss(s[lab], t[lab], y_mixed[lab], 3.0, 0.7) + 3 * kd_loss(s[~lab], t[~lab], 3.0)) / 6
    torch.testing.assert_close(transfer_loss(s, t, y_mixed, 3.0, 0.7), expected)
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    torch.testing.assert_close(transfer_loss(s[perm], t[perm], y_mixed[perm], 3.0, 0.7), expected)


def test_transfer_rows_ignore_alpha_and_labelled_rows_with_alpha_zero_are_ce():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    y = torch.tensor([1, 0, WITHHELD, WITHHELD])
    a = transfer_loss(s, t, y, 2.0, 0.0)
    expected = (2 * F.cross_entropy(s[:2], y[:2]) + 2 * kd_loss(s[2:], t[2:], 2.0)) / 4
    torch.testing.assert_close(a, expected)


def test_transfer_loss_gradient_reaches_only_the_student():
    s = torch.zeros(2, 2, requires_grad=True)
    t = torch.tensor([[LN3, 0.0], [0.0, LN3]], requires_grad=True)
    transfer_loss(s, t, torch.tensor([WITHHELD, WITHHELD]), temperature=1.0).backward()
    assert t.grad is None
    # d/dz_s of mean KL = (p_s - p_t) / B  at T = 1
    expected = torch.tensor([[0.5 - 0.75, 0.5 - 0.25], [0.5 - 0.25, 0.5 - 0.75]]) / 2
    torch.testing.assert_close(s.grad, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.tensor([0, 2])}, r"labels must be in \[0, 1\] or WITHHELD"),
        ({"labels": torch.tensor([0, -100])}, r"got -100"),
        ({"labels": torch.tensor([0.0, 1.0])}, "integer tensor of shape"),
        ({"labels": torch.tensor([0])}, "integer tensor of shape"),
        ({"teacher": torch.zeros(2, 3)}, "same shape"),
        ({"student": torch.zeros(2, 2, 2)}, r"shape \[B, C\]"),
        ({"temperature": 0.0}, "temperature must be"),
        ({"alpha": 1.5}, "alpha must be"),
    ],
)
def test_transfer_loss_rejects_bad_arguments(kwargs, message):
    args = {"student": torch.zeros(2, 2), "teacher": torch.zeros(2, 2), "labels": torch.tensor([0, WITHHELD]),
            "temperature": 2.0, "alpha": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        transfer_loss(args["student"], args["teacher"], args["labels"], args["temperature"], args["alpha"])


# ---------------------------------------------------------------- with cached logits and a shuffled loader
def test_kd_with_transfer_looks_up_cached_logits_by_row():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    data = pool(10)
    lab, tr = labelled_transfer_split(len(data), 3, 5, seed=0)
    mixed = few_label_dataset(data, lab, tr)
    pool_logits = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    cached = pool_logits[torch.tensor(lab + tr)]  # aligned with the rows of `mixed`
    encoded = EncodedDataset(mixed, tokenizer, max_length=16)
    loss_fn = kd_with_transfer(cached, temperature=2.0, alpha=0.5)
    assert needs_of(loss_fn) == ForwardNeeds()
    batch = next(iter(encoded.loader(4, shuffle=True, seed=5)))
    student_logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    # the teacher rows are found through the sentence ids, independently of the loader's order
    pool_pos = {i: p for p, i in enumerate(data["idx"])}
    teacher_rows = pool_logits[[pool_pos[mixed["idx"][r]] for r in batch["row"].tolist()]]
    expected = transfer_loss(student_logits, teacher_rows, batch["labels"], 2.0, 0.5)
    torch.testing.assert_close(loss_fn(SimpleNamespace(logits=student_logits), batch), expected)
    assert set(batch["labels"].tolist()) <= {0, 1, WITHHELD}


def test_kd_with_transfer_validates_its_arguments():
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        kd_with_transfer(torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        kd_with_transfer(torch.zeros(3, 2), temperature=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        kd_with_transfer(torch.zeros(3, 2), alpha=2)
