"""Students: a genuine DistilBERT built from a BERT teacher's weights (Sanh et al., 2019).

DistilBERT is BERT with the token-type embeddings and the pooler removed and half the
layers. Its layers have exactly BERT's shapes under other names, so a student can start
from a subset of the teacher's layers -- the initialisation DistilBERT itself used
(it took every other layer of bert-base-uncased).

Name map, per layer (BERT ``bert.encoder.layer.i.`` → DistilBERT ``distilbert.transformer.layer.j.``):

=====================================  ==============================
BERT                                   DistilBERT
=====================================  ==============================
attention.self.query / key / value      attention.q_lin / k_lin / v_lin
attention.output.dense                  attention.out_lin
attention.output.LayerNorm              sa_layer_norm
intermediate.dense                      ffn.lin1
output.dense                            ffn.lin2
output.LayerNorm                        output_layer_norm
=====================================  ==============================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "LAYER_MAP",
    "bert_to_distilbert_state_dict",
    "check_teacher_layers",
    "choose_student_layers",
    "default_student_layers",
    "distilbert_config",
    "distilbert_from_bert",
    "narrow_distilbert",
]

LAYER_MAP: dict[str, str] = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def default_student_layers(num_teacher_layers: int, num_student_layers: int | None = None) -> list[int]:
    """Which teacher layers a student copies: spread evenly, first layer included.

    With the default ``num_student_layers = num_teacher_layers // 2`` this is "every other
    layer": ``[0, 2, 4]`` for 6 teacher layers, ``[0, 2, 4, 6, 8, 10]`` for 12. (DistilBERT's
    published checkpoint used ``[0, 2, 4, 7, 9, 11]`` for 12: keeping the *last* layer, the one
    closest to the pre-training head, matters more than perfect spacing. Its extraction script
    also dropped the token-type embeddings; this module folds segment 0 into the positions.)

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    if num_student_layers is None:
        num_student_layers = max(1, num_teacher_layers // 2)
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"student layers must be between 1 and the teacher's {num_teacher_layers}; got {num_student_layers}"
        )
    step = num_teacher_layers / num_student_layers
    return [int(i * step) for i in range(num_student_layers)]


