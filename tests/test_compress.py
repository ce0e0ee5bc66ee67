"""kd_lib.compress: dynamic int8 quantization and magnitude pruning return copies that stay close to the original."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from kd_lib.compress import is_quantized, linear_layers, magnitude_prune, quantize_dynamic, sparsity
from kd_lib.models import packaged_teacher_path
from kd_lib.students import distilbert_from_bert
from tests.conftest import save_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny", num_layers=2, hidden=32).eval()


@pytest.fixture(scope="module")
def batch():
    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    enc = tokenizer(["a gripping , funny film", "dull and long", "the best movie of the year", "i hated it"],
                    padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4)).eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------- quantization


def test_quantize_returns_a_quantized_copy_and_leaves_the_model_alone(tiny_bert, batch):
    before, n_linear = snapshot(tiny_bert), len(linear_layers(tiny_bert))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warnings of torch.ao are filtered inside
        q = quantize_dynamic(tiny_bert)
    assert q is not tiny_bert and is_quantized(q) and not is_quantized(tiny_bert)
    assert_unchanged(tiny_bert, before)
    assert len(linear_layers(tiny_bert)) == n_linear == 2 * 6 + 2  # 6 per layer, pooler, classifier
    assert linear_layers(q) == {}  # every Linear was replaced
    quantized = [m for m in q.modules() if type(m).__name__ == "Linear" and hasattr(m, "_packed_params")]
    assert len(quantized) == n_linear
    assert not q.training


def test_quantized_weights_are_rounded_to_int8_per_row():
    model = mlp()
    for per_channel in (True, False):
        layer = quantize_dynamic(model, per_channel=per_channel)[2]
        w = model[2].weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True) / 127.5 if per_channel else w.abs().max() / 127.5
        # torch multiplies by 1/s: the extreme weight lands on ±127.5, a tie that float rounding decides
        expected = torch.clamp(torch.round(w * (1 / scale)), -128, 127).to(torch.int8)
        assert torch.equal(layer.weight().int_repr(), expected)


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_linear_error_is_within_the_rounding_bound(per_channel):
    torch.manual_seed(1)
    layer = nn.Linear(384, 64)
    q = quantize_dynamic(nn.Sequential(layer), per_channel=per_channel)[0]
    x = torch.randn(16, 384) * 2 + 0.5
    with torch.no_grad():
        error = (q(x) - layer(x)).abs()
    w = layer.weight.detach()
    s_w = w.abs().amax(dim=1) / 127.5 if per_channel else (w.abs().max() / 127.5).expand(64)
    s_x = (max(x.max().item(), 0.0) - min(x.min().item(), 0.0)) / 127  # 7-bit input (reduce_range)
    w_q = torch.clamp(torch.round(w / s_w[:, None]), -128, 127) * s_w[:, None]
    bound = s_w[None, :] / 2 * x.abs().sum(dim=1, keepdim=True) + s_x * w_q.abs().sum(dim=1)[None, :]
    assert (error <= bound).all()
    assert error.max() > 1e-4  # it is really quantized ...
    assert error.max() < 0.05 * layer(x).abs().max()  # ... and close


def test_quantized_models_keep_their_outputs(tiny_bert, batch):
    model = mlp()
    x = torch.randn(256, 64)
    with torch.no_grad():
        ref, out = model(x), quantize_dynamic(model)(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    with torch.no_grad():
        ref = tiny_bert(**batch).logits
        for kwargs in ({}, {"per_channel": False}, {"embeddings": True}):
            out = quantize_dynamic(tiny_bert, **kwargs)(**batch).logits
            assert (out - ref).abs().max() < 0.05 * ref.abs().max(), kwargs


def test_quantize_skip_and_embeddings(tiny_bert, batch):
    q = quantize_dynamic(tiny_bert, skip=("classifier", "bert.encoder.layer.1"), embeddings=True)
    assert set(linear_layers(q)) == {"classifier"} | {f"bert.encoder.layer.1.{n}" for n in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")}
    assert type(q.bert.embeddings.word_embeddings).__name__ == "Embedding" and is_quantized(q.bert.embeddings)
    assert isinstance(q.bert.embeddings.position_embeddings, nn.Embedding)  # only the word table
    student = distilbert_from_bert(tiny_bert, [0]).eval()
    qs = quantize_dynamic(student, embeddings=True)
    with torch.no_grad():
        ref, out = student(**batch).logits, qs(**batch).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_quantize_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"CPU only: call model\.cpu"):
        quantize_dynamic(mlp().to("meta"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_dynamic(quantize_dynamic(mlp()))
    with pytest.raises(ValueError, match=r"no nn\.Linear layer to quantize"):
        quantize_dynamic(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="get_input_embeddings"):
        quantize_dynamic(mlp(), embeddings=True)
    with pytest.raises(ValueError, match="sequence of module names"):
        quantize_dynamic(mlp(), skip="0")


# ---------------------------------------------------------------- pruning


def all_linear_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in linear_layers(model).values()])


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_global_pruning_zeroes_exactly_the_smallest_weights(tiny_bert, amount):
    before = snapshot(tiny_bert)
    pruned = magnitude_prune(tiny_bert, amount)
    assert_unchanged(tiny_bert, before)
    assert pruned.state_dict().keys() == before.keys()  # permanent: no weight_orig / weight_mask
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    old, new = all_linear_weights(tiny_bert), all_linear_weights(pruned)
    removed = new == 0
    assert int(removed.sum()) == round(amount * old.numel())  # no weight was exactly 0 before
    assert old[removed].abs().max() <= old[~removed].abs().min()  # one global threshold
    assert torch.equal(new[~removed], old[~removed])  # the rest keep their exact values
    assert sparsity(pruned) == pytest.approx(round(amount * old.numel()) / old.numel())
    after = pruned.state_dict()
    for key in before:  # embeddings, biases and LayerNorms untouched
        if not key.endswith("weight") or "embeddings" in key or "LayerNorm" in key:
            assert torch.equal(after[key], before[key]), key


def test_layer_pruning_takes_the_same_fraction_from_every_layer(tiny_bert):
    pruned = magnitude_prune(tiny_bert, 0.4, scope="layer", skip=("classifier",))
    for name, layer in linear_layers(pruned).items():
        old = linear_layers(tiny_bert)[name].weight.detach()
        removed = layer.weight == 0
        if name == "classifier":
            assert not removed.any()
            continue
        assert int(removed.sum()) == round(0.4 * old.numel()), name
        assert old[removed].abs().max() <= old[~removed].abs().min()
    assert sparsity(pruned, skip=("classifier",)) == pytest.approx(0.4, abs=1e-3)


def test_pruned_linear_error_is_bounded_by_the_removed_weights():
    model = mlp()
    pruned = magnitude_prune(model, 0.2)
    x = torch.randn(32, 64)
    with torch.no_grad():
        error = (pruned[0](x) - model[0](x)).abs()
    removed = model[0].weight.detach() * (pruned[0].weight == 0)
    assert (error <= x.abs() @ removed.abs().T + 1e-5).all()  # |Σ_j w_ij x_j| over the removed j
    assert error.max() > 0


def test_pruning_nothing_keeps_the_outputs(tiny_bert, batch):
    with torch.no_grad():
        assert torch.equal(magnitude_prune(tiny_bert, 0.0)(**batch).logits, tiny_bert(**batch).logits)
    assert sparsity(tiny_bert) == 0.0


def test_sparsity_counts_zeros():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]]))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    assert sparsity(model) == pytest.approx(3 / 12)
    assert sparsity(model, skip=("2",)) == pytest.approx(3 / 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"sparsity must be a fraction in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be a fraction in \[0, 1\)"),
        ({"sparsity": True}, r"sparsity must be a fraction"),
        ({"sparsity": 0.5, "scope": "row"}, "scope must be 'global' or 'layer'"),
        ({"sparsity": 0.5, "skip": ("0", "2", "4")}, r"no nn\.Linear layer to prune"),
    ],
)
def test_prune_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        magnitude_prune(mlp(), **kwargs)


def test_prune_rejects_quantized_models():
    with pytest.raises(ValueError, match="prune the float model"):
        magnitude_prune(quantize_dynamic(mlp()), 0.5)
