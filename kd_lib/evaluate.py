"""Measuring models: size, throughput and latency, measured fairly.

Timing rules the helpers follow (and the notebooks explain): warm up first (the first calls
allocate memory and pick kernels), time the models *alternately* in the same process so that
a slower moment of the machine hits both, repeat, and report the median.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from kd_lib.data import EncodedDataset

__all__ = ["count_params", "measure_speed", "size_on_disk_mb"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def size_on_disk_mb(model: nn.Module) -> float:
    """Size of the model's weights saved as safetensors, in MB (10^6 bytes)."""
    from kd_lib.utils import quiet_hf

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
    rounds, and the median round is reported.

    Returns:
        ``{name: {"throughput_per_s": …, "latency_ms_batch1": …}}``.
    """
    device = torch.device(device)
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

    for _ in range(warmup):
        for model in models.values():
            run(model, batches)
            run(model, singles[:4])
    times: dict[str, list[float]] = {name: [] for name in models}
    lat: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(run(model, batches))
            lat[name].append(run(model, singles) / len(singles))
    return {
        name: {
            "throughput_per_s": n_examples / statistics.median(times[name]),
            "latency_ms_batch1": 1000 * statistics.median(lat[name]),
        }
        for name in models
    }


def num_threads_note() -> str:
    """A one-line description of the CPU threads used, for reports."""
    return f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs"
