"""Many teachers: ensemble soft targets, per-teacher weights, and data split among clients.

Conventions: ``K`` teachers, ``N`` examples, ``C`` classes. Teacher logits come as a tensor
``[K, N, C]`` or a sequence of ``K`` tensors ``[N, C]``.

Two ways to combine ``K`` teachers at temperature ``T`` (weights ``w_k >= 0``, summing to 1):

* **average the probabilities** (``mode="probs"``): ``p = sum_k w_k softmax(z_k / T)``, a
  *mixture*. A teacher that is unsure pulls the target towards uniform; the target is never
  more confident than the most confident teacher.
* **average the logits** (``mode="logits"``): ``p = softmax(sum_k w_k z_k / T)``, the
  normalised weighted *geometric* mean of the teachers' probabilities (a product of experts).
  Confident teachers dominate, and when teachers agree the target is sharper than any of them.

:func:`ensemble_logits` turns either target into logits ``z`` with ``softmax(z / T) = p``, so the
ordinary :func:`~kd_lib.losses.kd_loss` and :func:`~kd_lib.distill.kd_from_cache` distil from an
ensemble unchanged.

Federated distillation needs data that never leaves its client: :func:`client_split` deals the
row positions of a dataset to clients (equal shares, or label-skewed shares drawn from a
Dirichlet distribution), disjoint and covering every row. :func:`hide_labels` makes the public
transfer text label-free, and :func:`train_once` caches the models trained on each client.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import torch

from kd_lib.cache import cache_dir, cached_model, config_key
from kd_lib.losses import check_temperature, softmax_t
from kd_lib.transfer import WITHHELD
from kd_lib.utils import quiet_hf

__all__ = [
    "MODES",
    "accuracy_weights",
    "client_split",
    "confidence_weights",
    "ensemble_logits",
    "ensemble_probs",
    "hide_labels",
    "train_once",
]

MODES = ("probs", "logits")


def _stack(teacher_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Teacher logits as one float tensor ``[K, N, C]``."""
    if isinstance(teacher_logits, torch.Tensor):
        stacked = teacher_logits
    else:
        if not isinstance(teacher_logits, Sequence) or not teacher_logits:
            raise ValueError(
                "teacher_logits must be a tensor [K, N, C] or a non-empty list of [N, C] tensors; "
                f"got {teacher_logits!r}"
            )
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in teacher_logits]
        if len(set(shapes)) != 1 or not all(isinstance(t, torch.Tensor) for t in teacher_logits):
            raise ValueError(f"every teacher's logits must be a tensor of the same shape [N, C]; got {shapes}")
        stacked = torch.stack(list(teacher_logits))
    if stacked.dim() != 3 or not stacked.is_floating_point():
        raise ValueError(
            f"teacher_logits must be floating-point logits of shape [K, N, C]; got shape {tuple(stacked.shape)}, "
            f"dtype {stacked.dtype}"
        )
    return stacked


