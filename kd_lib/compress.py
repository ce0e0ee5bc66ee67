"""Compressing a trained model: dynamic int8 quantization and magnitude pruning.

Both functions return a compressed **copy** and never change the model they are given, so a
notebook can compare the original and several compressed versions side by side.

- :func:`quantize_dynamic` stores the weights of every ``nn.Linear`` as int8 (one scale per
  output row by default) and quantizes each layer's *input* on the fly, batch by batch, so that
  the matrix product runs in integer arithmetic. No calibration data is needed. It uses PyTorch's
  eager-mode ``torch.ao.quantization.quantize_dynamic``, whose kernels (fbgemm/x86, oneDNN) run on
  the CPU only. PyTorch deprecates ``torch.ao.quantization`` in favour of **torchao**
  (``torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())``, a separate
  package); the old API still works in torch 2.13 and needs no extra install, which is why the
  course uses it.
- :func:`magnitude_prune` sets the smallest-magnitude weights of the ``nn.Linear`` layers to
  zero (L1 unstructured pruning with ``torch.nn.utils.prune``, made permanent). The tensors stay
  dense: the file is as large and a dense CPU kernel multiplies the zeros as fast as any other
  number -- notebook 07 measures it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["is_quantized", "linear_layers", "magnitude_prune", "quantize_dynamic", "sparsity"]

QUANTIZED_MODULE_PREFIX = "torch.ao.nn.quantized"


def _skipped(name: str, skip: Sequence[str]) -> bool:
    """True if module ``name`` is one of ``skip`` or lies inside one of them (``"a.b"`` is inside ``"a"``)."""
    return any(name == s or name.startswith(s + ".") for s in skip)


def _check_skip(skip: Sequence[str]) -> tuple[str, ...]:
    if isinstance(skip, str):
        raise ValueError(f"skip must be a sequence of module names, e.g. ({skip!r},); got the string {skip!r}")
    return tuple(skip)


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule of ``model`` is a ``torch.ao`` quantized module (e.g. after :func:`quantize_dynamic`).

    Taught in notebook 07, section 4 (Dynamic int8 quantization).
    """
    return any(type(m).__module__.startswith(QUANTIZED_MODULE_PREFIX) for m in model.modules())


def linear_layers(model: nn.Module, skip: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """The floating-point ``nn.Linear`` submodules of ``model`` by name, minus those in ``skip``.

    ``skip`` holds module names (as in ``model.named_modules()``); a name also skips everything
    inside it, so ``("classifier",)`` skips the head and ``("bert.encoder.layer.0",)`` a whole layer.

    Taught in notebook 07, section 5 (Magnitude pruning).
    """
    skip = _check_skip(skip)
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(name, skip)}


def _input_embedding_name(model: nn.Module) -> str | None:
    """Name of the word-embedding module of a Hugging Face model, or None for other models."""
    get = getattr(model, "get_input_embeddings", None)
    table = get() if callable(get) else None
    return next((name for name, m in model.named_modules() if m is table), None)


