"""Tests for kd_lib.course.digits: the data split, the MLPs and CNNs, the training loop (CE and KD),
offline logits and the paired interval."""

from __future__ import annotations

import copy
import itertools
import time

import pytest
import torch
import torch.nn.functional as F

from kd_lib.course.digits import (
    NUM_CLASSES,
    ResidualBlock,
    load_digits_split,
    load_tensor,
    mlp,
    mlp_logits,
    mobilenet_student,
    model_size,
    multiply_adds,
    paired_interval,
    residual_cnn,
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


# --- image models: a residual CNN teacher and a MobileNet-style student -------------------------


def _resnet_params(widths: tuple[int, ...], classes: int = 10) -> int:
    """Hand count: convs have no bias (BatchNorm follows), every BatchNorm has 2 weights per channel."""
    total = 9 * widths[0] + 2 * widths[0]  # stem: 3x3 conv 1 -> w0, BN
    for c_in, c_out in itertools.pairwise(widths):
        total += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out  # two 3x3 convs + BNs
        if c_in != c_out:
            total += c_in * c_out + 2 * c_out  # 1x1 projection shortcut + BN
    return total + widths[-1] * classes + classes  # linear head


def _mobilenet_params(widths: tuple[int, ...], classes: int = 10) -> int:
    total = 9 * widths[0] + 2 * widths[0]  # stem
    for c_in, c_out in itertools.pairwise(widths):
        total += 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out  # depthwise 3x3 + BN, pointwise 1x1 + BN
    return total + widths[-1] * classes + classes


def _mobilenet_macs(widths: tuple[int, ...], classes: int = 10) -> int:
    side = 8
    total = 9 * widths[0] * side * side  # stem at 8 x 8
    for c_in, c_out in itertools.pairwise(widths):
        if c_in != c_out:
            side = (side + 1) // 2  # stride 2 in the depthwise conv
        total += 9 * c_in * side * side + c_in * c_out * side * side
    return total + widths[-1] * classes


@pytest.mark.parametrize("widths", [(16, 16, 32, 32), (8, 16), (4, 4, 4)])
def test_residual_cnn_shapes_and_parameter_count(widths):
    model = residual_cnn(widths, num_classes=7)
    assert model(torch.zeros(5, 64)).shape == (5, 7)  # flattened pixels in, logits out
    assert model_size(model)[0] == _resnet_params(widths, classes=7)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == len(widths) - 1
    for block, (c_in, c_out) in zip(blocks, itertools.pairwise(widths), strict=True):
        projection = c_in != c_out
        assert isinstance(block.shortcut, torch.nn.Identity) != projection
        if projection:
            assert block.shortcut[0].kernel_size == (1, 1) and block.shortcut[0].stride == (2, 2)


def test_residual_block_adds_the_shortcut():
    block = ResidualBlock(3, 3).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(block.body(x) + x))
        for p in block.body.parameters():
            p.zero_()  # conv weights and BN scales zero: only the shortcut is left
        assert torch.equal(block(x), F.relu(x))
    down = ResidualBlock(3, 6, stride=2)
    assert down(torch.randn(2, 3, 8, 8)).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("widths", [(8, 16, 32), (4, 4), (6, 12, 12)])
def test_mobilenet_student_is_depthwise_separable(widths):
    model = mobilenet_student(widths)
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    assert model_size(model)[0] == _mobilenet_params(widths)
    assert multiply_adds(model) == _mobilenet_macs(widths)
    blocks = [m for m in model.modules() if hasattr(m, "depthwise")]
    assert len(blocks) == len(widths) - 1
    for block, (c_in, c_out) in zip(blocks, itertools.pairwise(widths), strict=True):
        dw, pw = block.depthwise, block.pointwise
        assert dw.groups == dw.in_channels == dw.out_channels == c_in and dw.kernel_size == (3, 3)
        assert dw.weight.shape == (c_in, 1, 3, 3)  # one 3x3 filter per channel
        assert pw.groups == 1 and pw.kernel_size == (1, 1) and (pw.in_channels, pw.out_channels) == (c_in, c_out)
    # every 3x3 conv after the stem is depthwise: the student has no dense 3x3 conv but the first
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    dense_3x3 = [m for m in convs if m.kernel_size == (3, 3) and m.groups == 1]
    assert len(dense_3x3) == 1 and dense_3x3[0].in_channels == 1


