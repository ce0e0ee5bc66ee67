"""kd_lib.ensemble: ensemble targets against hand values and float64 NumPy, weights, a leak-free
client split, hidden labels, and the trained-model cache."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value

from kd_lib.data import EncodedDataset
from kd_lib.ensemble import (
    accuracy_weights,
    client_split,
    confidence_weights,
    ensemble_logits,
    ensemble_probs,
    hide_labels,
    train_once,
)
from kd_lib.losses import distillation_loss, kd_loss
from kd_lib.models import packaged_teacher_path
from kd_lib.transfer import WITHHELD, kd_with_transfer

LN9 = math.log(9.0)
# teacher A: [ln 9, 0] -> p = (0.9, 0.1) at T = 1; teacher B: [0, 0] -> p = (0.5, 0.5)
PAIR = torch.tensor([[[LN9, 0.0]], [[0.0, 0.0]]])  # [K=2, N=1, C=2]


def np_softmax(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def random_logits(k: int = 3, n: int = 7, c: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


# ---------------------------------------------------------------- ensemble targets
def test_hand_values_probs_vs_logits():
    # averaging probabilities: (0.9 + 0.5) / 2 = 0.7
    assert torch.allclose(ensemble_probs(PAIR, 1.0), torch.tensor([[0.7, 0.3]]))
    # averaging logits: [ln 3, 0] -> (3/4, 1/4): sharper than the mixture, pulled to the confident teacher
    assert torch.allclose(ensemble_probs(PAIR, 1.0, mode="logits"), torch.tensor([[0.75, 0.25]]))
    # T = 2: A becomes softmax([ln 3, 0]) = (3/4, 1/4), so the mixture is (5/8, 3/8) ...
    assert torch.allclose(ensemble_probs(PAIR, 2.0), torch.tensor([[0.625, 0.375]]))
    # ... and the mean logits [ln 3, 0] / 2 give (sqrt 3, 1) / (1 + sqrt 3)
    r3 = math.sqrt(3.0)
    assert torch.allclose(ensemble_probs(PAIR, 2.0, mode="logits"), torch.tensor([[r3 / (1 + r3), 1 / (1 + r3)]]))
    # weights (1/4, 3/4): 0.25 * 0.9 + 0.75 * 0.5 = 0.6
    assert torch.allclose(ensemble_probs(PAIR, 1.0, [0.25, 0.75]), torch.tensor([[0.6, 0.4]]))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_mixture_matches_float64_numpy(temperature):
    z = random_logits()
    w = np.array([0.5, 0.3, 0.2])
    expected = np.einsum("k,knc->nc", w, np_softmax(z.numpy(), temperature))
    got = ensemble_probs(z, temperature, torch.tensor(w))
    assert np.allclose(got.numpy(), expected, atol=1e-12)
    uniform = np_softmax(z.numpy(), temperature).mean(0)
    assert np.allclose(ensemble_probs(z, temperature).numpy(), uniform, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_logit_average_is_the_normalised_weighted_geometric_mean(temperature):
    z = random_logits(seed=1)
    w = np.array([0.2, 0.2, 0.6])
    p = np_softmax(z.numpy(), temperature)
    geo = np.prod(p ** w[:, None, None], axis=0)
    expected = geo / geo.sum(-1, keepdims=True)
    got = ensemble_probs(z, temperature, torch.tensor(w), mode="logits")
    assert np.allclose(got.numpy(), expected, atol=1e-12)


def test_per_example_weights():
    z = random_logits(k=2, n=3, c=2, seed=2)
    w = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], dtype=torch.float64)
    got = ensemble_probs(z, 1.0, w)
    p = torch.softmax(z, -1)
    assert torch.allclose(got[0], p[0, 0]) and torch.allclose(got[1], p[1, 1])
    assert torch.allclose(got[2], (p[0, 2] + p[1, 2]) / 2)


def test_a_list_of_tensors_equals_the_stacked_tensor():
    z = random_logits()
    for mode in ("probs", "logits"):
        assert torch.equal(ensemble_probs(list(z), 2.0, mode=mode), ensemble_probs(z, 2.0, mode=mode))


@pytest.mark.parametrize(("mode", "temperature"), list(itertools.product(["probs", "logits"], [0.5, 1.0, 4.0])))
def test_ensemble_logits_reproduce_the_target_at_their_temperature(mode, temperature):
    z = random_logits(seed=3)
    w = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    logits = ensemble_logits(z, temperature, w, mode)
    assert logits.shape == (7, 4)
    assert torch.allclose(torch.softmax(logits / temperature, -1), ensemble_probs(z, temperature, w, mode), atol=1e-12)


def test_logit_average_does_not_depend_on_temperature_but_the_mixture_does():
    z = random_logits(seed=4)
    assert torch.equal(ensemble_logits(z, 1.0, mode="logits"), ensemble_logits(z, 5.0, mode="logits"))
    assert torch.allclose(ensemble_logits(z, 1.0, mode="logits"), z.mean(0))
    assert not torch.allclose(ensemble_logits(z, 1.0), ensemble_logits(z, 5.0))


def test_mixture_logits_stay_finite_when_a_probability_underflows():
    z = torch.tensor([[[1000.0, 0.0]], [[900.0, 0.0]]])  # p(class 1) = e^-900 underflows to 0
    logits = ensemble_logits(z, 1.0)
    assert torch.isfinite(logits).all()
    student = torch.tensor([[2.0, 0.0]])
    assert torch.isfinite(kd_loss(student, logits, 1.0))


def test_kd_loss_from_ensemble_logits_is_kl_from_the_ensemble_target():
    z = random_logits(k=3, n=5, c=3, seed=5).float()
    student = torch.randn(5, 3, generator=torch.Generator().manual_seed(6))
    t = 2.0
    p = ensemble_probs(z, t).double().numpy()
    q = np_softmax(student.double().numpy(), t)
    expected = t**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    assert math.isclose(kd_loss(student, ensemble_logits(z, t), t).item(), expected, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [0.5, 0.6]}, "sum to 1"),
        ({"weights": [1.5, -0.5]}, "finite and >= 0"),
        ({"weights": [1.0]}, r"shape \[K\] = \[2\]"),
        ({"weights": [float("nan"), 1.0]}, "finite"),
        ({"mode": "mean"}, "mode must be one of"),
        ({"temperature": 0.0}, "temperature must be"),
    ],
)
def test_targets_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ensemble_probs(PAIR, **kwargs)


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        ([torch.zeros(3, 2), torch.zeros(4, 2)], "same shape"),
        ([], "non-empty"),
        (torch.zeros(3, 2), r"shape \[K, N, C\]"),
        (torch.zeros(2, 3, 2, dtype=torch.long), "floating-point"),
    ],
)
def test_targets_reject_bad_logits(logits, message):
    with pytest.raises(ValueError, match=message):
        ensemble_logits(logits)


# ---------------------------------------------------------------- weights
def test_accuracy_weights_are_the_distance_above_chance():
    assert torch.allclose(accuracy_weights([0.9, 0.7, 0.5], 2), torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(accuracy_weights([0.25, 0.5, 1.0], 4), torch.tensor([0.0, 0.25, 0.75]))
    assert torch.allclose(accuracy_weights([0.8, 0.8], 2), torch.tensor([0.5, 0.5]))
    assert torch.allclose(accuracy_weights([0.1, 0.6], 2), torch.tensor([0.0, 1.0]))  # below chance: 0, not negative


@pytest.mark.parametrize(
    ("accuracies", "num_classes", "message"),
    [
        ([0.5, 0.4], 2, "at or below chance"),
        ([0.9, 1.2], 2, r"fractions in \[0, 1\]"),
        ([], 2, "non-empty"),
        ([0.9], 1, "num_classes must be an int >= 2"),
    ],
)
def test_accuracy_weights_reject_bad_input(accuracies, num_classes, message):
    with pytest.raises(ValueError, match=message):
        accuracy_weights(accuracies, num_classes)


def test_confidence_weights_by_hand_and_normalised():
    assert torch.allclose(confidence_weights(PAIR), torch.tensor([[0.9 / 1.4], [0.5 / 1.4]]))
    w = confidence_weights(random_logits(seed=7))
    assert w.shape == (3, 7) and torch.allclose(w.sum(0), torch.ones(7, dtype=w.dtype)) and (w > 0).all()
    # usable as per-example weights
    expected = torch.tensor([[0.9 * 0.9 + 0.5 * 0.5, 0.9 * 0.1 + 0.5 * 0.5]]) / 1.4
    assert torch.allclose(ensemble_probs(PAIR, 1.0, confidence_weights(PAIR)), expected)


# ---------------------------------------------------------------- client split
def assert_partition(shares: list[list[int]], n: int) -> None:
    """No row in two clients, every row in one, each share sorted."""
    everything = [i for s in shares for i in s]
    assert len(everything) == n and set(everything) == set(range(n))
    for a, b in itertools.combinations(shares, 2):
        assert not set(a) & set(b)
    assert all(s == sorted(s) for s in shares)


def test_iid_split_is_a_partition_of_near_equal_shares():
    shares = client_split(103, 4, seed=1)
    assert_partition(shares, 103)
    assert sorted(len(s) for s in shares) == [25, 26, 26, 26]
    assert client_split(103, 4, seed=1) == shares and client_split(103, 4, seed=2) != shares
    assert client_split([0, 1] * 50, 3, seed=0) == client_split(100, 3, seed=0)  # labels do not matter without alpha


@pytest.mark.parametrize(("alpha", "n_clients", "seed"), list(itertools.product([0.1, 1.0, 10.0], [2, 5], [0, 1, 2])))
def test_label_skewed_split_never_leaks_a_row(alpha, n_clients, seed):
    labels = np.random.default_rng(seed).integers(0, 3, size=300)
    shares = client_split(labels, n_clients, seed=seed, alpha=alpha, min_size=5)
    assert_partition(shares, 300)
    assert min(len(s) for s in shares) >= 5
    # every row keeps its label: the clients' label counts add up to the dataset's
    assert (sum(np.bincount(labels[s], minlength=3) for s in shares) == np.bincount(labels)).all()


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.repeat([0, 1, 2, 3], 500)
    majority = {}
    for alpha in (0.05, 1000.0):
        fractions = []
        for seed in range(5):
            for s in client_split(labels, 4, seed=seed, alpha=alpha, min_size=1):
                fractions.append(np.bincount(labels[s], minlength=4).max() / len(s))
        majority[alpha] = float(np.mean(fractions))
    assert majority[0.05] > 0.7  # each client is mostly one class (0.82 with these seeds)
    assert majority[1000.0] < 0.30  # close to the global 0.25
    sizes = [len(s) for s in client_split(labels, 4, seed=0, alpha=1000.0)]
    assert max(sizes) - min(sizes) < 60  # and near-equal sizes


def test_split_accepts_a_label_tensor():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    assert client_split(labels, 2, seed=3, alpha=1.0) == client_split(labels.tolist(), 2, seed=3, alpha=1.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((10, 0), {}, "n_clients must be an int between 1 and the 10 rows"),
        ((10, 11), {}, "n_clients must be an int between 1 and the 10 rows"),
        ((0, 1), {}, "positive number of rows"),
        ((10, 2), {"alpha": 0.5}, "needs the labels"),
        (([0, 1] * 5, 2), {"alpha": 0.0}, "alpha must be a finite number > 0"),
        (([0, 1] * 5, 2), {"alpha": float("inf")}, "alpha must be a finite number > 0"),
        (([0, 1] * 5, 2), {"min_size": 6}, "min_size must be an int >= 1"),
        (([0.5, 1.0], 2), {}, "integer class ids"),
        (([0] * 50 + [1] * 50, 10), {"alpha": 0.01, "min_size": 10}, "no split with at least min_size=10"),
    ],
)
def test_split_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        client_split(*args, **kwargs)


# ---------------------------------------------------------------- hidden labels
def small_split(n: int = 6) -> Dataset:
    features = Features({"idx": Value("int64"), "text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    return Dataset.from_dict(
        {"idx": [40 + i for i in range(n)], "text": [f"a film number {i}" for i in range(n)],
         "label": [i % 2 for i in range(n)]},
        features=features,
    )


def test_hide_labels_withholds_every_label_and_keeps_the_rest():
    split = small_split()
    hidden = hide_labels(split)
    assert list(hidden["label"]) == [WITHHELD] * 6
    assert list(hidden["idx"]) == list(split["idx"]) and list(hidden["text"]) == list(split["text"])
    assert list(split["label"]) == [0, 1, 0, 1, 0, 1]  # the original is untouched
    with pytest.raises(ValueError, match="'label' column"):
        hide_labels(split.remove_columns("label"))


def test_hidden_labels_train_on_soft_targets_only_and_fail_as_hard_labels():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    data = EncodedDataset(hide_labels(small_split()), tokenizer, max_length=16)
    batch = next(iter(data.loader(4, shuffle=True, seed=0)))
    teacher = random_logits(k=2, n=6, c=2, seed=8).float()
    target = ensemble_logits(teacher, 2.0)
    student = torch.randn(4, 2, generator=torch.Generator().manual_seed(9))
    loss = kd_with_transfer(target, 2.0, 0.5)(SimpleNamespace(logits=student), batch)
    assert torch.allclose(loss, kd_loss(student, target[batch["row"]], 2.0))  # alpha plays no role: no labels
    with pytest.raises(ValueError, match="labels must be in the range"):
        distillation_loss(student, target[batch["row"]], batch["labels"])


# ---------------------------------------------------------------- the cache of trained models
def tiny_distilbert(seed: int):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=16)
    return DistilBertForSequenceClassification(cfg)


def test_train_once_trains_once_then_loads_the_same_weights(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return tiny_distilbert(seed=len(calls)), {"accuracy": 0.75}

    config = {"ids": [3, 1, 2], "seed": 0}
    model, info = train_once("client0", config, train, cache_root=tmp_path)
    assert (info["from_cache"], info["accuracy"], info["config"]) == (False, 0.75, config)
    again, info2 = train_once("client0", config, train, cache_root=tmp_path)
    assert len(calls) == 1 and info2["from_cache"] and info2["accuracy"] == 0.75
    assert info2["folder"] == info["folder"]
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not again.training
    _, info3 = train_once("client0", {**config, "seed": 1}, train, cache_root=tmp_path)
    assert len(calls) == 2 and not info3["from_cache"] and info3["folder"] != info["folder"]
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    folders = [name for name in names if not name.endswith(".lock")]  # the cache's lock files stay
    assert len(folders) == 2 and all(name.startswith("client0-") for name in folders)  # no temporary leftovers
    assert sorted(set(names) - set(folders)) == sorted(f"{name}.lock" for name in folders)


def test_train_once_rejects_a_path_as_name(tmp_path):
    with pytest.raises(ValueError, match="without path separators"):
        train_once("a/b", {}, lambda: None, cache_root=tmp_path)
