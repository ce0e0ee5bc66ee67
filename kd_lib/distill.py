"""Distillation objectives for the training loop: from cached logits, from a live teacher, and feature-based.

Each returns an :class:`~kd_lib.training.Objective` for :func:`kd_lib.training.fit`:

- :func:`kd_from_cache`: ``distillation_loss`` against teacher logits computed once (notebook 05);
- :func:`kd_online`: the teacher runs beside the student, frozen, under ``no_grad`` (notebook 05),
  optionally with DistilBERT's cosine loss on the last hidden states;
- :class:`FeatureDistillLoss`: logits plus hidden-state and attention terms with named weights, every
  term logged, with a live teacher or :class:`CachedTeacherFeatures` (the teacher's mapped features
  computed once per dataset) -- notebook 06.

The losses themselves (pure functions on tensors) are in :mod:`kd_lib.losses`; the loop in
:mod:`kd_lib.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.data import EncodedDataset
from kd_lib.losses import (
    attention_loss,
    check_alpha,
    check_temperature,
    distillation_loss,
    hidden_state_loss,
    kd_loss,
    layer_map,
)
from kd_lib.training import ForwardNeeds, LossFunction, forward, freeze

__all__ = ["CachedTeacherFeatures", "FeatureDistillLoss", "kd_from_cache", "kd_online"]


def kd_from_cache(
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    criterion: Callable[..., torch.Tensor] = distillation_loss,
) -> LossFunction:
    """``criterion`` (default ``distillation_loss``) against cached teacher logits ``[N, C]``,
    looked up by ``batch["row"]`` so that shuffling never misaligns them.

    ``criterion(student_logits, teacher_logits, labels, temperature, alpha)`` may be any loss
    with that signature, e.g. :func:`kd_lib.transfer.transfer_loss` for partly labelled data.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    temperature, alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2:
        got = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits).__name__
        raise ValueError(f"teacher_logits must be a tensor of shape [N, C]; got {got}")

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        cached = teacher_logits[batch["row"]].to(logits.device, logits.dtype)
        return criterion(logits, cached, batch["labels"].to(logits.device), temperature, alpha)

    return LossFunction(loss)


