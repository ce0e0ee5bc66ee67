"""Measuring models: accuracy, agreement, calibration, size, throughput and latency.

- **Beyond accuracy**: :func:`agreement` (how often two models predict the same class),
  :func:`expected_calibration_error` and :func:`reliability_bins` / :func:`reliability_diagram`
  (does a model's confidence match how often it is right?). :func:`accuracy` is
  :func:`kd_lib.training.accuracy`, re-exported here.
- **Cost**: :func:`count_params`, :func:`size_on_disk_mb` (also for int8-quantized models) and
  :func:`measure_speed`; :func:`pareto_front` picks the models that no other beats on every count.

Timing rules :func:`measure_speed` follows (and the notebooks explain): warm up first (the first
calls allocate memory and pick kernels), time the models *alternately* in the same process so
that a slower moment of the machine hits all of them, repeat, and report the median.
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.compress import QUANTIZED_MODULE_PREFIX, is_quantized
from kd_lib.data import EncodedDataset
from kd_lib.training import accuracy

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "agreement",
    "alternating_medians",
    "count_params",
    "expected_calibration_error",
    "measure_speed",
    "pareto_front",
    "reliability_bins",
    "reliability_diagram",
    "size_on_disk_mb",
    "state_dict_mb",
]


def _check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, C] with N >= 1 and C >= 2 classes; got {got}")
    return logits


def _check_labels(labels, logits: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    n, c = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per row of logits); got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.min() < 0 or labels.max() >= c:
        lo, hi = labels.min().item(), labels.max().item()
        raise ValueError(f"labels must be integer classes in [0, {c - 1}]; got values {lo}..{hi}")
    return labels


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows on which two models predict the same class (arg-max of logits ``[N, C]``).

    Unlike accuracy, it needs no labels: a compressed model with 97 % agreement changed 3 % of
    the original's decisions, whatever their accuracies say (two models can have the same
    accuracy and disagree on many examples).

    Taught in notebook 07, section 1 (Accuracy, and how often the two models agree).
    """
    _check_logits(a_logits, "a_logits")
    _check_logits(b_logits, "b_logits")
    if a_logits.shape != b_logits.shape:
        raise ValueError(f"a_logits and b_logits must have the same shape; got {tuple(a_logits.shape)} "
                         f"and {tuple(b_logits.shape)}")
    return (a_logits.argmax(-1) == b_logits.argmax(-1)).float().mean().item()


@dataclass(frozen=True)
class ReliabilityBins:
    """Predictions grouped by confidence: bin ``b`` holds the rows with ``edges[b] < confidence <= edges[b+1]``.

    Attributes (float64 tensors, ``n_bins`` = ``len(count)``):
        edges: ``[n_bins + 1]``, equal widths from 0 to 1.
        count: ``[n_bins]`` (int64) predictions per bin.
        accuracy: ``[n_bins]`` fraction correct per bin; NaN for an empty bin.
        confidence: ``[n_bins]`` mean confidence (the top softmax probability) per bin; NaN if empty.

    Taught in notebook 07, section 2 (Calibration: can the confidence be trusted?).
    """

    edges: torch.Tensor
    count: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor

    @property
    def ece(self) -> float:
        """Expected calibration error: ``Σ_b (count_b / N) · |accuracy_b - confidence_b|`` over non-empty bins."""
        full = self.count > 0
        weights = self.count[full].double() / self.count.sum()
        return (weights * (self.accuracy[full] - self.confidence[full]).abs()).sum().item()


def reliability_bins(logits: torch.Tensor, labels, n_bins: int = 15) -> ReliabilityBins:
    """Group the predictions of ``logits`` ``[N, C]`` by confidence into ``n_bins`` equal-width bins.

    The confidence of a row is its largest softmax probability (in float64), its prediction the
    arg-max; ``labels`` ``[N]`` are the true classes.

    Taught in notebook 07, section 2 (Calibration: can the confidence be trusted?).
    """
    _check_logits(logits)
    labels = _check_labels(labels, logits)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int (15 is usual for ECE, 10 for plots); got {n_bins!r}")
    confidence, predicted = F.softmax(logits.double(), dim=-1).max(dim=-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1])  # bin b: edges[b] < confidence <= edges[b + 1]
    count = torch.bincount(which, minlength=n_bins)
    denominator = count.double().where(count > 0, torch.tensor(math.nan, dtype=torch.float64))
    return ReliabilityBins(
        edges=edges,
        count=count,
        accuracy=torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, correct) / denominator,
        confidence=torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, confidence) / denominator,
    )


