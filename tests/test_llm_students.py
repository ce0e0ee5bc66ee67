"""kd_lib.llm_students: depth pruning of a Llama teacher by measured layer importance, and small Llamas."""

from __future__ import annotations

import pytest
import torch

from conftest import TokenBlocks
from kd_lib.llm_students import choose_layers, every_other_layer, layer_importance, prune_layers, small_llama

V = 64


@pytest.fixture(scope="module")
def llama():
    model = small_llama(V, layers=5, width=32, heads=4, kv_heads=2, seed=0).eval()
    # make layer 2 do nothing: its attention and MLP outputs are zero, so the residual stream passes through
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="module")
def data():
    return TokenBlocks(V, lengths=(9, 9, 6, 9), seed=2)


def test_keeping_every_layer_changes_nothing_and_the_tie_survives(llama):
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    pruned = prune_layers(llama, range(5))
    with torch.no_grad():
        assert torch.equal(pruned(input_ids=ids).logits, llama(input_ids=ids).logits)
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    assert pruned.lm_head.weight.data_ptr() != llama.lm_head.weight.data_ptr()  # a copy, not the teacher


def test_removing_a_layer_that_does_nothing_changes_nothing(llama):
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    pruned = prune_layers(llama, [0, 1, 3, 4])
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5)


def test_generation_with_the_cache_is_right_after_pruning(llama):
    pruned = prune_layers(llama, [0, 3, 4])
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    prompt = torch.tensor([[5, 9, 11]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with_cache = pruned.generate(prompt, use_cache=True, **kwargs)
    without = pruned.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("method", ["drop_loss", "cosine"])
def test_a_layer_that_does_nothing_has_zero_importance(llama, data, method):
    importance = layer_importance(llama, data, method=method, batch_size=2)
    assert importance.shape == (5,)
    assert abs(importance[2]) < 1e-6 and (importance[[0, 1, 3, 4]].abs() > 1e-4).all(), importance
    assert not llama.training and all(type(layer).__name__ == "LlamaDecoderLayer" for layer in llama.model.layers)


def test_drop_loss_is_the_rise_in_loss_when_the_layer_is_skipped(llama, data):
    import torch.nn.functional as F

    def loss(model):
        batch = data.collate(list(range(4)))
        keep = batch["labels"] != -100
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[keep], batch["labels"][keep]).item()

    importance = layer_importance(llama, data, batch_size=4)
    assert importance[1].item() == pytest.approx(loss(prune_layers(llama, [0, 2, 3, 4])) - loss(llama), rel=1e-4)


def test_choosing_layers():
    importance = torch.tensor([0.1, 0.9, 0.0, 0.5, 0.2, 0.3])
    assert choose_layers(importance, 3) == [0, 1, 5]  # the ends, then the most important
    assert choose_layers(importance, 3, keep_ends=False) == [1, 3, 5]
    assert every_other_layer(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert every_other_layer(6, 3) == [0, 2, 5] and every_other_layer(4, 1) == [0]


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: prune_layers(m, []), "keep must be a non-empty list"),
    (lambda m: prune_layers(m, [3, 1]), "increasing, without repeats, within 0..4"),
    (lambda m: prune_layers(m, [0, 5]), "within 0..4"),
    (lambda m: choose_layers(torch.zeros(5), 1), "k must be an int from 2 to 5"),
    (lambda m: every_other_layer(5, 6), "k must be an int from 1 to 5"),
    (lambda m: layer_importance(m, TokenBlocks(V), method="norm"), "method must be"),
    (lambda m: small_llama(V, width=30, heads=4), "must divide by heads"),
])
def test_bad_arguments_are_refused_by_name(llama, call, message):
    with pytest.raises(ValueError, match=message):
        call(llama)