def _check_weights(weights, n_teachers: int, n_examples: int, like: torch.Tensor) -> torch.Tensor:
    """Weights as ``[K, 1, 1]`` (one per teacher) or ``[K, N, 1]`` (per teacher and example)."""
    if weights is None:
        return like.new_full((n_teachers, 1, 1), 1.0 / n_teachers)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if tuple(w.shape) not in {(n_teachers,), (n_teachers, n_examples)}:
        raise ValueError(
            f"weights must have shape [K] = [{n_teachers}] (one per teacher) or [K, N] = [{n_teachers}, {n_examples}] "
            f"(per teacher and example); got {tuple(w.shape)}"
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0; got min {w.min().item():.4g}")
    sums = w.reshape(n_teachers, -1).sum(0)  # [1] or [N]
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        worst = sums[(sums - 1).abs().argmax()].item()
        raise ValueError(
            f"weights must sum to 1 over the {n_teachers} teachers; one sum is {worst:.6g} "
            "(divide them by their sum, e.g. weights / weights.sum(0))"
        )
    return w.reshape(n_teachers, -1, 1)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (average the probabilities or the logits); got {mode!r}")
    return mode


def ensemble_probs(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float = 1.0,
    weights: torch.Tensor | Sequence[float] | None = None,
    mode: str = "probs",
) -> torch.Tensor:
    """The ensemble's class probabilities at temperature ``T``.

    Args:
        teacher_logits: ``[K, N, C]``, or a list of ``K`` tensors ``[N, C]``.
        temperature: ``T > 0``, applied to every teacher.
        weights: ``None`` (every teacher ``1 / K``), ``[K]`` (one weight per teacher) or
            ``[K, N]`` (per teacher and example); non-negative, summing to 1 over the teachers.
        mode: ``"probs"``: ``sum_k w_k softmax(z_k / T)``; ``"logits"``:
            ``softmax(sum_k w_k z_k / T)``.

    Returns:
        ``[N, C]``, non-negative, each row summing to 1.

    Taught in notebook 10, section 1 (One target from several teachers).
    """
    mode = _check_mode(mode)
    temperature = check_temperature(temperature)
    z = _stack(teacher_logits)
    w = _check_weights(weights, z.shape[0], z.shape[1], z)
    if mode == "probs":
        return (w * softmax_t(z, temperature)).sum(0)
    return softmax_t((w * z).sum(0), temperature)


def ensemble_logits(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float = 1.0,
    weights: torch.Tensor | Sequence[float] | None = None,
    mode: str = "probs",
) -> torch.Tensor:
    """Logits ``[N, C]`` whose softmax at ``T`` is :func:`ensemble_probs` (same arguments).

    ``mode="logits"`` returns the weighted mean of the logits, valid at every temperature.
    ``mode="probs"`` returns ``T * log p`` (probabilities below the smallest positive float are
    clamped to it, so the logits stay finite): valid **at this temperature only** -- distil from
    them with the same ``T`` (``kd_from_cache(ensemble_logits(z, T), T, ...)``).

    Taught in notebook 10, section 1 (One target from several teachers).
    """
    if _check_mode(mode) == "logits":
        z = _stack(teacher_logits)
        check_temperature(temperature)
        return (_check_weights(weights, z.shape[0], z.shape[1], z) * z).sum(0)
    probs = ensemble_probs(teacher_logits, temperature, weights, mode)
    return temperature * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def accuracy_weights(accuracies: Sequence[float] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """One weight per teacher from its held-out accuracy: how far it is above chance.

    ``w_k = max(acc_k - 1/C, 0) / sum_j max(acc_j - 1/C, 0)``: a teacher at chance level gets
    weight 0, one twice as far above chance twice the weight. Measure the accuracies on labelled
    data that is neither the test set nor the teachers' training data.

    Returns:
        ``[K]`` float weights summing to 1.

    Taught in notebook 10, section 1 (One target from several teachers).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    acc = torch.as_tensor(accuracies, dtype=torch.float64)
    if acc.dim() != 1 or acc.numel() == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D sequence, one per teacher; got shape {tuple(acc.shape)}")
    if not torch.isfinite(acc).all() or (acc < 0).any() or (acc > 1).any():
        raise ValueError(f"accuracies must be fractions in [0, 1]; got {acc.tolist()}")
    above = (acc - 1.0 / num_classes).clamp_min(0.0)
    if above.sum() == 0:
        raise ValueError(
            f"every teacher is at or below chance (1/{num_classes} = {1 / num_classes:.3f}): "
            f"accuracies {acc.tolist()}; "
            "there is nothing to weight -- check the teachers and the held-out labels"
        )
    return (above / above.sum()).float()


def confidence_weights(teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Per-example weights from each teacher's confidence: ``w_k(i) ∝ max_c p_k(c | x_i)``.

    Needs no labels. A teacher that is sure about an example counts more *on that example* --
    right or wrong.

    Returns:
        ``[K, N]`` weights, summing to 1 over the teachers for every example.

    Taught in notebook 10, section 1 (One target from several teachers).
    """
    z = _stack(teacher_logits)
    top = softmax_t(z, temperature).amax(-1)
    return top / top.sum(0, keepdim=True)


def _labels_array(labels) -> np.ndarray:
    array = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else list(labels))
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D sequence of integer class ids; got {array.dtype}, shape {array.shape}"
        )
    return array


