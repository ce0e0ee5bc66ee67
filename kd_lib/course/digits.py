"""Notebook 03's demo: knowledge distillation on scikit-learn's handwritten digits -- data, tiny
MLPs and tiny CNNs, one training loop.

The digits set (``sklearn.datasets.load_digits``) ships with scikit-learn, so everything here
runs offline in seconds: 1797 grey-scale images of 8 x 8 pixels, 10 classes (the digits 0-9),
pixel values 0-16.

Shapes used in the docstrings: ``N`` examples, ``D = 64`` features (the flattened pixels),
``C = 10`` classes. Every model here takes the flattened ``[N, 64]`` pixels -- the CNNs
(:func:`residual_cnn`, :func:`mobilenet_student`) reshape them to ``[N, 1, 8, 8]`` images
inside -- so :func:`train_classifier`, :func:`mlp_logits` and the saved logits serve them all.

Accuracy is measured with the library's :func:`kd_lib.evaluate.accuracy`.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.losses import check_alpha, check_temperature, distillation_loss
from kd_lib.utils import atomic_write_bytes

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "ResidualBlock",
    "load_digits_split",
    "load_tensor",
    "mlp",
    "mlp_logits",
    "mobilenet_student",
    "model_size",
    "multiply_adds",
    "paired_interval",
    "residual_cnn",
    "save_tensor",
    "stratified_subset",
    "train_classifier",
]

NUM_FEATURES = 64  # 8 x 8 pixels
IMAGE_SIZE = 8  # the images are IMAGE_SIZE x IMAGE_SIZE, one grey channel
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


def _check_widths(widths: Sequence[int], name: str, example: str) -> list[int]:
    widths = list(widths) if isinstance(widths, (list, tuple)) else widths
    if (
        not isinstance(widths, list)
        or len(widths) < 2
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
    ):
        raise ValueError(
            f"{name} must be a list or tuple of at least two positive integers, e.g. {example}; got {widths!r}"
        )
    changes = sum(a != b for a, b in itertools.pairwise(widths))
    if changes > 2:
        raise ValueError(
            f"{name} changes width {changes} times, but each change halves the 8 x 8 image and more than "
            f"two would shrink it below 2 x 2; use at most two changes, e.g. {example}; got {widths!r}"
        )
    return widths


def _conv_bn_relu(c_in: int, c_out: int, *, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    # bias=False: the BatchNorm right after has its own shift, so a conv bias would be redundant
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class ResidualBlock(nn.Module):
    """A basic ResNet block: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity when the block keeps the shape, and a strided 1 x 1 conv plus
    BatchNorm ("projection") when it changes the number of channels or the resolution, so that
    the two branches can be added.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: 1 keeps ``H x W``; 2 halves it (in the first conv and the shortcut).

    Shapes: ``[N, c_in, H, W]`` -> ``[N, c_out, H / stride, W / stride]`` (rounded up).

    Taught in notebook 03, section 10 (The same recipe on images: a residual CNN teacher, a MobileNet-style student).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(c_in, c_out, kernel=3, stride=stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        if c_in == c_out and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _image_model(stem_width: int, blocks: list[nn.Module], last_width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE)),  # [N, 64] -> [N, 1, 8, 8]
        *_conv_bn_relu(1, stem_width, kernel=3),  # the stem
        *blocks,
        nn.AdaptiveAvgPool2d(1),  # global average pooling: [N, c, h, w] -> [N, c, 1, 1]
        nn.Flatten(),
        nn.Linear(last_width, num_classes),
    )