def kd_online(
    teacher: nn.Module,
    temperature: float = 2.0,
    alpha: float = 0.5,
    cosine_weight: float = 0.0,
) -> LossFunction:
    """``distillation_loss`` with a live teacher (frozen by :func:`~kd_lib.training.freeze`: eval mode,
    ``requires_grad=False``, run under ``no_grad``), plus an optional DistilBERT-style cosine loss
    between the last hidden states of student and teacher over the non-padding tokens (needs equal
    widths). Call ``requires_grad_(True)`` on the teacher to train it again afterwards.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    temperature, alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
    if cosine_weight < 0:
        raise ValueError(f"cosine_weight must be >= 0; got {cosine_weight!r}")
    freeze(teacher)
    needs = ForwardNeeds(hidden_states=cosine_weight > 0)

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        device = logits.device
        with torch.no_grad():
            t_out = forward(teacher, batch, device, needs)
        value = distillation_loss(logits, t_out.logits, batch["labels"].to(device), temperature, alpha)
        if cosine_weight > 0:
            mask = batch["attention_mask"].to(device)
            value = value + cosine_weight * hidden_state_loss(
                outputs.hidden_states[-1], t_out.hidden_states[-1], mask, kind="cosine"
            )
        return value

    return LossFunction(loss, needs)


class CachedTeacherFeatures:
    """A teacher's outputs on every row of a dataset, computed once and looked up per batch.

    Re-running the teacher every epoch costs as much as a forward pass of the student; for
    feature losses its hidden states are too big to keep in full, but the *mapped* layers at the
    *real* tokens are not: ``rows x tokens x width x layers`` half-precision numbers (about 10 kB per
    SST-2 sentence and layer at width 384). Attention maps are stored averaged over heads
    (``[L, L]`` per layer), which is what a student with a different head count is compared with.

    Use it in place of the teacher in :class:`FeatureDistillLoss`. The loader's shuffling
    cannot misalign it: lookups go through ``batch["row"]``.

    Args:
        teacher: the teacher model (run once, in eval mode, under ``no_grad``).
        data: the dataset the student will be trained on (same tokenizer and ``max_length``).
        hidden_layers: teacher layers whose hidden states to keep (``0`` = embedding output).
        attention_layers: teacher layers (1..T) whose head-averaged attention to keep.
        dtype: storage precision (``float16`` halves the memory; lookups return float32).

    Taught in notebook 06, section 5 (Run the teacher once: cached features).
    """

    def __init__(
        self,
        teacher: nn.Module,
        data: EncodedDataset,
        hidden_layers: list[int] = (),
        attention_layers: list[int] = (),
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
        progress: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        n_layers = teacher.config.num_hidden_layers
        bad = [j for j in hidden_layers if not 0 <= j <= n_layers] + [j for j in attention_layers
                                                                       if not 1 <= j <= n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist in a {n_layers}-layer teacher (hidden 0..{n_layers}, "
                             f"attention 1..{n_layers})")
        self.config = SimpleNamespace(hidden_size=_width(teacher), num_hidden_layers=n_layers)
        self.hidden_layers, self.attention_layers = list(hidden_layers), list(attention_layers)
        freeze(teacher)
        if self.attention_layers:
            teacher.set_attn_implementation("eager")
        device = torch.device(device)
        teacher.to(device)
        logits, hidden, attn = [], {j: [] for j in self.hidden_layers}, {j: [] for j in self.attention_layers}
        with torch.no_grad():
            for batch in tqdm(data.loader(batch_size), desc="teacher features", disable=not progress, leave=False):
                needs = ForwardNeeds(bool(self.hidden_layers), bool(self.attention_layers))
                out = forward(teacher, batch, device, needs)
                logits.append(out.logits.float().cpu())
                for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
                    for j in self.hidden_layers:
                        hidden[j].append(out.hidden_states[j][i, :n].to("cpu", dtype))
                    for j in self.attention_layers:
                        attn[j].append(out.attentions[j - 1][i].mean(0)[:n, :n].to("cpu", dtype))
        self.logits, self.hidden, self.attn = torch.cat(logits), hidden, attn

    @property
    def nbytes(self) -> int:
        """Memory held by the cached features, in bytes."""
        tensors = [self.logits, *(t for rows in (*self.hidden.values(), *self.attn.values()) for t in rows)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def lookup(self, batch: dict, device: torch.device) -> SimpleNamespace:
        """Teacher outputs for ``batch``, zero-padded to its length: ``logits [B, C]``,
        ``hidden_states[j]`` ``[B, L, D]`` and ``attentions[j - 1]`` ``[B, 1, L, L]`` (float32)."""
        rows, length = batch["row"].tolist(), batch["input_ids"].shape[1]

        def pad(pieces: list[torch.Tensor], square: bool) -> torch.Tensor:
            shape = (len(pieces), length, length) if square else (len(pieces), length, pieces[0].shape[-1])
            out = torch.zeros(shape)
            for i, p in enumerate(pieces):
                out[i, : p.shape[0], : p.shape[1]] = p
            return out.to(device)

        return SimpleNamespace(
            logits=self.logits[rows].to(device),
            hidden_states={j: pad([h[r] for r in rows], False) for j, h in self.hidden.items()},
            attentions={j - 1: pad([a[r] for r in rows], True)[:, None] for j, a in self.attn.items()},
        )



def _width(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.dim)




class FeatureDistillLoss(nn.Module):
    """Logit KD plus hidden-state and attention matching, with named weights; logs every term.

    ``total = w_logits * (alpha * kd + (1 - alpha) * ce) + w_hidden * hidden + w_attention * attention``

    where ``kd`` is :func:`~kd_lib.losses.kd_loss` at ``temperature``, ``ce`` the hard-label
    cross-entropy, ``hidden`` the mean of :func:`~kd_lib.losses.hidden_state_loss` over the mapped
    layer pairs (through a learnable ``nn.Linear`` per pair when the widths differ) and
    ``attention`` the mean of :func:`~kd_lib.losses.attention_loss` over the same pairs.

    It is an objective for :func:`~kd_lib.training.fit` (``loss(outputs, batch)``) and an ``nn.Module``: its
    projections are trained with the student (``fit`` adds them to the optimizer and checkpoint).
    The teacher runs in eval mode under ``no_grad`` with frozen parameters; it is not a submodule,
    so it is neither trained nor saved with the loss. The student is only read for its shape.

    Each training call appends ``{"total", "ce", "kd", "hidden", "attention"}`` (floats, terms
    with weight 0 are not computed and logged as 0.0) to ``self.history``.

    Args:
        teacher: the teacher (BERT-like, ``output_hidden_states``/``output_attentions`` capable),
            or its :class:`CachedTeacherFeatures` for the training data.
        student: the student; its layer count, width and heads decide the mapping and projections.
        layers: a :func:`~kd_lib.losses.layer_map` strategy: ``"uniform"``, ``"last"`` or a list
            of teacher layers, one per student layer.
        weights: any of ``{"logits", "hidden", "attention"}`` -> weight ``>= 0`` (missing: logits 1,
            others 0).
        hidden_kind: ``"mse"`` or ``"cosine"``; attention_kind: ``"kl"`` or ``"mse"``.
        include_embeddings: also match the embedding outputs (``hidden_states[0]``), as TinyBERT does.

    Taught in notebook 06, section 5 (Run the teacher once: cached features).
    """

    TERMS = ("logits", "hidden", "attention")

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        layers: str | list[int] = "uniform",
        temperature: float = 2.0,
        alpha: float = 0.5,
        weights: dict[str, float] | None = None,
        hidden_kind: str = "mse",
        attention_kind: str = "kl",
        include_embeddings: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.temperature, self.alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.TERMS)
        if unknown:
            raise ValueError(f"weights has unknown terms {sorted(unknown)}; use {list(self.TERMS)}")
        self.weights = {"logits": 1.0, "hidden": 0.0, "attention": 0.0} | {k: float(v) for k, v in weights.items()}
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ValueError(f"weights must be >= 0 and not all 0; got {self.weights}")
        if hidden_kind not in {"mse", "cosine"} or attention_kind not in {"kl", "mse"}:
            raise ValueError(f"hidden_kind must be 'mse'/'cosine' and attention_kind 'kl'/'mse'; "
                             f"got {hidden_kind!r}, {attention_kind!r}")
        self.hidden_kind, self.attention_kind = hidden_kind, attention_kind
        self.pairs = layer_map(student, teacher, layers)
        self.hidden_pairs = ([(0, 0)] if include_embeddings else []) + self.pairs
        self.teacher = [teacher]  # a list keeps it out of this module's parameters and state_dict
        cached = isinstance(teacher, CachedTeacherFeatures)
        if cached:
            need_h = {j for _, j in self.hidden_pairs} if self.weights["hidden"] else set()
            need_a = {j for _, j in self.pairs} if self.weights["attention"] else set()
            missing = sorted(need_h - set(teacher.hidden)) + sorted(need_a - set(teacher.attn))
            if missing:
                raise ValueError(f"the cached teacher features lack layers {missing}: build CachedTeacherFeatures "
                                 "with every layer the mapping uses")
        else:
            freeze(teacher)
        if self.weights["attention"] > 0:  # only the eager implementation returns attention maps
            for model in (student,) if cached else (teacher, student):
                model.set_attn_implementation("eager")
        s_width, t_width = _width(student), _width(teacher)
        torch.manual_seed(seed)
        self.projections = nn.ModuleList(
            nn.Linear(s_width, t_width) for _ in self.hidden_pairs if s_width != t_width and self.weights["hidden"] > 0
        )
        self.needs = ForwardNeeds(hidden_states=self.weights["hidden"] > 0, attentions=self.weights["attention"] > 0)
        self.history: list[dict[str, float]] = []

    def forward(self, outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        device = logits.device
        labels = batch["labels"].to(device)
        mask = batch["attention_mask"].to(device)
        teacher = self.teacher[0]
        if isinstance(teacher, CachedTeacherFeatures):
            t_out = teacher.lookup(batch, device)
        else:
            with torch.no_grad():
                t_out = forward(teacher.to(device), batch, device, self.needs)
        zero = logits.new_zeros(())
        terms = {"ce": F.cross_entropy(logits, labels), "kd": zero, "hidden": zero, "attention": zero}
        if self.weights["logits"] > 0 and self.alpha > 0:
            terms["kd"] = kd_loss(logits, t_out.logits, self.temperature)
        if self.needs.hidden_states:
            if outputs.hidden_states is None:
                raise ValueError("the student returned no hidden states: call it with output_hidden_states=True")
            terms["hidden"] = torch.stack([
                hidden_state_loss(outputs.hidden_states[i], t_out.hidden_states[j], mask, self.hidden_kind,
                                  self.projections[k] if len(self.projections) else None)
                for k, (i, j) in enumerate(self.hidden_pairs)
            ]).mean()
        if self.needs.attentions:
            if not outputs.attentions:
                raise ValueError(
                    "the student returned no attention maps: call model.set_attn_implementation('eager') "
                    "and run it with output_attentions=True"
                )
            pairs = [(outputs.attentions[i - 1], t_out.attentions[j - 1]) for i, j in self.pairs]
            terms["attention"] = torch.stack([
                attention_loss(s, t, mask, self.attention_kind, "match" if s.shape[1] == t.shape[1] else "average")
                for s, t in pairs
            ]).mean()
        w = self.weights
        total = (
            w["logits"] * (self.alpha * terms["kd"] + (1 - self.alpha) * terms["ce"])
            + w["hidden"] * terms["hidden"]
            + w["attention"] * terms["attention"]
        )
        if self.training:
            self.history.append({"total": total.item()} | {k: v.item() for k, v in terms.items()})
        return total


