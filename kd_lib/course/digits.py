"""Notebook 03's demo: knowledge distillation on scikit-learn's handwritten digits -- data, tiny
MLPs, one training loop.

The digits set (``sklearn.datasets.load_digits``) ships with scikit-learn, so everything here
runs offline in seconds: 1797 grey-scale images of 8 x 8 pixels, 10 classes (the digits 0-9),
pixel values 0-16.

Shapes used in the docstrings: ``N`` examples, ``D = 64`` features (the flattened pixels),
``C = 10`` classes.

Accuracy is measured with the library's :func:`kd_lib.evaluate.accuracy`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.losses import check_alpha, check_temperature, distillation_loss
from kd_lib.utils import atomic_write_bytes

__all__ = [
    "NUM_CLASSES",
    "NUM_FEATURES",
    "load_digits_split",
    "load_tensor",
    "mlp",
    "mlp_logits",
    "model_size",
    "save_tensor",
    "stratified_subset",
    "train_classifier",
]

NUM_FEATURES = 64  # 8 x 8 pixels
NUM_CLASSES = 10
_TENSOR_KEY = "logits"  # the name of the one tensor in a file of save_tensor


def load_digits_split(
    test_size: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load the bundled digits and make a fixed, stratified train/test split.

    Pixels are scaled from 0-16 to [0, 1]. The split is stratified (every class keeps its
    share in both parts) and depends only on ``seed``.

    Args:
        test_size: fraction of the 1797 images held out for testing, in (0, 1).
        seed: seed of the split.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: ``X_*`` float32 of shape ``[N, 64]`` in [0, 1],
        ``y_*`` int64 of shape ``[N]`` in ``0..9``. With the defaults, N = 1347 train and
        450 test.

    Taught in notebook 03, section 1 (The data: a fixed, stratified split).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), e.g. 0.25; got {test_size!r}")
    data = load_digits()
    x = data.data.astype("float32") / 16.0
    y = data.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
    )


def stratified_subset(y: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Row indices of a random subset with exactly ``per_class`` examples of every class.

    Used to simulate "few labels": e.g. ``per_class=10`` picks 100 of the 1347 training images.

    Args:
        y: int64 labels ``[N]`` with classes ``0..C-1``.
        per_class: examples to draw from each class, at most the size of the smallest class.
        seed: seed of the draw (the result depends only on ``y``, ``per_class`` and ``seed``).

    Returns:
        int64 tensor ``[C * per_class]`` of distinct row indices, sorted in increasing order.

    Taught in notebook 03, section 6 (Few labels: where the teacher's knowledge pays off).
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or len(y) == 0:
        raise ValueError("y must be a non-empty integer tensor of shape [N]")
    _check_positive_int(per_class, "per_class")
    counts = torch.bincount(y)
    if (counts == 0).any() or per_class > int(counts.min()):
        raise ValueError(
            f"per_class={per_class} is larger than the smallest class ({int(counts.min())} examples; "
            f"class counts {counts.tolist()})"
        )
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(counts)):
        rows = torch.nonzero(y == c).flatten()
        picks.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """A multi-layer perceptron ``Linear -> ReLU (-> Dropout) -> ... -> Linear``.

    Args:
        sizes: layer widths from input to output, e.g. ``(64, 32, 10)`` is one hidden layer of
            32 units; at least two entries (``(64, 10)`` is multinomial logistic regression).
        dropout: dropout probability after each hidden ReLU, in [0, 1).

    Returns:
        ``nn.Sequential`` mapping ``[N, sizes[0]]`` to logits ``[N, sizes[-1]]``. PyTorch's
        default initialisation is used, so seed (``kd_lib.utils.set_seed``) before calling it
        for a reproducible init.

    Taught in notebook 03, section 2 (The teacher).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least two positive integers, e.g. (64, 32, 10); got {sizes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:  # hidden layer
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"X must be a float tensor of shape [N, D]; got {got}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape [N]; got {got}")
    if len(x) != len(y):
        raise ValueError(f"X and y must have the same number of rows; got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("X is empty: there is nothing to train on")


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def train_classifier(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train ``model`` in place with Adam: cross-entropy, or distillation from fixed teacher logits.

    One loop serves both cases, so a CE student and a KD student given the same initial
    weights and the same ``seed`` see exactly the same mini-batches in the same order:

    * ``teacher_logits is None``: loss = ``cross_entropy(model(x), y)``;
    * otherwise: loss = ``distillation_loss(model(x), teacher_logits[idx], y, temperature,
      alpha)``, where ``idx`` are the *same* row indices used to pick the batch from ``X``
      and ``y``, so the teacher's logits stay aligned with their examples after shuffling.

    The shuffling and dropout are driven by ``seed`` alone (inside a forked RNG, so the
    global torch RNG is left untouched): same model init + same seed -> identical weights.

    Args:
        model: maps ``[B, D]`` to logits ``[B, C]``; modified in place.
        X: float tensor ``[N, D]``.
        y: int64 labels ``[N]``.
        epochs: passes over the data (each a fresh shuffle; the last batch may be smaller).
        lr: Adam learning rate, > 0.
        batch_size: examples per step (capped at N).
        seed: seed of the shuffling and of dropout.
        teacher_logits: optional float tensor ``[N, C]``, row ``i`` being the teacher's logits
            for ``X[i]`` (computed once, e.g. loaded with :func:`load_tensor`).
        temperature: softmax temperature of the KD term (only used with ``teacher_logits``).
        alpha: weight of the KD term in [0, 1] (only used with ``teacher_logits``).
        weight_decay: Adam's L2 penalty, >= 0.

    Returns:
        The same ``model``, switched to ``eval()`` mode.

    Taught in notebook 03, section 2 (The teacher).
    """
    _check_xy(X, y)
    _check_positive_int(epochs, "epochs")
    _check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, e.g. 1e-3; got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0; got {weight_decay!r}")
    if teacher_logits is not None:
        if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2:
            got = (
                f"shape {tuple(teacher_logits.shape)}"
                if isinstance(teacher_logits, torch.Tensor)
                else type(teacher_logits).__name__
            )
            raise ValueError(f"teacher_logits must be a tensor of shape [N, C]; got {got}")
        if len(teacher_logits) != len(X):
            raise ValueError(
                f"teacher_logits must have one row per training example (row i = logits for X[i]); "
                f"got {len(teacher_logits)} rows for {len(X)} examples"
            )
        if not teacher_logits.is_floating_point():
            raise ValueError(f"teacher_logits must be floating point; got dtype {teacher_logits.dtype}")
        temperature = check_temperature(temperature)
        alpha = check_alpha(alpha)
        teacher_logits = teacher_logits.detach().to(X.dtype)

    n = len(X)
    batch_size = min(batch_size, n)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # drives dropout
        generator = torch.Generator().manual_seed(seed)  # drives the shuffling
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = model(X[idx])
                if teacher_logits is None:
                    loss = F.cross_entropy(logits, y[idx])
                else:
                    loss = distillation_loss(logits, teacher_logits[idx], y[idx], temperature, alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


def mlp_logits(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, C]`` for ``X`` ``[N, D]``, with the model in ``eval()`` mode and no autograd.

    ``eval()`` switches dropout off, so the result is deterministic; the model is left in
    ``eval()`` mode.

    Taught in notebook 03, section 2 (The teacher).
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        got = f"shape {tuple(X.shape)}" if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X must be a tensor of shape [N, D]; got {got}")
    model.eval()
    with torch.no_grad():
        return model(X)


def model_size(model: nn.Module) -> tuple[int, int]:
    """``(number of parameters, bytes they occupy)`` -- float32 weights take 4 bytes each.

    Taught in notebook 03, section 2 (The teacher).
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def save_tensor(path: str | os.PathLike, logits: torch.Tensor) -> Path:
    """Save one floating-point tensor -- here the teacher's logits ``[N, C]`` -- to a safetensors
    file, atomically.

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written file that :func:`load_tensor` would read as valid. (The library's logit cache,
    :func:`kd_lib.cache.save_logits`, also records which examples and which teacher the rows
    belong to; notebook 03 needs just the tensor.)

    Taught in notebook 03, section 3 (Offline distillation: the teacher's logits, computed once).
    """
    from safetensors.torch import save

    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor; got {type(logits).__name__}")
    data = save({_TENSOR_KEY: logits.detach().cpu().contiguous()})
    return atomic_write_bytes(path, data)


def load_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Load a tensor written by :func:`save_tensor` (safetensors: data only, no code is run).

    Taught in notebook 03, section 3 (Offline distillation: the teacher's logits, computed once).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if _TENSOR_KEY not in tensors:
        raise ValueError(f"{path} holds no {_TENSOR_KEY!r} tensor (keys: {sorted(tensors)})")
    return tensors[_TENSOR_KEY]