def residual_cnn(widths: Sequence[int] = (16, 16, 32, 32), num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """A small ResNet-style CNN for the 8 x 8 digits (notebook 03's image teacher).

    Layout: a stem (3 x 3 conv ``1 -> widths[0]``, BatchNorm, ReLU), then one
    :class:`ResidualBlock` ``widths[i-1] -> widths[i]`` per further entry -- with stride 2 (and
    a 1 x 1 projection shortcut) where the width changes, an identity shortcut where it does
    not -- then global average pooling and a linear head. The default ``(16, 16, 32, 32)`` has
    three blocks: 16 -> 16 at 8 x 8, 16 -> 32 down to 4 x 4, 32 -> 32 at 4 x 4.

    Args:
        widths: channels of the stem and of each block's output; at least two entries (one
            block), at most two width changes (8 x 8 -> 4 x 4 -> 2 x 2).
        num_classes: outputs of the head.

    Returns:
        ``nn.Sequential`` mapping flattened pixels ``[N, 64]`` (reshaped inside to
        ``[N, 1, 8, 8]``) to logits ``[N, num_classes]``. It has BatchNorm, so call ``eval()``
        before inference (:func:`train_classifier` and :func:`mlp_logits` do); seed
        (``kd_lib.utils.set_seed``) before calling it for a reproducible init.

    Taught in notebook 03, section 10 (The same recipe on images: a residual CNN teacher, a MobileNet-style student).
    """
    widths = _check_widths(widths, "widths", "(16, 16, 32, 32)")
    _check_positive_int(num_classes, "num_classes")
    blocks = [ResidualBlock(a, b, stride=1 if a == b else 2) for a, b in itertools.pairwise(widths)]
    return _image_model(widths[0], blocks, widths[-1], num_classes)


def mobilenet_student(widths: Sequence[int] = (8, 16, 32), num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """A small MobileNet-style CNN built from depthwise-separable convolutions (notebook 03's
    image student).

    Layout: a stem (an ordinary 3 x 3 conv ``1 -> widths[0]``, BatchNorm, ReLU, as in MobileNet's
    first layer), then one depthwise-separable block ``widths[i-1] -> widths[i]`` per further
    entry, then global average pooling and a linear head. A depthwise-separable block is

    * a **depthwise** 3 x 3 conv with ``groups = channels``: each channel is filtered on its own
      (``9 c`` weights instead of ``9 c^2``), with stride 2 where the width changes;
    * a **pointwise** 1 x 1 conv ``c_in -> c_out`` that mixes the channels;

    each followed by BatchNorm and ReLU. The two convs are named ``depthwise`` and
    ``pointwise`` inside each block.

    Args:
        widths: channels of the stem and of each block's output; at least two entries, at most
            two width changes (8 x 8 -> 4 x 4 -> 2 x 2).
        num_classes: outputs of the head.

    Returns:
        ``nn.Sequential`` mapping flattened pixels ``[N, 64]`` (reshaped inside to
        ``[N, 1, 8, 8]``) to logits ``[N, num_classes]``; BatchNorm, so ``eval()`` before
        inference; seed before calling it for a reproducible init.

    Taught in notebook 03, section 10 (The same recipe on images: a residual CNN teacher, a MobileNet-style student).
    """
    widths = _check_widths(widths, "widths", "(8, 16, 32)")
    _check_positive_int(num_classes, "num_classes")
    blocks: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        dw_conv, dw_bn, dw_relu = _conv_bn_relu(a, a, kernel=3, stride=1 if a == b else 2, groups=a)
        pw_conv, pw_bn, pw_relu = _conv_bn_relu(a, b, kernel=1)
        layers = OrderedDict(
            depthwise=dw_conv, depthwise_bn=dw_bn, depthwise_relu=dw_relu,
            pointwise=pw_conv, pointwise_bn=pw_bn, pointwise_relu=pw_relu,
        )  # fmt: skip
        blocks.append(nn.Sequential(layers))
    return _image_model(widths[0], blocks, widths[-1], num_classes)


def multiply_adds(model: nn.Module, num_features: int = NUM_FEATURES) -> int:
    """Multiply-adds (MACs) of one forward pass for **one** input image, counted in the
    ``nn.Conv2d`` and ``nn.Linear`` layers.

    A conv producing ``c_out x h x w`` outputs with a ``k x k`` kernel and ``groups`` groups does
    ``c_out * h * w * (c_in / groups) * k * k`` multiply-adds; a linear layer ``in -> out`` does
    ``in * out``. BatchNorm, ReLU, pooling and the residual additions (a few operations per
    activation) are left out: they are small next to the convolutions. One MAC is two FLOPs.

    Args:
        model: maps ``[1, num_features]`` to logits (any model of this module).
        num_features: length of the flattened input, 64 for the digits.

    Returns:
        The count, an int.

    Taught in notebook 03, section 10 (The same recipe on images: a residual CNN teacher, a MobileNet-style student).
    """
    _check_positive_int(num_features, "num_features")
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = math.prod(module.kernel_size)
            total += output[0].numel() * (module.in_channels // module.groups) * k
        else:
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, num_features))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference ``a[i] - b[i]`` over seeds and its Student-t confidence interval.

    ``a[i]`` and ``b[i]`` must come from the same seed (same initial weights, same mini-batches),
    so that the luck of the seed cancels in the difference. With ``n`` pairs the interval is
    ``mean +- t_{(1 + confidence) / 2, n - 1} * stdev / sqrt(n)``, the t-interval of
    ``scipy.stats.ttest_rel``; it assumes the differences are roughly normal and independent
    across seeds. An interval that contains 0 means "no difference detectable with these seeds".

    Args:
        a, b: one number per seed each (e.g. test accuracies), same length ``n >= 2``, same
            seed order.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``(mean, low, high)`` of the differences, in the units of ``a`` and ``b``.

    Taught in notebook 03, section 10 (The same recipe on images: a residual CNN teacher, a MobileNet-style student).
    """
    from scipy.stats import t as student_t

    a, b = list(a), list(b)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"a and b need one value per seed, the same number (at least 2, to estimate the spread); "
            f"got {len(a)} and {len(b)}"
        )
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a probability in (0, 1), e.g. 0.95; got {confidence!r}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    half = float(student_t.ppf((1 + confidence) / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


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

    Works for every model of this module -- the MLPs and the CNNs (:func:`residual_cnn`,
    :func:`mobilenet_student`), which reshape ``X`` themselves. ``eval()`` switches dropout off
    and makes BatchNorm use its running statistics, so the result is deterministic and each
    row depends only on its own image; the model is left in ``eval()`` mode.

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
