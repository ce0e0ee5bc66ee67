"""Checks for the exercises of notebook 07 · Evaluate and compress.

:func:`check_ece`, :func:`check_csr_bytes`, :func:`check_csr_break_even`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

import torch

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    ok,
    require_callable,
    require_number,
    to_tensor,
    wrong,
)
from kd_lib.evaluate import expected_calibration_error

__all__ = ["check_csr_break_even", "check_csr_bytes", "check_ece"]


@lru_cache(maxsize=1)
def _mixed_calibration_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[400, 4]`` over-confident on half the rows and under-confident on the other half."""
    g = generator(13)
    logits = torch.randn(400, 4, generator=g, dtype=torch.float64) * 3
    temperature = torch.where(torch.arange(400) % 2 == 0, 2.5, 0.4).double()[:, None]
    labels = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g).squeeze(1)
    return logits, labels


@checked
def check_ece(my_ece: Callable[[torch.Tensor, torch.Tensor, int], float]) -> Verdict:
    """Exercise 07.1: the expected calibration error, against ``kd_lib.evaluate.expected_calibration_error``.

    Args:
        my_ece: your function ``(logits [N, C], labels [N], n_bins) -> ECE``: equal-width confidence bins over
            ``[0, 1]``, ``sum_b (n_b / N) |accuracy_b - confidence_b|``.
    """
    name = "check_ece"
    require_callable(my_ece, "my_ece", "(logits [N, C], labels [N], n_bins) -> ECE")
    logits, labels = _mixed_calibration_data()
    n_bins = 10
    expected = torch.tensor(expected_calibration_error(logits, labels, n_bins), dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    conf, pred = probs.max(-1)
    correct = pred.eq(labels).double()
    which = torch.bucketize(conf, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    gaps, counts = [], []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            gaps.append((correct[sel].mean() - conf[sel].mean()).abs().item())
            counts.append(sel.sum().item())
    mistakes = [
        ("every bin counts equally in your average: weight each bin's gap by its share of the predictions, n_b / N",
         sum(gaps) / len(gaps)),
        ("that is |overall accuracy - mean confidence| (one bin); ECE bins the predictions by confidence first",
         (correct.mean() - conf.mean()).abs()),
        ("the confidence is the top probability (of the predicted class), not the probability of the true label",
         None),
    ]
    true_p = probs.gather(1, labels[:, None]).squeeze(1)
    which_t = torch.bucketize(true_p, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    ece_true = sum((which_t == b).sum().item() / len(labels)
                   * (correct[which_t == b].mean() - true_p[which_t == b].mean()).abs().item()
                   for b in range(n_bins) if (which_t == b).any())
    mistakes[2] = (mistakes[2][0], ece_true)
    got = to_tensor(name, call(name, my_ece, logits.clone(), labels.clone(), n_bins), "the ECE", ())
    mistakes = [(h, torch.as_tensor(v, dtype=torch.float64)) for h, v in mistakes]
    verdict = diagnose(name, got, expected, mistakes, rtol=1e-6)
    if verdict is not None:
        return verdict
    return ok(name, f"ECE = {expected.item():.4f} with 10 bins, as expected_calibration_error computes")


@checked
def check_csr_bytes(csr_bytes: Callable[[torch.Tensor], int]) -> Verdict:
    """Exercise 07.4: bytes of a weight matrix stored as CSR (``w.to_sparse_csr()``).

    Args:
        csr_bytes: your function ``(w [R, C] dense, with zeros) -> bytes`` counting the values, the column
            indices and the row pointers, each at the element size torch uses.
    """
    name = "check_csr_bytes"
    require_callable(csr_bytes, "csr_bytes", "(dense weight [R, C]) -> bytes")
    g = generator(10)
    w = torch.randn(12, 20, generator=g)
    w[torch.rand(12, 20, generator=g) < 0.7] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = w.to_sparse_csr()
    parts = {k: t.numel() * t.element_size() for k, t in
             (("values", csr.values()), ("cols", csr.col_indices()), ("rows", csr.crow_indices()))}
    expected = sum(parts.values())
    got = to_tensor(name, call(name, csr_bytes, w.clone()), "the returned byte count", ()).item()
    if got == expected:
        return ok(name, f"{expected} bytes: values {parts['values']}, column indices {parts['cols']}, row pointers "
                        f"{parts['rows']} (int64 indices: 8 bytes each)")
    nnz, rows = csr.values().numel(), w.shape[0]
    known = {
        parts["values"]: "only the values: the column index of each value and the row pointers are stored too",
        parts["values"] + parts["cols"]: "the row pointers (crow_indices, R + 1 of them) are missing",
        4 * nnz + 4 * nnz + 4 * (rows + 1): "torch's CSR indices are int64 (8 bytes), not int32",
        w.numel() * 4: "that is the dense float32 matrix",
        4 * nnz + 8 * nnz + 8 * rows: "there are R + 1 row pointers, not R",
    }
    return wrong(name, f"got {got:.0f}, expected {expected}: " + known.get(got, "count values (4 B), column indices "
                                                                                "and row pointers (8 B each)"))


def check_csr_break_even(sparsity: float) -> Verdict:
    """Exercise 07.4: the sparsity above which CSR (float32 values, int64 indices) takes fewer bytes than
    the dense float32 matrix, for a large matrix.

    Args:
        sparsity: your answer, a fraction of zeros in ``[0, 1]``.
    """
    name = "check_csr_break_even"
    x = require_number(sparsity, "sparsity")
    expected = 2 / 3  # 12 bytes per non-zero vs 4 per entry: density below 1/3
    if 1 < x <= 100 and abs(x / 100 - expected) < 0.01:
        return wrong(name, "give the sparsity as a fraction (0.67), not a percentage")
    if abs(x - expected) <= 0.01:
        return ok(name, "about 2/3: each non-zero costs 4 B of value + 8 B of column index = 12 B against 4 B per "
                        "dense entry, so CSR wins below 1/3 density (the row pointers are negligible)")
    if abs(x - 0.5) <= 0.01:
        return wrong(name, "that holds for int32 indices; torch's CSR uses int64 (8 bytes) for the column indices")
    if abs(x - 1 / 3) <= 0.01:
        return wrong(name, "1/3 is the break-even *density* (non-zeros); the sparsity is the share of zeros")
    if x <= 0.01:
        return wrong(name, "the indices cost bytes too: each non-zero stores its value and its column index")
    return wrong(name, f"{x:g}: compare 4 bytes per dense entry with the bytes CSR stores per non-zero")
