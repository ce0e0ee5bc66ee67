"""Tests for kd_lib.course.digits: the data split, the training loop (CE and KD) and offline logits."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from kd_lib.course.digits import (
    NUM_CLASSES,
    load_digits_split,
    load_tensor,
    mlp,
    mlp_logits,
    model_size,
    save_tensor,
    stratified_subset,
    train_classifier,
)
from kd_lib.evaluate import accuracy
from kd_lib.utils import set_seed


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These MLPs are tiny: one thread is faster than several (on a busy 2-core machine,
    thread synchronisation made the tests 50x slower), and it keeps the timing test fair."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- data ---------------------------------------------------------------------------------------


def test_split_sizes_dtypes_and_range(split):
    x_tr, y_tr, x_te, y_te = split
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert y_tr.shape == (1347,) and y_te.shape == (450,)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert set(y_tr.tolist()) == set(range(10)) == set(y_te.tolist())


def test_split_is_stratified_and_disjoint(split):
    x_tr, y_tr, x_te, y_te = split
    frac_tr = torch.bincount(y_tr, minlength=10) / len(y_tr)
    frac_te = torch.bincount(y_te, minlength=10) / len(y_te)
    assert torch.allclose(frac_tr, frac_te, atol=0.005)  # every class keeps its share
    # no test image is a training row (the digits set has no exact duplicates across the split)
    overlap = (torch.cdist(x_te, x_tr) == 0).any(dim=1).sum().item()
    assert overlap == 0


def test_split_is_fixed_by_seed(split):
    again = load_digits_split(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    other = load_digits_split(seed=1)
    assert not torch.equal(split[1], other[1])


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.25"])
def test_split_rejects_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(test_size=bad)


def test_stratified_subset(split):
    _, y_tr, _, _ = split
    idx = stratified_subset(y_tr, per_class=7, seed=3)
    assert idx.shape == (70,) and len(set(idx.tolist())) == 70
    assert torch.bincount(y_tr[idx], minlength=10).tolist() == [7] * 10
    assert torch.equal(idx, stratified_subset(y_tr, per_class=7, seed=3))
    assert not torch.equal(idx, stratified_subset(y_tr, per_class=7, seed=4))
    with pytest.raises(ValueError, match="smallest class"):
        stratified_subset(y_tr, per_class=10_000)


# --- models -------------------------------------------------------------------------------------


def test_mlp_shapes_and_size():
    model = mlp((64, 32, 10), dropout=0.1)
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert model_size(model) == (64 * 32 + 32 + 32 * 10 + 10, 4 * (64 * 32 + 32 + 32 * 10 + 10))
    assert sum(isinstance(m, torch.nn.Dropout) for m in model) == 1
    assert len(mlp((64, 10))) == 1  # logistic regression: a single Linear


@pytest.mark.parametrize("sizes", [(64,), (), (64, 0, 10), (64, 2.5, 10)])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        mlp(sizes)


def test_mlp_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        mlp((64, 10), dropout=1.0)


def test_accuracy_and_mlp_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    model = mlp((4, 8, 3), dropout=0.5).train()
    x = torch.randn(6, 4)
    out = mlp_logits(model, x)
    assert not model.training and not out.requires_grad
    assert torch.equal(out, mlp_logits(model, x))  # dropout is off in eval mode
    with pytest.raises(ValueError, match="rows"):  # kd_lib.evaluate.accuracy: logits and labels of different N
        accuracy(logits, torch.tensor([0, 1]))


# --- training -----------------------------------------------------------------------------------


def test_teacher_reaches_90_percent_quickly(split):
    x_tr, y_tr, x_te, y_te = split
    set_seed(0)
    teacher = mlp((64, 256, 10), dropout=0.1)
    start = time.perf_counter()
    train_classifier(teacher, x_tr, y_tr, epochs=8, lr=1e-3, batch_size=64, seed=0)
    assert time.perf_counter() - start < 15
    assert not teacher.training
    assert accuracy(mlp_logits(teacher, x_te), y_te) >= 0.9


def test_same_seed_same_weights_and_global_rng_untouched(split):
    x_tr, y_tr, _, _ = split
    set_seed(1)
    init = mlp((64, 16, 10), dropout=0.2)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_classifier(a, x_tr, y_tr, epochs=2, lr=1e-2, batch_size=128, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # shuffling + dropout use their own RNG
    train_classifier(b, x_tr, y_tr, epochs=2, lr=1e-2, batch_size=128, seed=7)
    assert _same_weights(a, b)
    c = copy.deepcopy(init)
    train_classifier(c, x_tr, y_tr, epochs=2, lr=1e-2, batch_size=128, seed=8)
    assert not _same_weights(a, c)


def test_alpha_zero_is_exactly_cross_entropy(split):
    x_tr, y_tr, _, _ = split
    set_seed(2)
    init = mlp((64, 16, 10))
    ce, kd = copy.deepcopy(init), copy.deepcopy(init)
    train_classifier(ce, x_tr, y_tr, epochs=2, lr=1e-2, batch_size=64, seed=0)
    noise = torch.randn(len(x_tr), NUM_CLASSES) * 5  # any teacher: its weight is zero
    train_classifier(kd, x_tr, y_tr, epochs=2, lr=1e-2, batch_size=64, seed=0,
                     teacher_logits=noise, temperature=4.0, alpha=0.0)
    assert _same_weights(ce, kd)


def test_kd_uses_teacher_logits_aligned_with_rows(split):
    """alpha=1 ignores the labels: the student can only learn the classes through the teacher.

    A "teacher" whose logits are a large multiple of the one-hot labels teaches the labels --
    but only if row i of teacher_logits is used with row i of X after shuffling. The same
    logits with their rows shuffled teach noise.
    """
    x_tr, y_tr, x_te, y_te = split
    aligned = F.one_hot(y_tr, NUM_CLASSES).float() * 10.0
    wrong_labels = torch.zeros_like(y_tr)  # unused at alpha=1; proves the labels play no part
    set_seed(3)
    init = mlp((64, 32, 10))
    good, bad = copy.deepcopy(init), copy.deepcopy(init)
    kwargs = dict(epochs=6, lr=1e-2, batch_size=64, seed=0, temperature=1.0, alpha=1.0)
    train_classifier(good, x_tr, wrong_labels, teacher_logits=aligned, **kwargs)
    perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))
    train_classifier(bad, x_tr, wrong_labels, teacher_logits=aligned[perm], **kwargs)
    assert accuracy(mlp_logits(good, x_te), y_te) >= 0.9
    assert accuracy(mlp_logits(bad, x_te), y_te) <= 0.3


def test_train_classifier_validates_arguments(split):
    x_tr, y_tr, _, _ = split
    model = mlp((64, 8, 10))
    before = _weights(model)
    kwargs = dict(epochs=1, lr=1e-2, batch_size=64, seed=0)
    with pytest.raises(ValueError, match="one row per training example"):
        train_classifier(model, x_tr, y_tr, teacher_logits=torch.zeros(len(x_tr) - 1, 10), **kwargs)
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        train_classifier(model, x_tr, y_tr, teacher_logits=torch.zeros(len(x_tr)), **kwargs)
    with pytest.raises(ValueError, match="same number of rows"):
        train_classifier(model, x_tr, y_tr[:-1], **kwargs)
    with pytest.raises(ValueError, match="temperature"):
        train_classifier(model, x_tr, y_tr, teacher_logits=torch.zeros(len(x_tr), 10), temperature=0, **kwargs)
    with pytest.raises(ValueError, match="alpha"):
        train_classifier(model, x_tr, y_tr, teacher_logits=torch.zeros(len(x_tr), 10), alpha=1.5, **kwargs)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(model, x_tr, y_tr, **{**kwargs, "epochs": 0})
    with pytest.raises(ValueError, match="lr"):
        train_classifier(model, x_tr, y_tr, **{**kwargs, "lr": -1.0})
    with pytest.raises(ValueError, match="y must be"):
        train_classifier(model, x_tr, y_tr.float(), **kwargs)
    # every check runs before the first step: the weights are untouched
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


# --- offline logits -----------------------------------------------------------------------------


def test_logits_roundtrip_exactly(tmp_path, split):
    x_tr, _, _, _ = split
    set_seed(4)
    teacher = mlp((64, 32, 10), dropout=0.5)
    logits = mlp_logits(teacher, x_tr)
    path = save_tensor(tmp_path / "sub" / "teacher_logits.safetensors", logits)
    assert path.exists() and not list(path.parent.glob("*.tmp"))  # no temporary file left
    loaded = load_tensor(path)
    assert loaded.dtype == logits.dtype and torch.equal(loaded, logits)
    save_tensor(path, logits * 2)  # overwriting replaces the file
    assert torch.equal(load_tensor(path), logits * 2)


def test_load_tensor_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="logits"):
        load_tensor(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="floating-point"):
        save_tensor(tmp_path / "x.safetensors", torch.zeros(2, dtype=torch.int64))
