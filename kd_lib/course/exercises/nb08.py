"""Checks for the exercises of notebook 08 · Semantic search.

:func:`check_qr_index`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    close,
    generator,
    ok,
    require_callable,
    to_tensor,
    wrong,
)

__all__ = ["check_qr_index"]


@checked
def check_qr_index(compress: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Verdict:
    """Exercise 08.4: store ``R [s; 1]`` instead of ``W s + b`` -- same cosines, ``D_s + 1`` numbers.

    Args:
        compress: your function ``(W [D_t, D_s], b [D_t], s [N, D_s]) -> [N, D_s + 1]`` whose rows have the
            same pairwise cosines as the rows of ``s @ W.T + b``.
    """
    name = "check_qr_index"
    require_callable(compress, "compress", "(W [D_t, D_s], b [D_t], s [N, D_s]) -> [N, D_s + 1]")
    g = generator(11)
    d_t, d_s, n = 12, 5, 7
    w = torch.randn(d_t, d_s, generator=g, dtype=torch.float64)
    b = torch.randn(d_t, generator=g, dtype=torch.float64) * 2
    s = torch.randn(n, d_s, generator=g, dtype=torch.float64)
    full = s @ w.T + b
    expected = F.normalize(full, dim=-1) @ F.normalize(full, dim=-1).T
    got = to_tensor(name, call(name, compress, w.clone(), b.clone(), s.clone()), "the compressed index")
    if got.dim() != 2 or got.shape[0] != n:
        return wrong(name, f"expected one row per document, shape [{n}, {d_s + 1}]; got {tuple(got.shape)}")
    cos = F.normalize(got, dim=-1) @ F.normalize(got, dim=-1).T
    if not close(cos, expected, 1e-6, 1e-8):
        no_bias = F.normalize(s @ w.T, dim=-1) @ F.normalize(s @ w.T, dim=-1).T
        if close(cos, no_bias, 1e-6, 1e-8):
            return wrong(name, "the cosines are those of W s, without the bias: factor [W b] (append b as a column) "
                               "and append 1 to every s")
        err = (cos - expected).abs().max().item()
        return wrong(name, f"the cosines differ from those of W s + b by up to {err:.3g}: the rows must be R [s; 1] "
                           "with [W b] = QR (thin QR, torch.linalg.qr(..., mode='reduced'))")
    if got.shape[1] != d_s + 1:
        return wrong(name, f"the cosines are right, but each row holds {got.shape[1]} numbers: the thin QR gives "
                           f"{d_s + 1} (R is (D_s + 1) x (D_s + 1))")
    return ok(name, f"the same cosines as W s + b with {d_s + 1} numbers per document instead of {d_t}")