def quantize_dynamic(
    model: nn.Module,
    *,
    per_channel: bool = True,
    embeddings: bool = False,
    skip: Sequence[str] = (),
) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose ``nn.Linear`` layers compute in int8.

    Weights are rounded to int8 once: ``w ≈ s · q`` with ``q ∈ [-128, 127]`` and ``s = max|w| / 127.5``
    per output row (``per_channel=True``) or per matrix. Each layer's input ``x`` is quantized at
    run time from its own min and max to 7-bit unsigned integers (fbgemm's ``reduce_range``, which
    avoids an overflow in its int8 kernels), the product is accumulated in int32 and rescaled to
    float. Everything else (attention products, softmax, LayerNorm, GELU) stays float32.

    Tolerance: one quantized layer's output differs from the float one by at most
    ``s_w/2 · ‖x‖₁ + s_x · ‖q_w · s_w‖₁`` per output (weight rounding plus input rounding, ``s_x`` the
    input's scale); ``tests/test_compress.py`` checks this bound. Over a whole network the errors
    add up: on the course's SST-2 teacher and student, about 3 % of the validation predictions
    change and the accuracy moves by about a point (notebook 07).

    Args:
        model: a float model on the CPU (the course's BERT teacher, DistilBERT student, an MLP, …).
        per_channel: one weight scale per output row (default; noticeably more accurate on BERT)
            instead of one per matrix.
        embeddings: also store the word-embedding table of a Hugging Face model in 8 bits (one scale
            and offset per row, weight only). It holds half of a small BERT's parameters, so this
            roughly halves the file again; the lookups are not faster.
        skip: module names kept in float32 (see :func:`linear_layers`).

    Returns:
        The quantized copy, in eval mode. It runs on the CPU only, and ``save_pretrained`` cannot
        store it as safetensors (use ``torch.save(model.state_dict(), …)``).

    Raises:
        ValueError: ``model`` is not on the CPU, is already quantized, or has no ``nn.Linear`` to quantize.

    Taught in notebook 07, section 4 (Dynamic int8 quantization).
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
    )
    from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(
            f"model is on {sorted(devices)}; quantized int8 kernels run on the CPU only: call model.cpu() first"
        )
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize the float model instead")
    linears = linear_layers(model, skip)
    if not linears:
        raise ValueError(f"model has no nn.Linear layer to quantize (skip={tuple(skip)!r})")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = dict.fromkeys(linears, qconfig)
    table = _input_embedding_name(model) if embeddings else None
    if embeddings and table is None:
        raise ValueError("embeddings=True needs a Hugging Face model with get_input_embeddings()")
    if table is not None and not _skipped(table, _check_skip(skip)):
        spec[table] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        # torch >= 2.10 warns at every call that torch.ao.quantization is deprecated (in favour of
        # torchao, see the module docstring) and that quantized tensor types will go; both are
        # known and documented here, and would otherwise fill every notebook cell with stderr.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        quantized = ao_quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)
    return quantized.eval()


def _check_sparsity(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), e.g. 0.5 for half the weights; got {value!r}")
    return float(value)


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "global",
    skip: Sequence[str] = (),
) -> nn.Module:
    """A copy of ``model`` with the ``sparsity`` fraction of smallest-|w| Linear weights set to zero.

    ``scope="global"`` ranks the weights of all the Linear layers together (layers with small
    weights lose more of them); ``scope="layer"`` removes the same fraction from every layer.
    Exactly ``round(sparsity · n)`` weights become zero (over all ``n``, or per layer); biases,
    embeddings and LayerNorms are untouched, and every other weight keeps its exact value. The
    pruning is made permanent (``prune.remove``): the copy has plain dense weights with zeros, no
    masks or hooks, and the same state-dict keys as ``model``. There is no fine-tuning afterwards.

    A global ranking can empty a layer whose weights are small overall: the course's teacher has
    a pooler with weights ten times smaller than its encoder's, and at 50 % global sparsity the
    pooler is pruned entirely and the classifier loses its input (notebook 07). Keep the head out
    of the ranking (``skip=("bert.pooler", "classifier")``) or use ``scope="layer"``.

    Raises:
        ValueError: ``sparsity`` outside [0, 1), an unknown ``scope``, or no Linear layer left.

    Taught in notebook 07, section 5 (Magnitude pruning).
    """
    amount = _check_sparsity(sparsity)
    if scope not in {"global", "layer"}:
        raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}")
    if is_quantized(model):
        raise ValueError("model is quantized; prune the float model (and quantize afterwards if you like)")
    if not linear_layers(model, skip):
        raise ValueError(f"model has no nn.Linear layer to prune (skip={tuple(skip)!r})")
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for m in linear_layers(pruned, skip).values()]
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return pruned


def sparsity(model: nn.Module, skip: Sequence[str] = ()) -> float:
    """Fraction of the ``nn.Linear`` weights of ``model`` (outside ``skip``) that are exactly zero.

    Taught in notebook 07, section 5 (Magnitude pruning).
    """
    layers = linear_layers(model, skip)
    if not layers:
        raise ValueError(f"model has no float nn.Linear layer to measure (skip={tuple(skip)!r})")
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    return zeros / sum(m.weight.numel() for m in layers.values())
