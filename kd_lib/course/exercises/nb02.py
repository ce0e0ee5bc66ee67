"""Checks for the exercises of notebook 02 · Distillation losses.

:func:`check_shift_invariance`, :func:`check_kl_directions`, :func:`check_kd_loss`,
:func:`check_token_kd_loss`, :func:`check_effective_alpha`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    close,
    diagnose,
    generator,
    kl_rows,
    ok,
    require_bool,
    require_callable,
    require_number,
    to_tensor,
    wrong,
)
from kd_lib.losses import kd_loss

__all__ = [
    "check_effective_alpha",
    "check_kd_loss",
    "check_kl_directions",
    "check_shift_invariance",
    "check_token_kd_loss",
]


def check_shift_invariance(per_row: bool, per_class: bool) -> Verdict:
    """Exercise 02.1: is ``kd_loss`` unchanged when a constant is added to the teacher logits?

    Args:
        per_row: your answer for a different constant per *row* (example), ``teacher + c[:, None]``.
        per_class: your answer for one vector added to every row, ``teacher + u[None, :]``.
    """
    name = "check_shift_invariance"
    per_row, per_class = require_bool(per_row, "per_row"), require_bool(per_class, "per_class")
    g = generator(2)
    s, t = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    base = kd_loss(s, t, 2.0)
    row_same = close(kd_loss(s, t + torch.randn(4, 1, generator=g, dtype=torch.float64) * 5, 2.0), base)
    class_same = close(kd_loss(s, t + torch.randn(1, 5, generator=g, dtype=torch.float64) * 5, 2.0), base)
    if per_row != row_same:
        return wrong(name, "per row: softmax(z + c) = softmax(z) for any constant c added to all the classes of one "
                           "example, so the teacher's probabilities -- and the loss -- do not change")
    if per_class != class_same:
        return wrong(name, "per class: adding the same vector u to every row changes the *differences* between "
                           "classes (u_i - u_j), so the teacher's probabilities change, and the loss with them")
    return ok(name, "a per-row constant changes nothing (softmax is shift-invariant within a row); a per-class "
                    "vector changes the logit differences and so the loss")


_P_TEACHER = torch.tensor([0.45, 0.45, 0.05, 0.05], dtype=torch.float64)
_P_COVER = torch.tensor([0.3, 0.3, 0.2, 0.2], dtype=torch.float64)
_P_MODE = torch.tensor([0.85, 0.05, 0.05, 0.05], dtype=torch.float64)


def check_kl_directions(
    forward_cover: float, forward_mode: float, reverse_cover: float, reverse_mode: float
) -> Verdict:
    """Exercise 02.2: the four KL divergences (in nats) between the bimodal teacher and the two students.

    Teacher ``[0.45, 0.45, 0.05, 0.05]``, covering student ``[0.3, 0.3, 0.2, 0.2]``, mode-seeking
    student ``[0.85, 0.05, 0.05, 0.05]``.

    Args:
        forward_cover: ``KL(p_t || p_cover)``.
        forward_mode: ``KL(p_t || p_mode)``.
        reverse_cover: ``KL(p_cover || p_t)``.
        reverse_mode: ``KL(p_mode || p_t)``.
    """
    name = "check_kl_directions"
    got = torch.tensor([require_number(forward_cover, "forward_cover"), require_number(forward_mode, "forward_mode"),
                        require_number(reverse_cover, "reverse_cover"), require_number(reverse_mode, "reverse_mode")],
                       dtype=torch.float64)

    def kl(p: torch.Tensor, q: torch.Tensor) -> float:
        return (p * (p / q).log()).sum().item()

    expected = torch.tensor([kl(_P_TEACHER, _P_COVER), kl(_P_TEACHER, _P_MODE), kl(_P_COVER, _P_TEACHER),
                             kl(_P_MODE, _P_TEACHER)], dtype=torch.float64)
    mistakes = [
        ("these are in bits (log base 2); use the natural log (nats), as PyTorch does", expected / math.log(2)),
        ("forward and reverse are swapped: the forward KL is KL(p_t || p_s) = sum p_t log(p_t / p_s)",
         expected[[2, 3, 0, 1]]),
        ("the covering and mode-seeking students are swapped", expected[[1, 0, 3, 2]]),
    ]
    verdict = diagnose(name, got, expected, mistakes, rtol=1e-3, atol=1e-4)
    if verdict is not None:
        bad = [n for n, a, b in zip(("forward_cover", "forward_mode", "reverse_cover", "reverse_mode"), got, expected,
                                    strict=True) if not close(a, b, 1e-3, 1e-4)]
        return verdict if "none of the usual" not in verdict.message else wrong(
            name, f"{', '.join(bad)} wrong; KL(p || q) = sum_i p_i log(p_i / q_i), in nats")
    return ok(name, "forward KL prefers the covering student (0.226 < 0.703) -- and so does the reverse KL here "
                    "(0.311 < 0.431), only less decisively")


def _ref_kd_mistakes(s: torch.Tensor, t: torch.Tensor, temperature: float) -> list[tuple[str, torch.Tensor]]:
    """Values of the classic wrong KD losses on ``[B, C]`` logits."""
    c, b = s.shape[-1], s.shape[0]
    log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    right = kl_rows(log_pt, log_ps).mean() * temperature**2
    return [
        (f"your loss is 1/C = 1/{c} of the expected value: did you use reduction='mean'? It divides by B·C; "
         "use reduction='batchmean' (or sum over classes, mean over examples)", right / c),
        (f"your loss is 1/T² = 1/{temperature**2:g} of the expected value: multiply the KL by T²",
         right / temperature**2),
        ("KL arguments swapped: you computed KL(p_student || p_teacher). nn.KLDivLoss(input, target) computes "
         "KL(target || input): pass the student's log-probabilities first, the teacher's probabilities second",
         kl_rows(log_ps, log_pt).mean() * temperature**2),
        ("softmax instead of log_softmax: KLDivLoss / F.kl_div expect log-probabilities as input",
         F.kl_div(F.softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
         * temperature**2),
        (f"your loss is B = {b} times the expected value: average over the examples (batchmean), do not sum",
         right * b),
        ("the temperature must divide both the student's and the teacher's logits",
         kl_rows(F.log_softmax(t / temperature, -1), F.log_softmax(s, -1)).mean() * temperature**2),
        ("the temperature must divide both the student's and the teacher's logits",
         kl_rows(F.log_softmax(t, -1), F.log_softmax(s / temperature, -1)).mean() * temperature**2),
        ("your loss is 1/(C·T²) of the expected value: reduction='mean' *and* no T²", right / (c * temperature**2)),
    ]


@checked
def check_kd_loss(my_kd_loss: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> Verdict:
    """Hinton's KD loss on ``[B, C]`` logits (exercise 02.3, first step): compared with ``kd_lib.losses.kd_loss``.

    Args:
        my_kd_loss: your function ``(student_logits [B, C], teacher_logits [B, C], T) -> loss`` (a 0-dim
            tensor): ``T² · KL(p_teacher(T) || p_student(T))``, summed over classes, averaged over examples.
    """
    name = "check_kd_loss"
    require_callable(my_kd_loss, "my_kd_loss", "(student_logits [B, C], teacher_logits [B, C], T) -> loss")
    g = generator(3)
    for b, c, temperature in ((4, 5, 3.0), (3, 7, 2.0)):
        s = (torch.randn(b, c, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
        t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
        out = call(name, my_kd_loss, s, t.clone(), temperature)
        got = to_tensor(name, out, "the loss", ())
        expected = kd_loss(s.detach(), t, temperature)
        verdict = diagnose(name, got, expected, _ref_kd_mistakes(s.detach(), t, temperature))
        if verdict is not None:
            return wrong(name, f"B = {b}, C = {c}, T = {temperature:g}: {verdict.message}")
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return wrong(name, "the value is right but no gradient flows to the student logits: keep the loss a "
                               "tensor (no .item(), no torch.no_grad(), no .detach() on the student side)")
    return ok(name, "equals kd_loss for (B, C, T) = (4, 5, 3) and (3, 7, 2), and its gradient reaches the student")


@checked
def check_token_kd_loss(
    my_token_kd_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> Verdict:
    """Exercises 02.3 and 09.2: token-level KD with padding, compared with ``kd_loss(..., mask=mask)``.

    Args:
        my_token_kd_loss: your function ``(student_logits [B, L, C], teacher_logits [B, L, C],
            mask [B, L], T) -> loss``: ``T²`` times the KL per token, averaged over the positions where
            ``mask`` is 1 (padding excluded).
    """
    name = "check_token_kd_loss"
    require_callable(my_token_kd_loss, "my_token_kd_loss", "(student [B, L, C], teacher [B, L, C], mask [B, L], T)")
    g = generator(4)
    b, length, c, temperature = 3, 6, 5, 2.0
    s = torch.randn(b, length, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(b, length, c, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    expected = kd_loss(s, t, temperature, mask=mask)
    keep = mask.bool()
    log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = kl_rows(log_pt, log_ps)  # [B, L]
    mistakes = [
        ("padding is not masked: average the per-token KL over the positions where mask is 1 only",
         kl.mean() * temperature**2),
        ("you averaged over all B·L positions after zeroing the padding: divide by the number of real tokens "
         "(mask.sum()) instead", (kl * keep).sum() / kl.numel() * temperature**2),
        ("reduction='batchmean' on [B, L, C] divides by B only, so your loss is summed over the tokens: flatten the "
         "real positions to [N, C] first", (kl * keep).sum() / b * temperature**2),
        ("reduction='batchmean' on [B, L, C] without a mask: it sums over every position (padding included) and "
         "divides by B only", kl.sum() / b * temperature**2),
        (f"your loss is 1/C = 1/{c} of the expected value: reduction='mean' also divides by the classes; sum over "
         "classes, then average over the real tokens", kl[keep].mean() * temperature**2 / c),
        (f"your loss is 1/T² = 1/{temperature**2:g} of the expected value: multiply by T²", kl[keep].mean()),
        ("KL arguments swapped: you computed KL(p_student || p_teacher)",
         kl_rows(log_ps, log_pt)[keep].mean() * temperature**2),
    ]
    got = to_tensor(name, call(name, my_token_kd_loss, s.clone(), t.clone(), mask.clone(), temperature), "the loss", ())
    verdict = diagnose(name, got, expected, mistakes)
    if verdict is not None:
        return verdict
    s2, t2 = s.clone(), t.clone()
    ramp = torch.linspace(-1e4, 1e4, c, dtype=torch.float64)
    s2[~keep], t2[~keep] = ramp, ramp.flip(0)  # huge logits at the padded positions must not matter
    got2 = to_tensor(name, call(name, my_token_kd_loss, s2, t2, mask.clone(), temperature), "the loss", ())
    if not close(got2, expected):
        return wrong(name, "right on ordinary inputs, but the loss changes when the padded positions hold huge "
                           "logits: select the real positions (logits[mask.bool()]) before the softmax, rather "
                           "than multiplying a result that may already be nan or inf by the mask")
    return ok(name, "equals kd_loss(..., mask=mask), and huge logits at padded positions do not change it")


@checked
def check_effective_alpha(effective_alpha: Callable[[float, int], float]) -> Verdict:
    """Exercise 02.5: the ``alpha'`` at which the ``reduction="mean"`` bug mixes like the correct loss at ``alpha``.

    With ``reduction="mean"`` the soft term is ``1/C`` of the right one, so
    ``alpha' · KD / C : (1 - alpha') · CE`` must equal ``alpha · KD : (1 - alpha) · CE``.

    Args:
        effective_alpha: your function ``(alpha, num_classes) -> alpha'``.
    """
    name = "check_effective_alpha"
    require_callable(effective_alpha, "effective_alpha", "(alpha, num_classes) -> alpha'")
    for alpha, c in ((0.5, 10), (0.9, 4), (0.1, 100)):
        got = to_tensor(name, call(name, effective_alpha, alpha, c), "alpha'", ())
        expected = torch.tensor(c * alpha / (1 - alpha + c * alpha), dtype=torch.float64)
        mistakes = [
            ("alpha' = C·alpha can exceed 1 and ignores that (1 - alpha') changes too: solve "
             "alpha'/(C (1 - alpha')) = alpha/(1 - alpha) for alpha'", c * alpha),
            ("wrong direction: the buggy soft term is C times too *small*, so it needs a *larger* weight, not a "
             "smaller one", alpha / (c * (1 - alpha) + alpha)),
            ("wrong direction: the buggy soft term is C times too small, so its weight must grow", alpha / c),
        ]
        verdict = diagnose(name, got, expected, mistakes, rtol=1e-6)
        if verdict is not None:
            return wrong(name, f"alpha = {alpha}, C = {c}: {verdict.message}")
    return ok(name, "alpha' = C·alpha / (1 - alpha + C·alpha): e.g. alpha = 0.5 with 10 classes needs alpha' ≈ 0.909")
