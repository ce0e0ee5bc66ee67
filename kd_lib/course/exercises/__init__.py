"""Automatic feedback for the course's exercises: ``check_…`` functions, one per checkable answer.

Each check takes either *your function* (implement-a-piece exercises: it is called on small fixed
inputs and compared with the reference in ``kd_lib``) or *your number* (predict-then-check
exercises: it is compared with the value ``kd_lib`` computes for the notebook's setting). It
returns a :class:`~kd_lib.course.exercises.verdict.Verdict` -- ``✓ correct`` or ``✗`` with a hint
about the likely mistake, recognised numerically (a loss ``1/C`` of the expected value points to
``reduction="mean"``, one ``1/T²`` of it to a missing ``T²``, and so on). A wrong answer never
raises; only arguments of the wrong *type* do (``TypeError``, naming the argument).

Usage in a notebook::

    from kd_lib.course.exercises import check_kd_loss
    check_kd_loss(my_kd_loss)          # displays ✓ or ✗ + hint
    assert check_kd_loss(my_kd_loss)   # a Verdict is truthy when correct

The checks of notebook ``NN`` live in :mod:`kd_lib.course.exercises.nbNN` (``nb01`` … ``nb11``);
the verdict and the machinery they share in :mod:`kd_lib.course.exercises.verdict`. This package
imports a check's module only when the check is first looked up, so notebook 01's checks do not
load what notebook 11's need (``transformers.Trainer``, through ``kd_lib.trainer``).

Every check runs in well under a second on a CPU (tiny tensors, no training, no model download).
Worked solutions: ``notebooks/solutions/NN_solutions.ipynb``.

Conventions: ``B`` batch, ``L`` sequence length, ``C`` classes, ``D`` hidden width, ``T`` temperature.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it (imported on first use, PEP 562)
_WHERE: dict[str, str] = {
    "Verdict": "verdict",
    **dict.fromkeys(
        [
            "check_entropy_derivative",
            "check_high_temperature_gradient",
            "check_softmax_overflow",
            "check_temperature_for_target",
        ],
        "nb01",
    ),
    **dict.fromkeys(
        [
            "check_effective_alpha",
            "check_kd_loss",
            "check_kl_directions",
            "check_shift_invariance",
            "check_token_kd_loss",
        ],
        "nb02",
    ),
    **dict.fromkeys(["check_distillation_loss", "check_fixed_snippet", "check_validation_split"], "nb03"),
    **dict.fromkeys(
        [
            "check_bert_base_counts",
            "check_bert_param_formula",
            "check_pad_share",
            "check_temperature_scaling",
            "check_tokenize_prediction",
        ],
        "nb04",
    ),
    **dict.fromkeys(["check_fold_token_types", "check_pair_difference_layer"], "nb05"),
    **dict.fromkeys(["check_cosine_hidden_loss", "check_layer_map", "check_projection_count"], "nb06"),
    **dict.fromkeys(["check_csr_break_even", "check_csr_bytes", "check_ece"], "nb07"),
    **dict.fromkeys(["check_qr_index"], "nb08"),
    **dict.fromkeys(["check_next_token_labels"], "nb09"),
    **dict.fromkeys(["check_mixture_flip_temperature"], "nb10"),
    **dict.fromkeys(["check_grad_accumulation", "check_largest_batch"], "nb11"),
}

__all__ = ["Verdict", *sorted(n for n in _WHERE if n != "Verdict")]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
