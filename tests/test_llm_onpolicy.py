"""On-policy data for fit, batches, sampling, counting teacher tokens (kd_lib.llm_onpolicy)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kd_lib.llm_losses import forward_kl, kd_from_teacher, reverse_kl
from kd_lib.llm_onpolicy import (
    OnPolicyData,
    TokenCounter,
    completion_batch,
    position_divergence,
    prompts_and_continuations,
    sample_continuations,
    token_nll,
)
from kd_lib.llm_students import small_llama
from kd_lib.training import TrainSettings, fit

V = 64


@pytest.fixture(scope="module")
def pair():
    return (small_llama(V, layers=2, width=32, heads=4, kv_heads=2, seed=0),
            small_llama(V, layers=2, width=32, heads=4, kv_heads=2, seed=1))


def prompts(n=6, p=5, seed=0):
    return torch.randint(3, V, (n, p), generator=torch.Generator().manual_seed(seed))


class Blocks:  # the two attributes of kd_lib.lm.LMBlocks that prompts_and_continuations reads
    block_size = 8
    input_ids = (list(range(10, 18)), list(range(20, 25)), list(range(30, 38)))


def test_prompts_and_continuations_cut_full_blocks():
    p, c = prompts_and_continuations(Blocks, 3, 4)
    assert p.tolist() == [[10, 11, 12], [30, 31, 32]] and c.tolist() == [[13, 14, 15, 16], [33, 34, 35, 36]]
    with pytest.raises(ValueError, match="no block has prompt_tokens \\+ new_tokens = 9"):
        prompts_and_continuations(Blocks, 5, 4)
    with pytest.raises(ValueError, match="new_tokens must be a positive int"):
        prompts_and_continuations(Blocks, 3, 0)


def test_completion_batch_shifts_labels_and_ends_at_the_first_eos():
    batch = completion_batch(torch.tensor([[5, 6], [7, 8]]), torch.tensor([[9, 2, 4], [9, 9, 9]]), eos_token_id=2,
                             pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 9, 2, 0], [7, 8, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # labels[t] is the token at t + 1 where that is a continuation token; the EOS is a target, what follows is not
    assert batch["labels"].tolist() == [[-100, 9, 2, -100, -100], [-100, 9, 9, 9, -100]]
    no_eos = completion_batch(torch.tensor([[5]]), torch.tensor([[2, 3]]), eos_token_id=None, pad_token_id=0)
    assert no_eos["labels"].tolist() == [[2, 3, -100]]
    with pytest.raises(ValueError, match="same B"):
        completion_batch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), eos_token_id=None,
                         pad_token_id=0)


def test_sample_continuations_is_generate_with_its_own_seed(pair):
    student, _ = pair
    p = prompts(3)
    student.train()
    before = torch.random.get_rng_state()
    ours = sample_continuations(student, p, new_tokens=7, seed=11, eos_token_id=None, pad_token_id=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is untouched
    assert student.training  # mode restored
    torch.manual_seed(11)
    student.eval()
    theirs = student.generate(p, attention_mask=torch.ones_like(p), do_sample=True, top_k=0, top_p=1.0,
                              temperature=1.0, max_new_tokens=7, pad_token_id=0, eos_token_id=None)
    assert ours.shape == (3, 7) and torch.equal(ours, theirs[:, 5:])
    assert torch.equal(ours, sample_continuations(student, p, new_tokens=7, seed=11, pad_token_id=0))
    assert not torch.equal(ours, sample_continuations(student, p, new_tokens=7, seed=12, pad_token_id=0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_continuations(student, p, new_tokens=3, seed=0, temperature=0)


def test_on_policy_data_draws_from_the_student_with_probability_lmbda(pair):
    student, _ = pair
    p, c = prompts(8), prompts(8, 4, seed=1)
    fixed = OnPolicyData(student, p, c, lmbda=0.0)
    batches = list(fixed.loader(2, shuffle=True, seed=3))
    assert len(batches) == 4 and fixed.student_batches == 0
    rows = sorted(b["input_ids"][i].tolist() for b in batches for i in range(2))
    assert rows == sorted(torch.cat([p, c], 1).tolist())
    own = OnPolicyData(student, p, lmbda=1.0, new_tokens=4, seed=5)
    first = [b["input_ids"] for b in own.loader(2, shuffle=True, seed=3)]
    assert own.student_batches == 4 and own.student_tokens == 8 * 4
    again = [b["input_ids"] for b in own.loader(2, shuffle=True, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    mixed = OnPolicyData(student, prompts(60, 2), prompts(60, 1, seed=2), lmbda=0.5)
    for _ in mixed.loader(1, shuffle=True):
        pass
    assert 15 <= mixed.student_batches <= 45  # Binomial(60, 0.5): mean 30, sd 3.9
    for bad, match in ((dict(lmbda=1.5), "lmbda must be a number in \\[0, 1\\]"),
                       (dict(lmbda=0.5, continuations=None), "continuations=None needs lmbda=1"),
                       (dict(lmbda=1.0, continuations=None), "new_tokens is required")):
        with pytest.raises(ValueError, match=match):
            OnPolicyData(student, p, **{"continuations": c, **bad})
    with pytest.raises(ValueError, match="batch_size=9 is more than the 8 prompts"):
        fixed.loader(9)


def test_fit_on_the_students_own_samples_lowers_its_divergence_there(pair):
    student, teacher = pair
    student = copy.deepcopy(student)
    p = prompts(8)
    data = OnPolicyData(student, p, lmbda=1.0, new_tokens=6, seed=0)
    probe = completion_batch(p, sample_continuations(student, p, new_tokens=6, seed=99), eos_token_id=None,
                             pad_token_id=0)

    def divergence():
        kl, _, mask = position_divergence(student, teacher, probe)
        return (kl.sum() / mask.sum()).item()

    start = divergence()
    fit(student, data, kd_from_teacher(teacher), TrainSettings(epochs=4, lr=3e-3, batch_size=8, warmup_ratio=0.0),
        progress=False)
    assert data.student_batches == 4
    assert divergence() < 0.9 * start


def test_token_counter_counts_forward_and_generated_tokens(pair):
    _, teacher = pair
    p = prompts(3, 4)
    with TokenCounter(teacher) as counter:
        with torch.no_grad():
            teacher(input_ids=p, attention_mask=torch.ones_like(p))
        assert counter.tokens == 12
        sample_continuations(teacher, p, new_tokens=5, seed=0)
    assert counter.tokens == 12 + 3 * (4 + 5 - 1)  # the prompt once, then one token per row per new step
    with torch.no_grad():
        teacher(input_ids=p)
    assert counter.tokens == 12 + 24  # removed on exit


def test_token_nll_and_position_divergence_against_direct_formulas(pair):
    student, teacher = pair
    batch = completion_batch(prompts(2, 3), prompts(2, 4, seed=4), eos_token_id=None, pad_token_id=0)
    nll, mask = token_nll(student, batch)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"]).logits
        t_logits = teacher(input_ids=batch["input_ids"]).logits
    assert mask.sum() == 8 and torch.all(nll[~mask] == 0)
    direct = -F.log_softmax(logits, -1).gather(-1, batch["labels"].clamp_min(0)[..., None])[..., 0]
    assert torch.allclose(nll[mask], direct[mask], atol=1e-5)
    kl, rkl, kl_mask = position_divergence(student, teacher, batch)
    assert torch.equal(kl_mask, mask) and torch.all(kl[~mask] == 0) and torch.all(rkl[~mask] == 0)
    for b, t in mask.nonzero().tolist():
        one = torch.zeros_like(mask)
        one[b, t] = True
        assert kl[b, t].item() == pytest.approx(forward_kl(logits, t_logits, one).item(), rel=1e-5)
        assert rkl[b, t].item() == pytest.approx(reverse_kl(logits, t_logits, one).item(), rel=1e-5)