def test_multiply_adds_hand_counts():
    assert multiply_adds(mlp((64, 32, 10))) == 64 * 32 + 32 * 10
    # residual CNN (4, 8): stem 9*4 per pixel at 8x8; block 4 -> 8 at 4x4: 3x3 4->8, 3x3 8->8, 1x1 4->8
    expected = 9 * 4 * 64 + (9 * 4 * 8 + 9 * 8 * 8 + 4 * 8) * 16 + 8 * 10
    model = residual_cnn((4, 8)).train()
    assert multiply_adds(model) == expected
    assert model.training  # the count leaves the mode as it found it


def test_teacher_is_much_bigger_than_student():
    teacher, student = residual_cnn(), mobilenet_student()
    assert model_size(teacher)[0] > 20 * model_size(student)[0]
    assert multiply_adds(teacher) > 50 * multiply_adds(student)


def test_cnns_are_deterministic_under_a_seed_and_train(split):
    x_tr, y_tr, _, _ = split
    rows = stratified_subset(y_tr, per_class=20, seed=0)
    x, y = x_tr[rows], y_tr[rows]
    for make in (residual_cnn, mobilenet_student):
        set_seed(5)
        a = make((4, 8) if make is residual_cnn else (4, 8, 16))
        set_seed(5)
        b = make((4, 8) if make is residual_cnn else (4, 8, 16))
        assert _same_weights(a, b)
        before = F.cross_entropy(mlp_logits(a, x), y).item()
        kwargs = dict(epochs=10, lr=1e-2, batch_size=32, seed=1)  # 70 steps
        train_classifier(a, x, y, **kwargs)
        train_classifier(b, x, y, **kwargs)
        assert _same_weights(a, b)
        assert all(torch.equal(p, q) for p, q in zip(a.buffers(), b.buffers(), strict=True))  # BN statistics
        after = F.cross_entropy(mlp_logits(a, x), y).item()
        assert after < 0.6 * before, (make.__name__, before, after)  # from ln 10 = 2.3 to about 1


def test_cnn_kd_and_logits_contract(split):
    """The CNNs plug into the offline-logits path unchanged: eval-mode logits are per-row."""
    x_tr, y_tr, _, _ = split
    set_seed(6)
    teacher = residual_cnn((4, 8)).train()
    logits = mlp_logits(teacher, x_tr[:50])
    assert not teacher.training and logits.shape == (50, 10)
    assert torch.allclose(mlp_logits(teacher, x_tr[:7]), logits[:7], atol=1e-6)  # no batch dependence
    set_seed(7)
    student = mobilenet_student((4, 8))
    train_classifier(student, x_tr[:50], y_tr[:50], epochs=1, lr=1e-2, batch_size=16, seed=0,
                     teacher_logits=logits, temperature=4.0, alpha=0.75)


@pytest.mark.parametrize("make", [residual_cnn, mobilenet_student])
@pytest.mark.parametrize("bad", [(16,), (), (8, 0), (8, 2.5), "16", (8, 16, 32, 64)])
def test_cnns_reject_bad_widths(make, bad):
    with pytest.raises(ValueError, match=r"widths.*e\.g\. \("):  # names the argument and shows a good value
        make(bad)


def test_cnns_reject_bad_num_classes_and_input():
    with pytest.raises(ValueError, match="num_classes"):
        residual_cnn(num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        mobilenet_student(num_classes=True)
    with pytest.raises(RuntimeError):  # not 64 pixels per row: the reshape to 1 x 8 x 8 fails loudly
        mobilenet_student()(torch.zeros(2, 63))


def test_paired_interval_matches_scipy():
    from scipy.stats import ttest_rel

    a = [0.95, 0.93, 0.96, 0.94, 0.97]
    b = [0.92, 0.93, 0.94, 0.90, 0.95]
    mean, low, high = paired_interval(a, b)
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(sum(a) / 5 - sum(b) / 5)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    narrow = paired_interval(a, b, confidence=0.5)
    assert low < narrow[1] < narrow[2] < high
    with pytest.raises(ValueError, match="one value per seed"):
        paired_interval(a, b[:4])
    with pytest.raises(ValueError, match="at least 2"):
        paired_interval([0.9], [0.8])
    with pytest.raises(ValueError, match="confidence"):
        paired_interval(a, b, confidence=95)
