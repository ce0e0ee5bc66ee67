"""Few labels and a transfer set: distilling on sentences whose labels the student never sees.

A *transfer set* is the data the teacher labels for the student (Hinton et al., 2015 call it
that): in-domain text without human labels. With only a few labelled sentences, a student can
still learn from many more by matching the teacher's soft predictions on the transfer set.

- :func:`labelled_transfer_split` draws disjoint row positions for the labelled part and the
  transfer part of a pool of sentences.
- :func:`few_label_dataset` builds one ``datasets.Dataset`` from them in which the transfer
  rows' labels are replaced by :data:`WITHHELD` -- the student cannot see them by accident.
- :func:`transfer_loss` applies :func:`~kd_lib.losses.distillation_loss` to the labelled rows
  and the pure soft-target :func:`~kd_lib.losses.kd_loss` to the transfer rows;
  :func:`kd_with_transfer` wraps it for :func:`kd_lib.training.fit` with cached teacher logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kd_lib.distill import kd_from_cache
from kd_lib.losses import check_alpha, check_temperature, distillation_loss, kd_loss

__all__ = ["WITHHELD", "few_label_dataset", "kd_with_transfer", "labelled_transfer_split", "transfer_loss"]

# The label of a transfer row: "no label" (the value GLUE's unlabelled test splits use). It is
# outside [0, C), so cross-entropy or distillation_loss given such a row raises instead of
# silently training on it.
WITHHELD = -1


def _check_count(value, name: str, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def labelled_transfer_split(
    n_examples: int, n_labelled: int, n_transfer: int | None = None, *, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Draw disjoint row positions of a pool of ``n_examples`` sentences.

    Args:
        n_examples: size of the pool.
        n_labelled: rows whose labels the student may use.
        n_transfer: rows the teacher labels for the student (labels withheld); ``None``: all
            the rows that are not labelled.
        seed: seed of the draw (a ``numpy`` generator; the same seed gives the same split).

    Returns:
        ``(labelled_rows, transfer_rows)``, each sorted, with no row in both.

    Taught in notebook 05, section 5 (Where distillation earns its keep: few labels and a transfer set).
    """
    n_examples = _check_count(n_examples, "n_examples", allow_zero=False)
    n_labelled = _check_count(n_labelled, "n_labelled", allow_zero=False)
    if n_transfer is None:
        n_transfer = n_examples - n_labelled
    n_transfer = _check_count(n_transfer, "n_transfer", allow_zero=True)
    if n_labelled + n_transfer > n_examples:
        raise ValueError(
            f"n_labelled + n_transfer = {n_labelled} + {n_transfer} = {n_labelled + n_transfer} exceeds the "
            f"{n_examples} examples of the pool: draw a larger pool or ask for fewer rows"
        )
    order = np.random.default_rng(seed).permutation(n_examples)
    labelled = sorted(order[:n_labelled].tolist())
    transfer = sorted(order[n_labelled : n_labelled + n_transfer].tolist())
    return labelled, transfer


def few_label_dataset(split, labelled_rows: Sequence[int], transfer_rows: Sequence[int] = ()):
    """One ``datasets.Dataset``: the labelled rows (labels kept), then the transfer rows with
    their label replaced by :data:`WITHHELD`.

    Row ``k`` of the result is row ``(list(labelled_rows) + list(transfer_rows))[k]`` of
    ``split``, so teacher logits cached for ``split`` are aligned with it by
    ``logits[labelled_rows + transfer_rows]``. Columns and features are those of ``split``
    (``idx`` keeps each sentence's id).

    Taught in notebook 05, section 5 (Where distillation earns its keep: few labels and a transfer set).
    """
    from datasets import Dataset

    labelled_rows, transfer_rows = [int(i) for i in labelled_rows], [int(i) for i in transfer_rows]
    rows = labelled_rows + transfer_rows
    if not labelled_rows:
        raise ValueError("labelled_rows is empty: the student needs at least one labelled sentence")
    bad = [i for i in rows if not 0 <= i < len(split)]
    if bad:
        raise ValueError(f"rows {bad[:5]} are outside the split's {len(split)} rows")
    if len(set(rows)) != len(rows):
        both = sorted(set(labelled_rows) & set(transfer_rows))
        what = f"rows {both[:5]} are both labelled and transfer rows" if both else "a row is listed twice"
        raise ValueError(f"labelled and transfer rows must be distinct: {what}")
    if "label" not in split.column_names:
        raise ValueError(f"split must have a 'label' column; it has {split.column_names}")
    part = split.select(rows)
    columns = {name: part[name] for name in part.column_names}
    columns["label"] = list(columns["label"])[: len(labelled_rows)] + [WITHHELD] * len(transfer_rows)
    return Dataset.from_dict(columns, features=split.features)


def transfer_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Mean loss per row over a batch that mixes labelled and transfer rows.

    A labelled row (``label`` in ``[0, C)``) contributes ``alpha * KD + (1 - alpha) * CE``
    (:func:`~kd_lib.losses.distillation_loss`), a transfer row (``label == WITHHELD``) the
    soft-target term alone, ``T^2 KL(p_teacher(T) || p_student(T))``
    (:func:`~kd_lib.losses.kd_loss`)::

        loss = (n_lab * distillation_loss(labelled rows) + n_tr * kd_loss(transfer rows)) / B

    Args:
        student_logits, teacher_logits: ``[B, C]``.
        labels: ``[B]`` integer class indices, or ``WITHHELD`` for transfer rows.
        temperature: ``T > 0`` of the soft-target term.
        alpha: weight of the soft-target term on the *labelled* rows, in ``[0, 1]``.

    Taught in notebook 05, section 5 (Where distillation earns its keep: few labels and a transfer set).
    """
    temperature, alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            got = f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor of shape [B, C]; got {got}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape; got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    batch, num_classes = student_logits.shape
    if (
        not isinstance(labels, torch.Tensor)
        or labels.shape != (batch,)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else labels
        raise ValueError(f"labels must be an integer tensor of shape [{batch}]; got {got}")
    transfer = labels == WITHHELD
    bad = labels[~transfer & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}] or WITHHELD ({WITHHELD}) for transfer rows; got {bad[0].item()}"
        )
    total = student_logits.new_zeros(())
    n_transfer = int(transfer.sum())
    if n_transfer < batch:
        keep = ~transfer
        total = total + (batch - n_transfer) * distillation_loss(
            student_logits[keep], teacher_logits[keep], labels[keep], temperature, alpha
        )
    if n_transfer:
        total = total + n_transfer * kd_loss(student_logits[transfer], teacher_logits[transfer], temperature)
    return total / batch


def kd_with_transfer(teacher_logits: torch.Tensor, temperature: float = 2.0, alpha: float = 0.5):
    """A loss for :func:`kd_lib.training.fit`: :func:`transfer_loss` against cached teacher
    logits ``[N, C]`` (aligned with the dataset's rows, looked up by ``batch["row"]``).

    Taught in notebook 05, section 5 (Where distillation earns its keep: few labels and a transfer set).
    """
    return kd_from_cache(teacher_logits, temperature, alpha, criterion=transfer_loss)