def expected_calibration_error(logits: torch.Tensor, labels, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017) of ``logits`` ``[N, C]`` against ``labels`` ``[N]``.

    ``ECE = Σ_b (n_b / N) · |acc_b - conf_b|`` over ``n_bins`` equal-width confidence bins: the
    average gap, in probability (0 = calibrated, 1 = worst), between how sure the model is and
    how often it is right. Small bins are noisy, so compare ECEs measured with the same ``n_bins``
    on the same data.

    Taught in notebook 07, section 2 (Calibration: can the confidence be trusted?).
    """
    return reliability_bins(logits, labels, n_bins).ece


def reliability_diagram(logits: torch.Tensor, labels, n_bins: int = 10, ax=None, title: str | None = None):
    """Draw a reliability diagram on a matplotlib ``ax`` (a new figure if None) and return the Axes.

    Bars: accuracy per confidence bin; red outlines: the gap to the bin's mean confidence; dashed
    diagonal: perfect calibration. The ECE (with these ``n_bins``) and ``title`` go in the title.
    Bins with fewer than 1 % of the predictions are drawn lighter: their accuracy is noise.

    Taught in notebook 07, section 2 (Calibration: can the confidence be trusted?).
    """
    import matplotlib.pyplot as plt

    bins = reliability_bins(logits, labels, n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.4, 3.2), dpi=90)
    centres = ((bins.edges[:-1] + bins.edges[1:]) / 2).numpy()
    width = 1 / n_bins
    full = (bins.count > 0).numpy()
    rare = (bins.count < 0.01 * bins.count.sum()).numpy()
    acc, conf = bins.accuracy.numpy(), bins.confidence.numpy()
    ax.bar(centres[full], acc[full], width=width * 0.95, color=["#9ecae1" if r else "tab:blue" for r in rare[full]],
           label="accuracy")
    ax.bar(centres[full], (conf - acc)[full], bottom=acc[full], width=width * 0.95, fill=False, edgecolor="tab:red",
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title + ': ' if title else ''}ECE {bins.ece:.3f}", fontsize=10)
    return ax


def pareto_front(accuracy: Sequence[float], *costs: Sequence[float]) -> list[bool]:
    """Which models are Pareto-optimal: higher ``accuracy`` is better, lower ``costs`` are better.

    Model ``i`` is on the front unless some model ``j`` is at least as good on every count
    (accuracy and each cost) and strictly better on one.

    Args:
        accuracy: ``[M]`` one value per model.
        costs: one or more sequences ``[M]`` (latency, megabytes, …).

    Returns:
        ``[M]`` booleans, True for the models on the front.

    Taught in notebook 07, section 7 (Speed and size, measured together).
    """
    if not costs:
        raise ValueError("pareto_front needs at least one cost (e.g. latency) besides the accuracy")
    if any(len(c) != len(accuracy) for c in costs):
        lengths = [len(c) for c in costs]
        raise ValueError(f"every cost needs one value per model ({len(accuracy)}); got lengths {lengths}")
    points = [(-a, *c) for a, *c in zip(accuracy, *costs, strict=True)]  # all "lower is better"

    def dominates(p, q) -> bool:
        return all(x <= y for x, y in zip(p, q, strict=True)) and p != q

    return [not any(dominates(q, p) for q in points) for p in points]


def count_params(model: nn.Module) -> int:
    """Number of parameters (tied weights counted once), quantized weights included.

    A ``torch.ao`` quantized layer keeps its int8 weight and bias outside ``parameters()``;
    they are counted here, so a quantized copy has as many parameters as the original.

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for module in model.modules():
        if type(module).__module__.startswith(QUANTIZED_MODULE_PREFIX) and callable(getattr(module, "weight", None)):
            n += module.weight().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            n += bias.numel() if bias is not None else 0
    return n