def _bert_parts(teacher: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(BertModel, classifier or None) from a BertModel or Bert*ForSequenceClassification."""
    if getattr(getattr(teacher, "config", None), "model_type", None) != "bert":
        raise ValueError(
            f"teacher must be a BERT model (config.model_type == 'bert'); got {type(teacher).__name__} "
            f"with model_type {getattr(getattr(teacher, 'config', None), 'model_type', None)!r}"
        )
    if hasattr(teacher, "bert"):
        return teacher.bert, getattr(teacher, "classifier", None)
    return teacher, None


def check_teacher_layers(layers: Sequence[int], num_teacher_layers: int, name: str = "layers") -> list[int]:
    """``layers`` as a list of teacher layers to copy, checked: strictly increasing ``encoder.layer``
    indices in ``0..num_teacher_layers - 1`` (0-based module indices -- the hidden state a copied layer ``i``
    produces is ``hidden_states[i + 1]``, which is how :func:`kd_lib.losses.layer_map` counts).
    ``ValueError`` names ``name`` and the valid range.

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError(f"{name} must name at least one teacher layer")
    given, valid = ",".join(map(str, layers)), f"0..{num_teacher_layers - 1}"
    bad = [i for i in layers if not 0 <= i < num_teacher_layers]
    if bad:
        raise ValueError(f"{name} {given}: teacher layers {bad} do not exist in a {num_teacher_layers}-layer teacher "
                         f"(give strictly increasing indices in {valid}, counted from 0)")
    if layers != sorted(set(layers)):
        raise ValueError(f"{name} {given}: give strictly increasing teacher layer indices in {valid}")
    return layers


def choose_student_layers(spec: int | Sequence[int] | None, num_teacher_layers: int,
                          name: str = "student_layers") -> list[int]:
    """The teacher layers a student copies, from a count (spread evenly, :func:`default_student_layers`),
    an explicit list (checked by :func:`check_teacher_layers`) or ``None`` (every other layer).

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    if spec is None:
        return default_student_layers(num_teacher_layers)
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= num_teacher_layers:
            raise ValueError(
                f"{name} {spec}: a student needs between 1 and the teacher's {num_teacher_layers} layers"
            )
        return default_student_layers(num_teacher_layers, spec)
    return check_teacher_layers(spec, num_teacher_layers, name)


def bert_to_distilbert_state_dict(
    bert_state: dict[str, torch.Tensor], layers: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Rename a ``BertModel`` state dict (keys without the ``bert.`` prefix) to DistilBERT's.

    The token-type embedding of segment 0 is folded into the position embeddings: BERT adds
    ``word + position + token_type[0]`` for single-segment input, DistilBERT only
    ``word + position``, so ``position' = position + token_type[0]`` is exact for such input.
    The pooler has no DistilBERT counterpart and is not included.

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    out = {
        "distilbert.embeddings.word_embeddings.weight": bert_state["embeddings.word_embeddings.weight"],
        "distilbert.embeddings.position_embeddings.weight": bert_state["embeddings.position_embeddings.weight"]
        + bert_state["embeddings.token_type_embeddings.weight"][0],
        "distilbert.embeddings.LayerNorm.weight": bert_state["embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": bert_state["embeddings.LayerNorm.bias"],
    }
    for j, i in enumerate(layers):
        for bert_name, distil_name in LAYER_MAP.items():
            for kind in ("weight", "bias"):
                out[f"distilbert.transformer.layer.{j}.{distil_name}.{kind}"] = bert_state[
                    f"encoder.layer.{i}.{bert_name}.{kind}"
                ]
    return out


def distilbert_config(bert_config, layers: Sequence[int] | None = None, **extra):
    """``(DistilBertConfig, layers)``: the DistilBERT shape of a BERT config with ``layers`` of its layers
    (default every other one; checked by :func:`check_teacher_layers`), recorded as ``teacher_layers``.
    ``extra`` goes to the config (``num_labels``, ``tie_word_embeddings``, ...). ``ValueError`` for a BERT
    that DistilBERT cannot express (relative positions; an activation other than gelu or relu).

    Taught in notebook 05, section 1 (DistilBERT: what it keeps, what it drops).
    """
    from transformers import DistilBertConfig

    cfg = bert_config
    n_teacher = cfg.num_hidden_layers
    layers = default_student_layers(n_teacher) if layers is None else check_teacher_layers(layers, n_teacher)
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT teachers with absolute position embeddings map onto DistilBERT")
    act = cfg.hidden_act if isinstance(cfg.hidden_act, str) else "gelu"
    if act not in {"gelu", "relu"}:
        raise ValueError(f"DistilBERT supports gelu or relu activations; the teacher uses {act!r}")
    config = DistilBertConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        n_layers=len(layers),
        n_heads=cfg.num_attention_heads,
        dim=cfg.hidden_size,
        hidden_dim=cfg.intermediate_size,
        dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob,
        activation=act,
        pad_token_id=cfg.pad_token_id,
        teacher_layers=layers,
        **extra,
    )
    return config, layers


def distilbert_from_bert(
    teacher: nn.Module,
    layers: Sequence[int] | None = None,
    num_labels: int | None = None,
    init: str = "teacher",
    seed: int = 0,
):
    """Build a ``DistilBertForSequenceClassification`` student from a BERT teacher.

    Args:
        teacher: a ``BertForSequenceClassification`` (or ``BertModel``).
        layers: teacher layer indices to copy, strictly increasing; default
            :func:`default_student_layers` (every other layer).
        num_labels: classes of the student's head; default: the teacher's.
        init: ``"teacher"`` copies embeddings and the chosen layers (and starts the head from
            the teacher's pooler and classifier); ``"random"`` keeps the same architecture with
            fresh random weights -- the baseline that shows what the initialisation is worth.
        seed: seeds the randomly initialised parts.

    Returns:
        The student, in train mode, on the CPU.

    What cannot be carried over exactly: BERT classifies from ``tanh(W_pool · h_[CLS])``,
    DistilBERT from ``ReLU(W_pre · h_[CLS])``. The student's ``pre_classifier`` starts from the
    pooler's weights and its ``classifier`` from the teacher's, a useful starting point but not
    the same function (the activation differs), so the head must be trained.

    Taught in notebook 04, section 2 (A tour of BERT).
    """
    from transformers import DistilBertForSequenceClassification

    bert, classifier = _bert_parts(teacher)
    if init not in {"teacher", "random"}:
        raise ValueError(f"init must be 'teacher' or 'random'; got {init!r}")
    if num_labels is None:
        num_labels = getattr(teacher.config, "num_labels", 2)
    student_cfg, layers = distilbert_config(
        bert.config, layers, num_labels=num_labels,
        id2label=getattr(teacher.config, "id2label", None) if num_labels == teacher.config.num_labels else None,
    )
    torch.manual_seed(seed)
    student = DistilBertForSequenceClassification(student_cfg)
    if init == "teacher":
        state = bert_to_distilbert_state_dict(bert.state_dict(), layers)
        pooler = getattr(bert, "pooler", None)
        if pooler is not None:
            state["pre_classifier.weight"] = pooler.dense.weight
            state["pre_classifier.bias"] = pooler.dense.bias
        if classifier is not None and classifier.out_features == num_labels:
            state["classifier.weight"] = classifier.weight
            state["classifier.bias"] = classifier.bias
        state = {k: v.detach().clone() for k, v in state.items()}
        missing, unexpected = student.load_state_dict(state, strict=False)
        allowed_missing = {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}
        if unexpected or set(missing) - allowed_missing:
            raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    student.train()
    return student


def narrow_distilbert(
    teacher: nn.Module,
    *,
    num_layers: int = 3,
    hidden_size: int = 256,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    num_labels: int | None = None,
    seed: int = 0,
):
    """A randomly initialised DistilBERT narrower than ``teacher`` (TinyBERT-style student).

    It shares the teacher's vocabulary (so the teacher's tokenizer serves both) and maximum
    length, but not its width: no teacher weight fits, so everything starts random, and
    hidden-state losses need a projection (``kd_lib.losses.hidden_state_loss(projection=...)``).

    Args:
        teacher: a BERT teacher (or any model whose config has ``vocab_size`` and
            ``max_position_embeddings``).
        num_layers, hidden_size, num_heads: depth, width and heads (the names of ``BertConfig``, as in
            :func:`kd_lib.search.narrow_encoder`); ``hidden_size`` must be divisible by ``num_heads``.
        intermediate_size: feed-forward size; default ``4 * hidden_size`` (as in BERT).
        num_labels: default: the teacher's.
        seed: seeds the initialisation.

    Taught in notebook 06, section 1 (Why match what happens inside?).
    """
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    for name, value in (("num_layers", num_layers), ("hidden_size", hidden_size), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}): each head gets "
                         "hidden_size / num_heads features")
    cfg = teacher.config
    config = DistilBertConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        n_layers=num_layers,
        n_heads=num_heads,
        dim=hidden_size,
        hidden_dim=intermediate_size or 4 * hidden_size,
        pad_token_id=cfg.pad_token_id,
        num_labels=num_labels or cfg.num_labels,
    )
    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(config).train()
