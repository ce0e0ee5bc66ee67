"""Checks for the exercises of notebook 11 · Scaling up.

:func:`check_largest_batch`, :func:`check_grad_accumulation`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.course.exercises.nb04 import bert_param_counts
from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    ok,
    own_rng,
    require_callable,
    require_int,
    wrong,
)

__all__ = ["check_grad_accumulation", "check_largest_batch"]


_BERT_BASE_PARAMS = sum(bert_param_counts(30522, 512, 2, 768, 12, 3072).values()) + 768 * 3 + 3  # notebook 11's model


def _largest_batch(params: int, layers: int, hidden: int, heads: int, limit_gb: float = 24.0,
                   precision: str = "bf16") -> int:
    from kd_lib.trainer import training_memory_gb

    batch = 0
    while training_memory_gb(params, layers=layers, hidden=hidden, heads=heads, batch=batch + 1, seq_len=512,
                             precision=precision)["total"] <= limit_gb:
        batch += 1
    return batch


def check_largest_batch(bert_base: int, bert_large: int) -> Verdict:
    """Exercise 11.4: the largest batch of 512-token sequences that ``training_memory_gb`` says fits in
    24 GB when fine-tuning (bf16 autocast, the default).

    Args:
        bert_base: your answer for bert-base (12 layers, width 768, 12 heads, the notebook's parameter count).
        bert_large: your answer for bert-large (24 layers, width 1024, 16 heads, 335 M parameters).
    """
    name = "check_largest_batch"
    answers = {"bert_base": require_int(bert_base, "bert_base"), "bert_large": require_int(bert_large, "bert_large")}
    specs = {"bert_base": (_BERT_BASE_PARAMS, 12, 768, 12), "bert_large": (335_000_000, 24, 1024, 16)}
    for key, spec in specs.items():
        expected, got = _largest_batch(*spec), answers[key]
        if got == expected:
            continue
        if got == expected + 1:
            hint = "one too many: that is the first batch that does *not* fit (total > 24 GB)"
        elif got == _largest_batch(*spec, limit_gb=24 * 2**30 / 1e9):
            hint = "training_memory_gb counts GB = 1e9 bytes; you compared with 24 GiB"
        elif got == _largest_batch(*spec, precision="fp32"):
            hint = "that is for float32 activations; the default (bf16 autocast) keeps 16-bit activations"
        else:
            hint = "increase the batch until training_memory_gb(...)['total'] exceeds 24"
        return wrong(name, f"{key}: got {got}, expected {expected}; {hint}")
    return ok(name, f"bert-base: {answers['bert_base']} sequences, bert-large: {answers['bert_large']} -- activations "
                    "dominate, and they grow with layers x width x length²")


@checked
def check_grad_accumulation(
    accumulate: Callable[[nn.Module, Callable, torch.Tensor, torch.Tensor, int], None],
) -> Verdict:
    """Exercise 11.2: gradient accumulation over ``k`` micro-batches gives the full batch's gradient.

    Args:
        accumulate: your function ``(model, loss_fn, inputs [B, ...], targets [B], k) -> None`` that splits
            the batch into ``k`` equal micro-batches and leaves in the parameters' ``.grad`` the gradient of
            ``loss_fn`` (a mean over the examples) on the whole batch. It must not step an optimizer.
    """
    name = "check_grad_accumulation"
    require_callable(accumulate, "accumulate", "(model, loss_fn, inputs, targets, k) -> None")
    g = generator(12)
    x = torch.randn(8, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    with own_rng():  # leave the learner's random state alone
        torch.manual_seed(0)
        reference, model, last = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    F.cross_entropy(reference(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()]).double()
    model.load_state_dict(reference.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    call(name, accumulate, model, F.cross_entropy, x.clone(), y.clone(), 4)
    if any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)):
        return wrong(name, "the weights changed: accumulate the gradients only, do not step an optimizer")
    if any(p.grad is None for p in model.parameters()):
        return wrong(name, "no gradients: call loss.backward() on every micro-batch")
    got = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    last.load_state_dict(reference.state_dict())
    F.cross_entropy(last(x[6:]), y[6:]).backward()
    last_grad = torch.cat([p.grad.flatten() for p in last.parameters()]).double()
    mistakes = [
        ("k = 4 times the full-batch gradient: divide each micro-batch's loss by k before backward()", expected * 4),
        ("only the last micro-batch's gradient survives: do not zero the gradients between micro-batches",
         last_grad),
        ("only the last micro-batch's gradient survives, divided by k: zero the gradients once, before the loop",
         last_grad / 4),
        ("1/k of the full-batch gradient: divide each micro-batch's loss by k once, not twice", expected / 4),
    ]
    verdict = diagnose(name, got, expected, mistakes, rtol=1e-5, atol=1e-7)
    if verdict is not None:
        return verdict
    return ok(name, "4 micro-batches of 2 give the gradient of the batch of 8; the weights are untouched")
