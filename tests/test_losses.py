"""kd_lib.losses against independent float64 formulas, committed fixtures and properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kd_lib.losses import distillation_loss, kd_loss, softmax_t

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "losses.json").read_text())


# ---------------------------------------------------------------- independent references
def ref_softmax(z: np.ndarray, temp: float) -> np.ndarray:
    """Softmax written out element by element in float64 (no shared code with kd_lib)."""
    z = np.asarray(z, dtype=np.float64) / temp
    out = np.empty_like(z)
    for idx in np.ndindex(z.shape[:-1]):
        row = z[idx]
        e = np.exp(row - row.max())
        out[idx] = e / e.sum()
    return out


def ref_kd(s: np.ndarray, t: np.ndarray, temp: float, mask: np.ndarray | None = None) -> float:
    """T² · mean over examples (or unmasked positions) of Σ_c p_t log(p_t / p_s)."""
    p_s, p_t = ref_softmax(s, temp), ref_softmax(t, temp)
    kls = []
    for idx in np.ndindex(p_s.shape[:-1]):
        if mask is not None and not mask[idx]:
            continue
        kls.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t[idx], p_s[idx], strict=True) if pt > 0))
    return temp**2 * float(np.mean(kls))


def ref_ce(s: np.ndarray, y: np.ndarray) -> float:
    p = ref_softmax(s, 1.0)
    return float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- against the formulas
@pytest.mark.parametrize("temp", [0.5, 1.0, 2.0, 5.0, 20.0])
def test_softmax_t_matches_reference(temp):
    z = np.random.default_rng(0).normal(0, 4, size=(6, 5))
    got = softmax_t(t64(z), temp).numpy()
    np.testing.assert_allclose(got, ref_softmax(z, temp), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("shape", [(4, 2), (7, 3), (3, 10)])
def test_kd_loss_matches_reference(temp, shape):
    rng = np.random.default_rng(hash((temp, shape)) % 2**32)
    s, t = rng.normal(0, 3, size=shape), rng.normal(0, 3, size=shape)
    got = kd_loss(t64(s), t64(t), temperature=temp).item()
    assert got == pytest.approx(ref_kd(s, t, temp), rel=1e-10)


def test_kd_loss_equals_kldivloss_batchmean_times_t2():
    """The loss is exactly PyTorch's KLDivLoss(batchmean) on log-probs vs probs, times T²."""
    torch.manual_seed(0)
    s, t, temp = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64), 3.0
    kl = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1))
    assert kd_loss(s, t, temp).item() == pytest.approx(kl.item() * temp**2, rel=1e-12)
    # and reduction="mean" would be C times smaller: the classic bug
    with pytest.warns(UserWarning, match="batchmean"):  # PyTorch itself warns about "mean"
        wrong = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1))
    assert kd_loss(s, t, temp).item() == pytest.approx(wrong.item() * temp**2 * 5, rel=1e-12)


def test_kd_loss_token_level_mask_matches_reference():
    rng = np.random.default_rng(1)
    s, t = rng.normal(0, 2, size=(3, 6, 9)), rng.normal(0, 2, size=(3, 6, 9))
    mask = np.array([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2])
    got = kd_loss(t64(s), t64(t), 2.0, mask=torch.tensor(mask)).item()
    assert got == pytest.approx(ref_kd(s, t, 2.0, mask), rel=1e-10)
    # padding positions must not matter: change them wildly, the loss stays the same
    s2 = s.copy()
    s2[mask == 0] = 1e3 * rng.normal(size=s2[mask == 0].shape)
    assert kd_loss(t64(s2), t64(t), 2.0, mask=torch.tensor(mask)).item() == pytest.approx(got, rel=1e-12)
    # without a mask every position counts
    assert kd_loss(t64(s), t64(t), 2.0).item() == pytest.approx(ref_kd(s, t, 2.0), rel=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_matches_reference(alpha):
    rng = np.random.default_rng(2)
    s, t = rng.normal(0, 2, size=(6, 4)), rng.normal(0, 2, size=(6, 4))
    y = rng.integers(0, 4, size=6)
    got = distillation_loss(t64(s), t64(t), torch.tensor(y), temperature=3.0, alpha=alpha).item()
    want = alpha * ref_kd(s, t, 3.0) + (1 - alpha) * ref_ce(s, y)
    assert got == pytest.approx(want, rel=1e-10)


def test_distillation_loss_token_level_ignores_minus_100():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5))
    y = np.array([[1, 2, -100, -100], [0, 4, 3, -100]])
    mask = y != -100
    got = distillation_loss(t64(s), t64(t), torch.tensor(y), temperature=2.0, alpha=0.5).item()
    ce = ref_ce(s[mask], y[mask])
    assert got == pytest.approx(0.5 * ref_kd(s, t, 2.0, mask) + 0.5 * ce, rel=1e-10)


