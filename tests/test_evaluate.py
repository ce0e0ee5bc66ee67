"""kd_lib.evaluate: agreement, calibration (ECE, reliability bins and diagram), Pareto front, size, speed."""

from __future__ import annotations

import math
import time

import matplotlib
import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoTokenizer

import kd_lib.training as training
from kd_lib.compress import quantize_dynamic
from kd_lib.data import EncodedDataset
from kd_lib.evaluate import (
    accuracy,
    agreement,
    count_params,
    expected_calibration_error,
    measure_speed,
    pareto_front,
    reliability_bins,
    reliability_diagram,
    size_on_disk_mb,
    state_dict_mb,
)
from kd_lib.models import packaged_teacher_path
from tests.conftest import save_tiny_bert

matplotlib.use("Agg")


def logits_from_probs(probs) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (rows summing to 1)."""
    return torch.log(torch.tensor(probs, dtype=torch.float64))


# ---------------------------------------------------------------- accuracy and agreement


def test_accuracy_is_the_one_from_distill():
    assert accuracy is training.accuracy


def test_agreement_counts_equal_argmax():
    a = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.2, 0.1]])
    b = torch.tensor([[5.0, 1.0], [4.0, 3.0], [0.0, 1.0], [9.0, 0.0]])  # rows 0 and 3 agree
    assert agreement(a, b) == pytest.approx(0.5)
    assert agreement(a, a) == 1.0


def test_agreement_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        agreement(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"b_logits must be a tensor of shape \[N, C\]"):
        agreement(torch.zeros(3, 2), torch.zeros(3))


# ---------------------------------------------------------------- calibration


def test_ece_hand_computed_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.55 (right); 5 bins of width 0.2:
    # (0.8, 1]: 2 rows, accuracy 0.5, confidence 0.9 -> gap 0.4
    # (0.6, 0.8]: 1 row, accuracy 1, confidence 0.7 -> gap 0.3
    # (0.4, 0.6]: 1 row, accuracy 1, confidence 0.55 -> gap 0.45
    logits = logits_from_probs([[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.55, 0.45]])
    labels = [0, 0, 1, 0]
    expected = 2 / 4 * 0.4 + 1 / 4 * 0.3 + 1 / 4 * 0.45
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)
    bins = reliability_bins(logits, labels, n_bins=5)
    assert bins.count.tolist() == [0, 0, 1, 1, 2]
    assert bins.accuracy[2:].tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert bins.confidence[2:].tolist() == pytest.approx([0.55, 0.7, 0.9])
    assert math.isnan(bins.accuracy[0]) and math.isnan(bins.confidence[1])
    assert bins.edges.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def ece_loop(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE written as a plain loop over the rows, in NumPy float64 (independent of kd_lib)."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    totals = [[0, 0.0, 0.0] for _ in range(n_bins)]  # count, correct, confidence sum
    for p, y in zip(probs, labels, strict=True):
        conf = p.max()
        b = min(n_bins - 1, max(0, math.ceil(conf * n_bins) - 1))  # (b/M, (b+1)/M]
        totals[b][0] += 1
        totals[b][1] += float(p.argmax() == y)
        totals[b][2] += conf
    return sum(n / len(labels) * abs(c / n - s / n) for n, c, s in totals if n)


@pytest.mark.parametrize(("n_classes", "n_bins", "scale"), [(2, 15, 1.0), (4, 10, 3.0), (3, 1, 0.5), (2, 7, 6.0)])
def test_ece_matches_an_independent_loop(n_classes, n_bins, scale):
    rng = np.random.default_rng(n_classes * 100 + n_bins)
    logits = rng.normal(size=(500, n_classes)) * scale
    labels = rng.integers(0, n_classes, size=500)
    mine = expected_calibration_error(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), n_bins)
    assert mine == pytest.approx(ece_loop(logits.astype(np.float32).astype(np.float64), labels, n_bins), abs=1e-9)


def test_ece_extremes_and_one_bin():
    sure = torch.tensor([[20.0, -20.0]] * 10)  # confidence 1 (to float64 rounding)
    assert expected_calibration_error(sure, [0] * 10) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(sure, [1] * 10) == pytest.approx(1.0, abs=1e-12)
    # with one bin, ECE is |overall accuracy - mean confidence|
    logits = logits_from_probs([[0.6, 0.4], [0.8, 0.2], [0.3, 0.7]])
    assert expected_calibration_error(logits, [0, 1, 1], n_bins=1) == pytest.approx(abs(2 / 3 - 0.7))


def test_reliability_bins_account_for_every_row():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(300, 4)) * 2)
    labels = torch.tensor(rng.integers(0, 4, size=300))
    bins = reliability_bins(logits, labels, n_bins=10)
    assert int(bins.count.sum()) == 300
    full = bins.count > 0
    correct = (bins.accuracy[full] * bins.count[full]).sum()
    assert correct.item() == pytest.approx(accuracy(logits, labels) * 300)
    assert (bins.confidence[full] > bins.edges[:-1][full]).all()
    assert (bins.confidence[full] <= bins.edges[1:][full]).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": torch.zeros(3, 2), "labels": [0, 1]}, r"labels must have shape \[3\]"),
        ({"logits": torch.zeros(3, 2), "labels": [0, 1, 2]}, r"integer classes in \[0, 1\]"),
        ({"logits": torch.zeros(3, 2), "labels": [0.0, 1.0, 1.0]}, "integer classes"),
        ({"logits": torch.zeros(3, 1), "labels": [0, 0, 0]}, "C >= 2"),
        ({"logits": torch.zeros(3, 2), "labels": [0, 1, 1], "n_bins": 0}, "n_bins must be a positive int"),
    ],
)
def test_calibration_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(**kwargs)


def test_reliability_diagram_draws_the_bins():
    logits = logits_from_probs([[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.55, 0.45]])
    ax = reliability_diagram(logits, [0, 0, 1, 0], n_bins=5, title="toy")
    bars = ax.patches[:3]  # accuracy bars of the 3 non-empty bins, then the 3 gap outlines
    assert [round(b.get_height(), 6) for b in bars] == [1.0, 1.0, 0.5]
    assert [round(b.get_x() + b.get_width() / 2, 6) for b in bars] == [0.5, 0.7, 0.9]
    gaps = ax.patches[3:6]
    assert [round(g.get_height(), 6) for g in gaps] == [-0.45, -0.3, 0.4]  # confidence - accuracy
    prefix, ece = ax.get_title().split("ECE ")
    assert prefix == "toy: " and float(ece) == pytest.approx(0.3875, abs=6e-4)
    matplotlib.pyplot.close(ax.figure)


# ---------------------------------------------------------------- Pareto front


def test_pareto_front_hand_example():
    acc = [0.90, 0.80, 0.85, 0.80]
    latency = [10.0, 5.0, 12.0, 6.0]
    # model 2 is beaten by model 0 (more accurate and faster), model 3 by model 1
    assert pareto_front(acc, latency) == [True, True, False, False]
    # with size as a third count, model 3 (the smallest) is no longer beaten on every count
    assert pareto_front(acc, latency, [90.0, 70.0, 90.0, 20.0]) == [True, True, False, True]


def test_pareto_front_ties_and_errors():
    assert pareto_front([0.8, 0.8], [5.0, 5.0]) == [True, True]  # identical models: neither dominates
    assert pareto_front([0.8, 0.8], [5.0, 6.0]) == [True, False]  # as accurate and slower: dominated
    with pytest.raises(ValueError, match="at least one cost"):
        pareto_front([0.8])
    with pytest.raises(ValueError, match=r"one value per model \(2\)"):
        pareto_front([0.8, 0.9], [1.0])


# ---------------------------------------------------------------- size and parameters


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny").eval()


def test_size_of_a_float_model_is_4_bytes_per_parameter(tiny_bert):
    n = count_params(tiny_bert)
    assert n == sum(p.numel() for p in tiny_bert.parameters())
    size = size_on_disk_mb(tiny_bert)  # safetensors
    assert size == pytest.approx(4 * n / 1e6, rel=0.01)
    assert state_dict_mb(tiny_bert) == pytest.approx(size, rel=0.01)  # torch.save: the same, to under 1 %


def test_size_and_params_of_a_quantized_model():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
    q = quantize_dynamic(mlp)
    n_weights, n_biases = 512 * 512 + 256 * 512, 512 + 256
    assert count_params(mlp) == count_params(q) == n_weights + n_biases
    fp32 = size_on_disk_mb(mlp)  # a plain nn.Module: measured with torch.save
    assert fp32 == pytest.approx(4 * (n_weights + n_biases) / 1e6, rel=0.01)
    # int8 weights, float32 biases, and one float64 scale + int64 zero point per output row
    expected = (n_weights + 4 * n_biases + 16 * (512 + 256)) / 1e6
    assert size_on_disk_mb(q) == pytest.approx(expected, rel=0.02)
    assert 3.5 < fp32 / size_on_disk_mb(q) < 4.0


def test_quantized_hf_model_size_is_measured_without_safetensors(tiny_bert):
    q = quantize_dynamic(tiny_bert, embeddings=True)
    assert count_params(q) == count_params(tiny_bert)
    # the word-embedding table (30522 x 32) now takes 1 byte per entry (+ 8 bytes of scale/offset per row)
    assert size_on_disk_mb(q) < 0.4 * size_on_disk_mb(tiny_bert)


# ---------------------------------------------------------------- speed


class Sleepy(nn.Module):
    """A fake model whose forward sleeps ``per_call + per_example * batch`` seconds and logs its calls."""

    def __init__(self, name: str, log: list, per_call: float, per_example: float = 0.0, spike_at: int = -1):
        super().__init__()
        self.name, self.log, self.per_call, self.per_example, self.spike_at = name, log, per_call, per_example, spike_at
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        extra = 0.2 if self.calls == self.spike_at else 0.0
        self.calls += 1
        self.log.append(self.name)
        time.sleep(self.per_call + self.per_example * input_ids.shape[0] + extra)
        return input_ids.float()


@pytest.fixture(scope="module")
def sentences():
    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    split = Dataset.from_dict({"text": [f"sentence number {i} is short" for i in range(32)], "label": [0, 1] * 16})
    return EncodedDataset(split, tokenizer, max_length=16)


def test_measure_speed_recovers_known_times(sentences):
    log: list[str] = []
    # calls in the warm-up: 2 batches + 4 singles; in every timed round 2 batches + 4 singles.
    # A 0.2 s spike on the first batch of the third timed round must not move the median.
    model = Sleepy("a", log, per_call=0.004, per_example=0.001, spike_at=6 + 2 * 6)
    speed = measure_speed({"a": model}, sentences, batch_size=8, n_batches=2, latency_examples=4, repeats=5)["a"]
    ideal_throughput = 16 / (2 * (0.004 + 8 * 0.001))  # 16 examples in 2 batches of 12 ms
    assert ideal_throughput / 1.5 < speed["throughput_per_s"] <= ideal_throughput  # sleep never returns early
    assert 5.0 <= speed["latency_ms_batch1"] < 7.5  # 4 ms + 1 ms per example
    assert model.calls == 6 * 6


def test_measure_speed_alternates_and_rotates_models(sentences):
    log: list[str] = []
    models = {name: Sleepy(name, log, per_call=0.0) for name in "abc"}
    measure_speed(models, sentences, batch_size=16, n_batches=1, latency_examples=2, repeats=3, warmup=1)
    blocks = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]  # one block per model per round
    warmup, rounds = ["a", "b", "c"], ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert blocks == warmup + rounds


def test_measure_speed_rejects_bad_counts_and_quantized_models_off_cpu(sentences):
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        measure_speed({"a": Sleepy("a", [], 0.0)}, sentences, repeats=0)
    q = quantize_dynamic(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"\['int8'\] are int8-quantized and run on the CPU only"):
        measure_speed({"fp32": Sleepy("a", [], 0.0), "int8": q}, sentences, device="cuda")
