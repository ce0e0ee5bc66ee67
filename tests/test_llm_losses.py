"""kd_lib.llm_losses: forward/reverse KL and generalised JSD per token, against formulas written out and TRL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_lib.llm_losses import chunked_gkd_divergence, forward_kl, generalized_jsd, gkd_divergence, reverse_kl


def _logits(seed: int = 0, shape=(2, 5, 11), scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    t = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    mask[1, 3:] = False  # a padded tail
    return s, t, mask


def _softmax(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp(z / T - (z / T).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _by_hand(s, t, mask, T, kind, beta=0.5):
    """The divergences written out with NumPy, token by token."""
    ps, pt = _softmax(s.detach().numpy(), T), _softmax(t.numpy(), T)
    values = []
    for i, j in zip(*np.nonzero(mask.numpy()), strict=True):
        a, b = pt[i, j], ps[i, j]
        if kind == "forward":
            values.append(np.sum(a * np.log(a / b)))
        elif kind == "reverse":
            values.append(np.sum(b * np.log(b / a)))
        else:
            m = beta * a + (1 - beta) * b
            values.append(beta * np.sum(a * np.log(a / m)) + (1 - beta) * np.sum(b * np.log(b / m)))
    return T**2 * np.mean(values)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_the_divergences_equal_their_formulas(kind, T):
    s, t, mask = _logits()
    ours = {"forward": forward_kl, "reverse": reverse_kl,
            "jsd": lambda *a, **k: generalized_jsd(*a, beta=0.3, **k)}[kind](s, t, mask=mask, temperature=T)
    assert ours.item() == pytest.approx(_by_hand(s, t, mask, T, kind, beta=0.3), rel=1e-12)


def test_padded_positions_do_not_count_whatever_their_logits():
    s, t, mask = _logits()
    before = [f(s, t, mask=mask) for f in (forward_kl, reverse_kl, generalized_jsd)]
    s2, t2 = s.detach().clone(), t.clone()
    s2[~mask], t2[~mask] = 1e4, -1e4
    after = [f(s2, t2, mask=mask) for f in (forward_kl, reverse_kl, generalized_jsd)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_properties_zero_on_a_match_symmetry_and_the_log_2_bound():
    s, t, mask = _logits()
    for f in (forward_kl, reverse_kl, generalized_jsd):
        assert f(t, t, mask=mask).item() == pytest.approx(0.0, abs=1e-12)
    assert generalized_jsd(s, t, 0.5, mask).item() == pytest.approx(generalized_jsd(t, s.detach(), 0.5, mask).item())
    far = _logits(scale=100.0)
    assert generalized_jsd(far[0], far[1], 0.5, far[2]).item() <= math.log(2) + 1e-12  # per token, at T = 1
    assert forward_kl(s, t, mask).item() != pytest.approx(reverse_kl(s, t, mask).item(), rel=1e-3)  # not symmetric


def test_gkd_endpoints_are_forward_and_reverse_kl_and_the_teacher_gets_no_gradient():
    s, t, mask = _logits()
    t.requires_grad_()
    assert torch.equal(gkd_divergence(s, t, 0.0, mask), forward_kl(s, t, mask))
    assert torch.equal(gkd_divergence(s, t, 1.0, mask), reverse_kl(s, t, mask))
    gkd_divergence(s, t, 0.5, mask, temperature=2.0).backward()
    assert t.grad is None and s.grad is not None and s.grad[~mask].abs().max() == 0


def test_bf16_logits_are_computed_in_float32():
    s, t, mask = _logits()
    low = forward_kl(s.detach().bfloat16(), t.bfloat16(), mask)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(forward_kl(s.detach().bfloat16().double(), t.bfloat16().double(), mask).item(),
                                       rel=1e-5)


@pytest.mark.parametrize(("call", "message"), [
    (lambda s, t, m: forward_kl(s, t[..., :-1], m), "the same shape"),
    (lambda s, t, m: forward_kl(s, t, m[:, :-1]), "mask must have the logits' shape"),
    (lambda s, t, m: forward_kl(s, t, torch.zeros_like(m)), "mask selects no position"),
    (lambda s, t, m: generalized_jsd(s, t, 0.0, m), "beta must be a number strictly between 0 and 1"),
    (lambda s, t, m: generalized_jsd(s, t, 1.5, m), "beta must be a number strictly between 0 and 1"),
    (lambda s, t, m: reverse_kl(s, t, m, temperature=0.0), "temperature must be a finite number > 0"),
])
def test_bad_inputs_are_refused_by_name(call, message):
    s, t, mask = _logits()
    with pytest.raises(ValueError, match=message):
        call(s, t, mask)


@pytest.fixture(scope="module")
def trl_jsd():
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_gkd_divergence_matches_trls_gkd_trainer(trl_jsd, beta, T):
    """TRL divides by the positions with a label (reduction="batchmean" with labels) and has no T**2."""
    s, t, mask = _logits(seed=1)
    labels = torch.where(mask, torch.zeros(mask.shape, dtype=torch.long), torch.full(mask.shape, -100))
    ours = gkd_divergence(s, t, beta, mask, temperature=T)
    theirs = trl_jsd(s, t, labels=labels, beta=beta, temperature=T, reduction="batchmean")
    assert ours.item() == pytest.approx(T**2 * theirs.item(), rel=1e-10)
    (g_ours,) = torch.autograd.grad(ours, s)
    (g_theirs,) = torch.autograd.grad(T**2 * theirs, s)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("chunk", [1, 7, 18, 25])
def test_the_chunked_loss_equals_the_full_loss_and_its_gradients(beta, chunk):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.randn(30, 8, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = 2 * torch.randn(3, 6, 30, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False  # 16 positions count
    full = gkd_divergence(hidden @ head.T, teacher, beta, mask, temperature=2.0)
    chunked = chunked_gkd_divergence(hidden, head, teacher, mask, beta=beta, temperature=2.0, chunk_tokens=chunk)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-12)
    grads = torch.autograd.grad(full, (hidden, head)), torch.autograd.grad(chunked, (hidden, head))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def _saved_bytes(fn, inputs) -> int:
    """Bytes of new storage autograd keeps for the backward pass while ``fn()`` builds its graph
    (each storage once; the inputs' own storage does not count: it exists anyway)."""
    seen = {x.untyped_storage().data_ptr() for x in inputs}
    total = 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_the_chunked_loss_keeps_far_less_for_the_backward_pass():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(256, 16, generator=g, requires_grad=True)
    head = torch.randn(2000, 16, generator=g, requires_grad=True)
    teacher = torch.randn(256, 2000, generator=g)
    inputs = (hidden, head, teacher)
    full = _saved_bytes(lambda: gkd_divergence(hidden @ head.T, teacher), inputs)
    chunked = _saved_bytes(lambda: chunked_gkd_divergence(hidden, head, teacher, chunk_tokens=16), inputs)
    logits_bytes = 256 * 2000 * 4
    assert full >= logits_bytes and chunked < logits_bytes / 4, (full, chunked)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chunk_tokens": 0}, "chunk_tokens must be a positive int"),
    ({"mask": torch.zeros(2, 3, dtype=torch.bool)}, "selects no position"),
])
def test_the_chunked_loss_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        chunked_gkd_divergence(torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(2, 3, 5), **kwargs)
    with pytest.raises(ValueError, match=r"head_weight \[V, H\]"):
        chunked_gkd_divergence(torch.randn(2, 3, 4), torch.randn(5, 3), torch.randn(2, 3, 5))


