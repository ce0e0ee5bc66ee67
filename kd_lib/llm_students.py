"""Students for a decoder language-model teacher: the teacher with layers removed, or a small Llama.

Depth pruning (Minitron, Muralidharan et al. 2024; ShortGPT, Men et al. 2024) starts the student
from the teacher itself: measure how much each layer matters on a little calibration text, keep the
``k`` that matter most, and let distillation heal what the removal broke. Two importance measures:

* ``"drop_loss"``: how much the language-model loss rises when that layer alone is skipped (one
  forward pass per layer);
* ``"cosine"``: ``1 - cos(h_in, h_out)``, how much the layer turns the hidden state it receives
  (ShortGPT's Block Influence; one forward pass in all).

Works with Hugging Face's Llama-family models (``model.model.layers``, each layer returning its hidden
states), SmolLM2 included.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["choose_layers", "every_other_layer", "layer_importance", "prune_layers", "small_llama"]


def _check_layers(keep, n_layers: int) -> list[int]:
    keep = list(keep)
    if not keep or any(isinstance(i, bool) or not isinstance(i, int) for i in keep):
        raise ValueError(f"keep must be a non-empty list of layer indices; got {keep!r}")
    if sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n_layers:
        raise ValueError(f"keep must be increasing, without repeats, within 0..{n_layers - 1}; got {keep}")
    return keep


def prune_layers(model, keep) -> nn.Module:
    """A copy of ``model`` with only the decoder layers ``keep`` (increasing indices), in that order.

    The copy's config says how many layers it has, and each kept attention layer gets its new index
    (``layer_idx``): the key/value cache of ``generate`` is indexed by it, and a stale index would read
    another layer's cache. Tied input/output embeddings stay tied.

    Taught in notebook 12, section 4 (A student cut from the teacher).
    """
    keep = _check_layers(keep, len(model.model.layers))
    pruned = copy.deepcopy(model)
    pruned.model.layers = nn.ModuleList(pruned.model.layers[i] for i in keep)
    for new_index, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = new_index
    pruned.config.num_hidden_layers = len(keep)
    if getattr(pruned.config, "layer_types", None) is not None:
        pruned.config.layer_types = [pruned.config.layer_types[i] for i in keep]
    return pruned


class _Skip(nn.Module):
    """Stands in for a decoder layer: returns the hidden states it is given."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _lm_loss(model, batches) -> float:
    losses, counts = 0.0, 0
    for batch in batches:
        labels = batch["labels"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        keep = labels != -100
        losses += nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum").item()
        counts += int(keep.sum())
    return losses / counts


@torch.no_grad()
def layer_importance(model, data, method: str = "drop_loss", batch_size: int = 8, max_blocks: int | None = None):
    """``[n_layers]`` float64: how much each decoder layer matters on ``data`` (larger = keep it).

    Args:
        model: a Llama-family causal LM (evaluated in eval mode, restored afterwards).
        data: blocks with pre-shifted ``labels`` (-100: no target), e.g. :class:`kd_lib.lm.LMBlocks`.
        method: ``"drop_loss"`` (the rise in mean next-token loss, nats, when the layer is skipped) or
            ``"cosine"`` (mean of ``1 - cos`` between the layer's input and output over the positions
            with a target).
        max_blocks: use only the first blocks (calibration text is small).

    Taught in notebook 12, section 4 (A student cut from the teacher).
    """
    if method not in ("drop_loss", "cosine"):
        raise ValueError(f"method must be 'drop_loss' or 'cosine'; got {method!r}")
    batches = list(data.loader(batch_size))
    if max_blocks is not None:
        batches = batches[: -(-max_blocks // batch_size)]  # whole batches covering max_blocks
    was_training = model.training
    model.eval()
    layers = model.model.layers
    try:
        if method == "drop_loss":
            base, scores = _lm_loss(model, batches), []
            for i in range(len(layers)):
                original, layers[i] = layers[i], _Skip()
                try:
                    scores.append(_lm_loss(model, batches) - base)
                finally:
                    layers[i] = original
            return torch.tensor(scores, dtype=torch.float64)
        return _cosine_importance(model, batches)
    finally:
        model.train(was_training)


def _cosine_importance(model, batches) -> torch.Tensor:
    """Mean ``1 - cos(layer input, layer output)`` per layer over the positions with a target."""
    layers, seen = model.model.layers, {}

    def hook(index):
        def record(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            seen[index] = (h_in, output[0] if isinstance(output, tuple) else output)
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    total, count = torch.zeros(len(layers), dtype=torch.float64), 0
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            keep = batch["labels"] != -100
            for i, (h_in, h_out) in seen.items():
                cos = nn.functional.cosine_similarity(h_in[keep].double(), h_out[keep].double(), dim=-1)
                total[i] += (1 - cos).sum()
            count += int(keep.sum())
    finally:
        for handle in handles:
            handle.remove()
    return total / count


def choose_layers(importance: torch.Tensor, k: int, keep_ends: bool = True) -> list[int]:
    """The ``k`` most important layers, in order; with ``keep_ends`` the first and last always stay
    (pruning studies find them the hardest to lose).

    Taught in notebook 12, section 4 (A student cut from the teacher).
    """
    n = len(importance)
    if isinstance(k, bool) or not isinstance(k, int) or not (2 if keep_ends else 1) <= k <= n:
        raise ValueError(f"k must be an int from {2 if keep_ends else 1} to {n} (the layers kept); got {k!r}")
    fixed = {0, n - 1} if keep_ends else set()
    rest = sorted((i for i in range(n) if i not in fixed), key=lambda i: -float(importance[i]))
    return sorted(fixed | set(rest[: k - len(fixed)]))


def every_other_layer(n_layers: int, k: int) -> list[int]:
    """``k`` layers spread evenly from the first to the last (DistilBERT's "every other layer").

    Taught in notebook 12, section 4 (A student cut from the teacher).
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(f"k must be an int from 1 to {n_layers}; got {k!r}")
    if k == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


def small_llama(vocab_size: int, layers: int = 4, width: int = 256, heads: int = 4, kv_heads: int = 2,
                seed: int = 0, tie: bool = True, max_positions: int = 2048):
    """A randomly initialised Llama (SmolLM2's design: grouped-query attention, tied embeddings).

    Taught in notebook 12, section 6 (Healing the pruned student).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if width % heads or heads % kv_heads:
        raise ValueError(f"width ({width}) must divide by heads ({heads}), and heads by kv_heads ({kv_heads})")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