# ---------------------------------------------------------------- against committed fixtures
@pytest.mark.parametrize("case", FIXTURES["classification"], ids=lambda c: c["id"])
def test_against_fixture(case):
    s, t = t64(case["student"]), t64(case["teacher"])
    y, temp, alpha = torch.tensor(case["labels"]), case["temperature"], case["alpha"]
    np.testing.assert_allclose(softmax_t(s, temp).numpy(), case["softmax_t_student"], rtol=1e-10)
    assert kd_loss(s, t, temp).item() == pytest.approx(case["kd_loss"], rel=1e-10)
    assert distillation_loss(s, t, y, temp, alpha).item() == pytest.approx(case["distillation_loss"], rel=1e-10)
    # float32 (what training uses) agrees to single precision
    assert kd_loss(s.float(), t.float(), temp).item() == pytest.approx(case["kd_loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("case", FIXTURES["token_level"], ids=lambda c: c["id"])
def test_against_token_fixture(case):
    s, t, mask = t64(case["student"]), t64(case["teacher"]), torch.tensor(case["mask"])
    assert kd_loss(s, t, case["temperature"], mask=mask).item() == pytest.approx(case["kd_loss_masked"], rel=1e-10)
    assert kd_loss(s, t, case["temperature"]).item() == pytest.approx(case["kd_loss_unmasked"], rel=1e-10)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("temp", [1.0, 2.0, 8.0])
def test_gradient_is_t_times_prob_difference_over_b(temp):
    torch.manual_seed(4)
    s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    kd_loss(s, t, temp).backward()
    want = temp * (F.softmax(s / temp, -1) - F.softmax(t / temp, -1)) / s.shape[0]
    torch.testing.assert_close(s.grad, want.detach(), rtol=1e-10, atol=1e-12)
    assert t.grad is None, "gradient must not flow into the teacher"


def test_teacher_never_receives_gradient_through_distillation_loss():
    teacher = torch.nn.Linear(4, 3)
    student = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4)
    loss = distillation_loss(student(x), teacher(x), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert teacher.weight.grad is None
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- properties
finite = st.floats(-30, 30, allow_nan=False, width=64)
temps = st.floats(0.1, 50, allow_nan=False)


@st.composite
def logit_pairs(draw):
    b, c = draw(st.integers(1, 6)), draw(st.integers(2, 8))
    s = draw(arrays(np.float64, (b, c), elements=finite))
    t = draw(arrays(np.float64, (b, c), elements=finite))
    return s, t


@settings(max_examples=150, deadline=None)
@given(logit_pairs(), temps)
def test_kd_loss_non_negative(pair, temp):
    s, t = pair
    assert kd_loss(t64(s), t64(t), temp).item() >= -1e-9


@settings(max_examples=100, deadline=None)
@given(logit_pairs(), temps, arrays(np.float64, (6,), elements=finite))
def test_zero_iff_same_distribution(pair, temp, shifts):
    s, _ = pair
    # same logits, or logits that differ by a per-row constant: identical distributions
    shifted = s + shifts[: s.shape[0], None]
    assert kd_loss(t64(s), t64(shifted), temp).item() == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(logit_pairs(), temps)
def test_positive_when_distributions_differ(pair, temp):
    s, t = pair
    p_s, p_t = ref_softmax(s, temp), ref_softmax(t, temp)
    if np.abs(p_s - p_t).max() > 1e-3:
        assert kd_loss(t64(s), t64(t), temp).item() > 0


@settings(max_examples=100, deadline=None)
@given(logit_pairs(), temps, st.floats(-100, 100, allow_nan=False), st.floats(-100, 100, allow_nan=False))
def test_invariant_to_constant_added_to_rows(pair, temp, a, b):
    s, t = pair
    base = kd_loss(t64(s), t64(t), temp).item()
    assert kd_loss(t64(s + a), t64(t + b), temp).item() == pytest.approx(base, rel=1e-7, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(logit_pairs(), temps)
def test_gradient_property(pair, temp):
    s, t = pair
    s_t = t64(s).requires_grad_(True)
    kd_loss(s_t, t64(t), temp).backward()
    want = temp * (ref_softmax(s, temp) - ref_softmax(t, temp)) / s.shape[0]
    np.testing.assert_allclose(s_t.grad.numpy(), want, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", None, True])
def test_bad_temperature(bad):
    s = torch.randn(2, 3)
    for fn in (lambda: kd_loss(s, s, bad), lambda: softmax_t(s, bad),
               lambda: distillation_loss(s, s, torch.tensor([0, 1]), temperature=bad)):
        with pytest.raises(ValueError, match="temperature") as info:
            fn()
        assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_alpha(bad):
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"alpha.*\[0, 1\]"):
        distillation_loss(s, s, torch.tensor([0, 1]), alpha=bad)


def test_shape_mismatch_names_the_arguments():
    with pytest.raises(ValueError, match=r"student_logits and teacher_logits.*\(4, 3\).*\(4, 5\).*vocabulary"):
        kd_loss(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\[B, C\] or \[B, L, C\]"):
        kd_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="floating-point"):
        kd_loss(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))


def test_bad_labels():
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"labels must be in the range \[0, 3\].*got 4"):
        distillation_loss(s, s, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must be in the range.*got -1"):
        distillation_loss(s, s, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        distillation_loss(s, s, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        distillation_loss(s, s, torch.tensor([0.0, 1.0, 1.0]))


def test_bad_mask():
    s = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask must be a tensor of shape \[B, L\]"):
        kd_loss(s, s, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="selects no position"):
        kd_loss(s, s, mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"only for token-level"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), mask=torch.ones(2))


# ---------------------------------------------------------------- extreme inputs (issue 14)
@pytest.mark.parametrize("temp, message", [(1e6, "too high"), (1e30, "too high"), (1e200, "too high"),
                                           (150.0, "too high"), (1e-200, "too low"), (0.001, "too low")])
def test_kd_temperature_is_bounded_and_the_message_says_why(temp, message):
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    for fn in (lambda: kd_loss(s, t, temp), lambda: distillation_loss(s, t, y, temperature=temp)):
        with pytest.raises(ValueError, match=message) as info:
            fn()
        assert "rounding" in str(info.value) or "alpha = 0" in str(info.value)
    softmax_t(s, temp)  # a softmax alone is fine at any positive temperature (notebook 01 explores 1e4)


def test_kd_loss_is_accurate_across_the_allowed_range():
    """float32 within 1e-3 (relative) of float64 at both ends of KD_TEMPERATURE_RANGE; float64 allows up to 1e4."""
    from kd_lib.losses import KD_TEMPERATURE_MAX_FLOAT64, KD_TEMPERATURE_RANGE, check_temperature

    torch.manual_seed(0)
    s, t = 3 * torch.randn(8, 1000, dtype=torch.float64), 3 * torch.randn(8, 1000, dtype=torch.float64)
    for temp in KD_TEMPERATURE_RANGE:
        exact = kd_loss(s, t, temp).item()
        assert kd_loss(s.float(), t.float(), temp).item() == pytest.approx(exact, rel=1e-3)
    assert torch.isfinite(kd_loss(s, t, KD_TEMPERATURE_MAX_FLOAT64))
    assert check_temperature(150.0) == 150.0  # the bound is for KD losses only
    with pytest.raises(ValueError, match=r"--temperature 1e\+200 is too high"):
        check_temperature(1e200, "--temperature", kd=True)


def test_a_teacher_logit_of_minus_infinity_is_a_class_with_no_mass():
    """A masked class (-inf) contributes nothing: the loss is the float64 KL over the teacher's support."""
    t = torch.tensor([[1.0, -math.inf, 0.5, 2.0], [-math.inf, 0.2, 0.3, -math.inf]], dtype=torch.float64)
    s = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    loss = kd_loss(s, t, 2.0)
    p_t, log_p_s = torch.softmax(t / 2, -1), torch.log_softmax(s.detach() / 2, -1)
    support = p_t > 0
    want = 4 * (p_t[support] * (p_t[support].log() - log_p_s[support])).sum() / 2
    assert torch.isfinite(loss) and loss.item() == pytest.approx(want.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, s)
    np.testing.assert_allclose(grad.numpy(), (2.0 * (torch.softmax(s.detach() / 2, -1) - p_t) / 2).numpy(), atol=1e-12)
    y = torch.tensor([0, 1])
    assert torch.isfinite(distillation_loss(s.float(), t.float(), y, 2.0, 0.5))


def test_an_empty_batch_is_refused_by_both_losses():
    empty = torch.randn(0, 3)
    for fn in (lambda: kd_loss(empty, empty), lambda: distillation_loss(empty, empty, torch.zeros(0, dtype=torch.long)),
               lambda: kd_loss(torch.randn(2, 0, 3), torch.randn(2, 0, 3))):
        with pytest.raises(ValueError, match="the batch is empty"):
            fn()
    with pytest.raises(ValueError, match="selects no position"):  # the all-zero mask: also a ValueError
        kd_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), mask=torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64])
def test_any_integer_label_dtype_is_accepted(dtype):
    torch.manual_seed(1)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    want = distillation_loss(s, t, labels)
    assert torch.equal(distillation_loss(s, t, labels.to(dtype)), want)
    with pytest.raises(ValueError, match="integer class indices"):
        distillation_loss(s, t, torch.tensor([True, False, True, False]))