def client_split(
    labels_or_n: int | Sequence[int] | torch.Tensor,
    n_clients: int,
    *,
    seed: int = 0,
    alpha: float | None = None,
    min_size: int = 1,
) -> list[list[int]]:
    """Deal the rows ``0 .. N-1`` of a dataset to ``n_clients`` clients; no row goes to two.

    Args:
        labels_or_n: the dataset's labels ``[N]`` (needed for ``alpha``), or just ``N``.
        n_clients: number of clients ``K``, ``1 <= K <= N``.
        seed: seed of the ``numpy`` generator; the same arguments give the same split.
        alpha: ``None``: IID -- a random permutation cut into ``K`` shares whose sizes differ by
            at most 1. A number ``> 0``: label skew -- for every class, the fractions of its rows
            that go to each client are drawn from ``Dirichlet(alpha, ..., alpha)`` (Hsu et al.,
            2019). Small ``alpha`` (0.1) gives each client mostly one class and very unequal
            sizes; large ``alpha`` (100) approaches the IID split.
        min_size: every client gets at least this many rows; label-skewed splits are redrawn
            (up to 100 times) until they do.

    Returns:
        ``K`` sorted lists of row positions, pairwise disjoint, together covering ``0 .. N-1``.

    Taught in notebook 10, section 2 (Dealing the data to clients, with no sentence in two places).
    """
    if isinstance(labels_or_n, int | np.integer) and not isinstance(labels_or_n, bool):
        labels, n = None, int(labels_or_n)
        if n < 1:
            raise ValueError(f"labels_or_n must be a positive number of rows or a sequence of labels; got {n}")
    else:
        labels = _labels_array(labels_or_n)
        n = labels.size
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer) or not 1 <= n_clients <= n:
        raise ValueError(f"n_clients must be an int between 1 and the {n} rows; got {n_clients!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or not 1 <= min_size * n_clients <= n:
        raise ValueError(
            f"min_size must be an int >= 1 with min_size * n_clients <= {n} rows; "
            f"got {min_size!r} for {n_clients} clients"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        shares = np.array_split(rng.permutation(n), n_clients)
        return [sorted(int(i) for i in share) for share in shares]
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 (e.g. 0.5), or None for an IID split; got {alpha!r}")
    if labels is None:
        raise ValueError("a label-skewed split (alpha given) needs the labels: pass them instead of the number of rows")
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            fractions = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = np.round(np.cumsum(fractions)[:-1] * rows.size).astype(int)
            for share, part in zip(shares, np.split(rows, cuts), strict=True):
                share.extend(int(i) for i in part)
        if min(len(s) for s in shares) >= min_size:
            return [sorted(s) for s in shares]
    raise ValueError(
        f"no split with at least min_size={min_size} rows per client in 100 draws (alpha={alpha}, {n_clients} clients, "
        f"{n} rows): raise alpha, lower min_size, or use fewer clients"
    )


def hide_labels(split):
    """A copy of a ``datasets.Dataset`` whose every label is :data:`~kd_lib.transfer.WITHHELD` (-1).

    The public transfer text of federated distillation has no labels; withholding them (rather
    than dropping the column) keeps it usable by ``EncodedDataset`` and makes any accidental use
    fail: cross-entropy and ``distillation_loss`` reject the label -1, while
    :func:`kd_lib.transfer.kd_with_transfer` trains on such rows with the soft targets alone.

    Taught in notebook 10, section 2 (Dealing the data to clients, with no sentence in two places).
    """
    from datasets import Dataset, Value

    if "label" not in split.column_names:
        raise ValueError(f"split must have a 'label' column; it has {split.column_names}")
    features = split.features.copy()
    features["label"] = Value("int64")
    columns = {name: split[name] if name != "label" else [WITHHELD] * len(split) for name in split.column_names}
    return Dataset.from_dict(columns, features=features)  # a new table: no progress bar, no link to the labels


def train_once(
    name: str,
    config: dict,
    train: Callable[[], tuple[torch.nn.Module, dict]],
    *,
    cache_root: str | os.PathLike | None = None,
):
    """Return ``(model, info)``: from the cache if a model with this ``config`` was trained
    before, else ``train()`` it and cache it.

    Args:
        name: prefix of the cache folder, e.g. ``"sst2-client0"``.
        config: everything that determines the trained model (JSON-serialisable: the data's
            example ids, layers, settings, seed, ...); its hash names the folder.
        train: returns a trained Hugging Face model (with ``save_pretrained``) and an ``info``
            dict (JSON-serialisable, e.g. accuracy and wall time).
        cache_root: default :func:`kd_lib.cache.cache_dir`; the model goes to
            ``cache_root/models/<name>-<hash of config>``, written atomically.

    Returns:
        The model (eval mode, CPU) and ``info`` plus ``folder`` and ``from_cache``.

    Taught in notebook 10, section 3 (A teacher per client, and the pooled model).
    """
    from transformers import AutoModelForSequenceClassification

    if not name or "/" in name or os.sep in name:
        raise ValueError(f"name must be a non-empty folder name without path separators; got {name!r}")
    root = Path(cache_root) if cache_root is not None else cache_dir()

    def load(folder: Path):
        with quiet_hf():
            return AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()

    def train_and_record(_scratch: Path):
        model, info = train()
        return model.eval(), (model,), {**info, "config": config}

    return cached_model(root / "models" / f"{name}-{config_key(config)}", load, train_and_record)