def state_dict_mb(model: nn.Module) -> float:
    """Size in MB (10^6 bytes) of ``torch.save(model.state_dict())``, measured in memory.

    Taught in notebook 07, section 7 (Speed and size, measured together).
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def size_on_disk_mb(model: nn.Module) -> float:
    """Size of the model's weights on disk, in MB (10^6 bytes).

    A float Hugging Face model is saved as safetensors (``save_pretrained``) and the files are
    measured. safetensors cannot store the packed int8 weights of a quantized model (nor does
    ``save_pretrained`` exist on a plain ``nn.Module``): those are measured as
    :func:`state_dict_mb`, the bytes of ``torch.save(state_dict)``, which for a float model is
    within a fraction of a percent of the safetensors size (a test checks it).

    Taught in notebook 05, section 4 (The comparison: teacher, KD student, CE student, random student).
    """
    from kd_lib.utils import quiet_hf

    if is_quantized(model) or not hasattr(model, "save_pretrained"):
        return state_dict_mb(model)
    with tempfile.TemporaryDirectory() as tmp, quiet_hf():
        model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors")) / 1e6


def _batches(data: EncodedDataset, batch_size: int, n_batches: int) -> list[dict]:
    batches = []
    for batch in data.loader(batch_size):
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        if len(batches) == n_batches:
            break
    return batches


@torch.no_grad()
def measure_speed(
    models: dict[str, nn.Module],
    data: EncodedDataset,
    *,
    batch_size: int = 64,
    n_batches: int = 4,
    latency_examples: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Throughput (examples/s at ``batch_size``) and batch-1 latency (ms) of each model.

    All models see the same real batches (dynamic padding, the first ``n_batches`` batches of
    ``data``). After ``warmup`` untimed passes the models are timed in alternation, ``repeats``
    rounds (each round starts with the next model, so none always runs first), and the median
    round is reported.

    Returns:
        ``{name: {"throughput_per_s": …, "latency_ms_batch1": …}}``.

    Raises:
        ValueError: a quantized model (see :mod:`kd_lib.compress`) with a device other than the CPU;
            a count below 1 (``warmup`` below 0).

    Taught in notebook 05, section 4 (The comparison: teacher, KD student, CE student, random student).
    """
    for name, value, least in (("batch_size", batch_size, 1), ("n_batches", n_batches, 1),
                               ("latency_examples", latency_examples, 1), ("repeats", repeats, 1),
                               ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}; got {value!r}")
    device = torch.device(device)
    on_cpu_only = [name for name, model in models.items() if is_quantized(model)]
    if on_cpu_only and device.type != "cpu":
        raise ValueError(f"{on_cpu_only} are int8-quantized and run on the CPU only; measure them with device='cpu'")
    batches = _batches(data, batch_size, n_batches)
    singles = _batches(data, 1, latency_examples)
    n_examples = sum(b["input_ids"].shape[0] for b in batches)
    for model in models.values():
        model.to(device).eval()

    def run(model: nn.Module, inputs: list[dict]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in inputs:
            model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    jobs = {name: (lambda model=model: (run(model, batches), run(model, singles) / len(singles)))
            for name, model in models.items()}
    medians = alternating_medians(jobs, repeats=repeats, warmup=warmup)
    return {
        name: {"throughput_per_s": n_examples / batch_s, "latency_ms_batch1": 1000 * single_s}
        for name, (batch_s, single_s) in medians.items()
    }


def alternating_medians(
    jobs: dict[str, Callable[[], Sequence[float]]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Time several jobs fairly: each returns the seconds of its timed parts; after ``warmup`` untimed
    rounds the jobs run in alternation, ``repeats`` rounds, each round starting with the next job (so
    none always runs first and a slow moment of the machine hits all of them); returns the median of
    each part, per job.

    Taught in notebook 07, section 7 (Speed and size, measured together).
    """
    for _ in range(warmup):
        for job in jobs.values():
            job()
    times: dict[str, list[Sequence[float]]] = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(jobs[name]())
    return {name: [statistics.median(part) for part in zip(*rounds, strict=True)] for name, rounds in times.items()}