class _Teacher(torch.nn.Module):
    """A 'language model' whose logits are a fixed table looked up by token id (so they are known here)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids])


@pytest.mark.parametrize("beta, alpha, T", [(0.0, 1.0, 1.0), (1.0, 1.0, 2.0), (0.5, 0.3, 1.0)])
def test_kd_from_teacher_is_the_divergence_to_the_live_frozen_teacher(beta, alpha, T):
    from types import SimpleNamespace

    from kd_lib.llm_losses import kd_from_teacher

    g = torch.Generator().manual_seed(3)
    teacher = _Teacher(torch.randn(11, 11, generator=g, dtype=torch.float64)).train()
    ids = torch.randint(0, 11, (2, 5), generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[1, 3:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    s = torch.randn(2, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    value = kd_from_teacher(teacher, beta, T, alpha)(SimpleNamespace(logits=s), batch)
    mask = labels != -100
    expected = alpha * _by_hand(s, teacher.table[ids].detach(), mask, T, {0.0: "forward", 1.0: "reverse"}.get(
        beta, "jsd"), beta)
    if alpha < 1:
        expected += (1 - alpha) * torch.nn.functional.cross_entropy(s[mask], labels[mask]).item()
    assert value.item() == pytest.approx(expected, rel=1e-7)  # the CE term is computed in float32
    value.backward()
    assert not teacher.training and teacher.table.grad is None and not teacher.table.requires_grad
    with pytest.raises(ValueError, match="beta must be a number in"):
        kd_from_teacher(teacher, 1.5)
