"""One training loop for fine-tuning teachers and distilling students; logit caching.

The loop is the same whatever is trained: the *loss* is a parameter. ``ce_loss()`` fine-tunes
a teacher (or trains the CE-only baseline); ``kd_from_cache(...)`` distils from teacher
logits computed once; ``kd_online(...)`` runs the teacher alongside the student (needed for
hidden-state losses, whose teacher features are too large to cache); ``FeatureDistillLoss``
adds hidden-state and attention terms with named weights and logs each term, with a live
teacher or with ``CachedTeacherFeatures`` (the teacher's features computed once per dataset).

``fit`` also scales up: gradient accumulation and mixed precision (``TrainSettings.grad_accum``,
``TrainSettings.precision``), checkpoints every N optimizer steps that resume mid-epoch, and
multi-process data parallelism (``fit(..., distributed=True)`` under ``torchrun``): every
process sees the same shuffled global batches and computes its share of each.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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

__all__ = [
    "PRECISIONS",
    "CachedTeacherFeatures",
    "FeatureDistillLoss",
    "LossFn",
    "TrainSettings",
    "accuracy",
    "ce_loss",
    "check_precision",
    "evaluate_accuracy",
    "fit",
    "kd_from_cache",
    "kd_online",
    "make_optimizer",
    "predict_logits",
    "train_epoch",
    "warmup_linear_schedule",
]

# A loss function receives the student's forward outputs and the batch and returns a 0-dim loss.
LossFn = Callable[[object, dict], torch.Tensor]

# Training precisions: float32, or mixed precision (autocast) in bfloat16 or float16 -- the latter two on CUDA GPUs.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run (AdamW with linear warm-up and decay).

    ``batch_size`` is the number of examples per optimizer step, however they are computed:
    with ``grad_accum = k`` each step accumulates the gradients of ``k`` micro-batches, and with
    ``P`` processes (``fit(..., distributed=True)``) each process computes ``1 / P`` of every
    micro-batch -- the same steps, the same schedule and (up to float rounding) the same result.
    ``precision`` is ``"fp32"``, or ``"bf16"`` / ``"fp16"`` mixed precision (CUDA GPUs only).
    """

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int; got {self.epochs!r}")
        if not (isinstance(self.lr, float | int) and 0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1); got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {self.batch_size!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio!r}")
        if isinstance(self.grad_accum, bool) or not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ValueError(f"grad_accum must be a positive int (micro-batches per step); got {self.grad_accum!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}: batch_size counts "
                "the examples of one optimizer step, split into grad_accum equal micro-batches"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


def check_precision(precision: str, device: str | torch.device) -> str:
    """Return ``precision`` if it can train on ``device``; else raise ``ValueError`` naming the fix.

    Mixed precision (``"bf16"``, ``"fp16"``) is for CUDA GPUs: on a CPU, autocast to float16 is
    slow or unsupported and bfloat16 gains nothing, so both are refused rather than silently ignored.
    bfloat16 needs a GPU of compute capability 8.0 or newer (A100, H100, RTX 30xx and later).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return precision
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        gpu = "this machine has no CUDA GPU" if not torch.cuda.is_available() else "pass --device cuda"
        raise ValueError(
            f"--{precision} (mixed precision) needs a CUDA GPU and --device cuda, but the device is "
            f"{device.type!r} ({gpu}): drop --{precision} to train in float32"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--bf16: {torch.cuda.get_device_name(device)} does not support bfloat16 (compute capability 8.0+ "
            "needed); use --fp16 instead"
        )
    return precision


def adamw(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW at ``settings.lr``, with ``settings.weight_decay`` on weight matrices only (none on
    biases and LayerNorm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )


def make_optimizer(model: nn.Module, settings: TrainSettings, steps_per_epoch: int):
    """:func:`adamw` and a linear warm-up/decay schedule over ``settings.epochs * steps_per_epoch`` steps."""
    optimizer = adamw(model, settings)
    total = max(1, settings.epochs * steps_per_epoch)
    return optimizer, warmup_linear_schedule(optimizer, total, int(settings.warmup_ratio * total))


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """The course's learning-rate schedule over ``total_steps`` optimizer steps: a linear warm-up over
    the first ``warmup_steps`` (factor ``(step + 1) / (warmup + 1)``, so the first step already moves),
    then a linear decay to 0 (factor ``(total - step) / (total - warmup)``)."""
    total, warmup = max(1, total_steps), warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _forward(
    model: nn.Module, batch: dict, device: torch.device, hidden_states: bool = False, attentions: bool = False
):
    extra = {"output_attentions": True} if attentions else {}
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        output_hidden_states=hidden_states,
        **extra,
    )


def ce_loss() -> LossFn:
    """Plain cross-entropy with the hard labels."""

    def loss(outputs, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs.logits, batch["labels"].to(outputs.logits.device))

    loss.needs_hidden_states = False
    return loss


def kd_from_cache(
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    criterion: Callable[..., torch.Tensor] = distillation_loss,
) -> LossFn:
    """``criterion`` (default ``distillation_loss``) against cached teacher logits ``[N, C]``,
    looked up by ``batch["row"]`` so that shuffling never misaligns them.

    ``criterion(student_logits, teacher_logits, labels, temperature, alpha)`` may be any loss
    with that signature, e.g. :func:`kd_lib.transfer.transfer_loss` for partly labelled data.
    """
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2:
        got = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits).__name__
        raise ValueError(f"teacher_logits must be a tensor of shape [N, C]; got {got}")

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        cached = teacher_logits[batch["row"]].to(logits.device, logits.dtype)
        return criterion(logits, cached, batch["labels"].to(logits.device), temperature, alpha)

    loss.needs_hidden_states = False
    return loss


def kd_online(
    teacher: nn.Module,
    temperature: float = 2.0,
    alpha: float = 0.5,
    cosine_weight: float = 0.0,
) -> LossFn:
    """``distillation_loss`` with a live teacher (in eval mode, under ``no_grad``), plus an
    optional DistilBERT-style cosine loss between the last hidden states of student and
    teacher over the non-padding tokens (needs equal widths).

    The teacher is put in eval mode and its parameters are frozen (``requires_grad=False``):
    it is a fixed function during distillation. Call ``requires_grad_(True)`` on it to train
    it again afterwards."""
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    if cosine_weight < 0:
        raise ValueError(f"cosine_weight must be >= 0; got {cosine_weight!r}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        device = logits.device
        with torch.no_grad():
            t_out = _forward(teacher, batch, device, hidden_states=cosine_weight > 0)
        value = distillation_loss(logits, t_out.logits, batch["labels"].to(device), temperature, alpha)
        if cosine_weight > 0:
            mask = batch["attention_mask"].to(device)
            value = value + cosine_weight * hidden_state_loss(
                outputs.hidden_states[-1], t_out.hidden_states[-1], mask, kind="cosine"
            )
        return value

    loss.needs_hidden_states = cosine_weight > 0
    return loss


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
        _freeze(teacher)
        if self.attention_layers:
            teacher.set_attn_implementation("eager")
        device = torch.device(device)
        teacher.to(device)
        logits, hidden, attn = [], {j: [] for j in self.hidden_layers}, {j: [] for j in self.attention_layers}
        with torch.no_grad():
            for batch in tqdm(data.loader(batch_size), desc="teacher features", disable=not progress, leave=False):
                out = _forward(teacher, batch, device, bool(self.hidden_layers), bool(self.attention_layers))
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


def _freeze(teacher: nn.Module) -> None:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)


class FeatureDistillLoss(nn.Module):
    """Logit KD plus hidden-state and attention matching, with named weights; logs every term.

    ``total = w_logits * (alpha * kd + (1 - alpha) * ce) + w_hidden * hidden + w_attention * attention``

    where ``kd`` is :func:`~kd_lib.losses.kd_loss` at ``temperature``, ``ce`` the hard-label
    cross-entropy, ``hidden`` the mean of :func:`~kd_lib.losses.hidden_state_loss` over the mapped
    layer pairs (through a learnable ``nn.Linear`` per pair when the widths differ) and
    ``attention`` the mean of :func:`~kd_lib.losses.attention_loss` over the same pairs.

    It is a loss function for :func:`fit` (``loss(outputs, batch)``) and an ``nn.Module``: its
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
        self.temperature, self.alpha = check_temperature(temperature), check_alpha(alpha)
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
            _freeze(teacher)
        if self.weights["attention"] > 0:  # only the eager implementation returns attention maps
            for model in (student,) if cached else (teacher, student):
                model.set_attn_implementation("eager")
        s_width, t_width = _width(student), _width(teacher)
        torch.manual_seed(seed)
        self.projections = nn.ModuleList(
            nn.Linear(s_width, t_width) for _ in self.hidden_pairs if s_width != t_width and self.weights["hidden"] > 0
        )
        self.needs_hidden_states = self.weights["hidden"] > 0
        self.needs_attentions = self.weights["attention"] > 0
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
                t_out = _forward(teacher.to(device), batch, device, self.needs_hidden_states, self.needs_attentions)
        zero = logits.new_zeros(())
        terms = {"ce": F.cross_entropy(logits, labels), "kd": zero, "hidden": zero, "attention": zero}
        if self.weights["logits"] > 0 and self.alpha > 0:
            terms["kd"] = kd_loss(logits, t_out.logits, self.temperature)
        if self.needs_hidden_states:
            if outputs.hidden_states is None:
                raise ValueError("the student returned no hidden states: call it with output_hidden_states=True")
            terms["hidden"] = torch.stack([
                hidden_state_loss(outputs.hidden_states[i], t_out.hidden_states[j], mask, self.hidden_kind,
                                  self.projections[k] if len(self.projections) else None)
                for k, (i, j) in enumerate(self.hidden_pairs)
            ]).mean()
        if self.needs_attentions:
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


def _rank_world(model: nn.Module) -> tuple[int, int]:
    """``(rank, world_size)`` of a model wrapped in ``DistributedDataParallel``; ``(0, 1)`` otherwise."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _part(batch: dict, parts: int, k: int) -> tuple[dict, int]:
    """Rows of part ``k`` of a collated batch cut into ``parts`` near-equal slices (as ``torch.tensor_split``),
    and how many rows it holds. An empty part is given the batch's first row (to be weighted 0)."""
    n = batch["labels"].shape[0]
    size, extra = divmod(n, parts)
    start = k * size + min(k, extra)
    stop = start + size + (k < extra)
    count = stop - start
    if count == 0:
        start, stop = 0, 1
    sliced = {key: v[start:stop] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
              for key, v in batch.items()}
    return sliced, count


def train_epoch(
    model: nn.Module,
    data: EncodedDataset,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    max_grad_norm: float = 1.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    grad_accum: int = 1,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    skip_steps: int = 0,
    loss_so_far: tuple[float, int] = (0.0, 0),
    on_step: Callable[[int, float, int], None] | None = None,
) -> float:
    """Train ``model`` for one epoch over ``data`` (shuffled with ``seed + epoch``).

    Returns the mean training loss per example. The shuffle order depends only on ``seed`` and
    ``epoch``, so a run resumed at an epoch boundary sees the same batches as an uninterrupted one;
    ``skip_steps`` (with ``loss_so_far``, the ``(sum of losses x examples, examples)`` of those steps)
    resumes in the middle of the epoch, after the first ``skip_steps`` batches of the same order.

    Each batch of ``batch_size`` examples is one optimizer step. It is cut into ``grad_accum x P``
    near-equal parts, ``P`` being the number of processes when ``model`` is wrapped in
    ``DistributedDataParallel``; this process computes parts ``i * P + rank`` (``i < grad_accum``),
    each loss weighted by its share of the batch, so the averaged gradient is the whole batch's.
    ``precision`` ``"bf16"``/``"fp16"`` runs forward and loss under ``torch.autocast`` (``fp16`` with
    ``scaler``, a ``GradScaler``). ``on_step(steps_done, loss_sum, examples)`` is called after every
    optimizer step (the hook for step checkpoints).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.to(device).train()
    params = list(model.parameters())
    loss_params: list[nn.Parameter] = []
    if isinstance(loss_fn, nn.Module):  # a loss with trainable parts (e.g. projections) trains with the model
        loss_fn.to(device).train()
        loss_params = list(loss_fn.parameters())
        params += loss_params
    rank, world = _rank_world(model)
    parts = world * grad_accum
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    total, count = loss_so_far
    batches = data.loader(batch_size, shuffle=True, seed=seed * 1000 + epoch)
    remaining = itertools.islice(batches, skip_steps, None)
    bar = tqdm(remaining, desc=desc, disable=not progress, leave=False, initial=skip_steps,
               total=len(batches) if hasattr(batches, "__len__") else None)
    for step, batch in enumerate(bar, start=skip_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        n_batch = batch["labels"].shape[0]
        for i in range(grad_accum):
            part, n = (batch, n_batch) if parts == 1 else _part(batch, parts, i * world + rank)
            last = i == grad_accum - 1
            sync = model.no_sync() if world > 1 and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    outputs = _forward(
                        model, part, device, getattr(loss_fn, "needs_hidden_states", False),
                        getattr(loss_fn, "needs_attentions", False),
                    )
                    loss = loss_fn(outputs, part)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}: lower the learning rate")
                weighted = loss if parts == 1 else loss * (world * n / n_batch)
                (scaler.scale(weighted) if scaler is not None else weighted).backward()
            total += loss.item() * n
            count += n
        if world > 1:  # DDP averages the model's gradients; a loss's own parameters are averaged here
            for p in (p for p in loss_params if p.grad is not None):
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step, total, count)
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = sums.tolist()
    return total / max(1, count)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: EncodedDataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) for every item of ``data``, in dataset order.

    The model is put in eval mode (dropout off) and no autograd graph is built.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    out = []
    for batch in tqdm(data.loader(batch_size), desc=desc, disable=not progress, leave=False):
        out.append(_forward(model, batch, device).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels) -> float:
    """Fraction of rows whose arg-max equals the label."""
    labels = torch.as_tensor(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but labels {labels.shape[0]}")
    return (logits.argmax(-1) == labels).float().mean().item()


def evaluate_accuracy(model: nn.Module, data: EncodedDataset, batch_size: int = 64, device="cpu") -> float:
    """Accuracy of ``model`` on ``data``."""
    return accuracy(predict_logits(model, data, batch_size, device), data.labels)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state (dropout masks come from it): CPU, and the GPU's when on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_checkpoint(
    path,
    model,
    optimizer,
    scheduler,
    epochs_done: int,
    history: list[float],
    *,
    rng: list[dict[str, torch.Tensor]],
    steps_done: int = 0,
    loss_so_far: tuple[float, int] = (0.0, 0),
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write a checkpoint atomically: after ``epochs_done`` whole epochs and ``steps_done`` optimizer
    steps of the next one, with the random state of every process (``rng[rank]``)."""
    import io

    from kd_lib.utils import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(
        {
            "epochs_done": epochs_done,
            "steps_done": steps_done,
            "loss_so_far": list(loss_so_far),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "torch_rng": rng[0]["cpu"],
            "rng": rng,
            "history": history,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def fit(
    model: nn.Module,
    data: EncodedDataset,
    loss_fn: LossFn,
    settings: TrainSettings,
    *,
    seed: int = 0,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    checkpoint_every: int | None = None,
    distributed: bool = False,
) -> list[float]:
    """Train for ``settings.epochs`` epochs; return the mean loss of each epoch.

    With ``checkpoint`` (a file path), the model, optimizer, schedule and random state are saved
    atomically after every epoch -- and, with ``checkpoint_every = N``, after every ``N`` optimizer
    steps -- and a later call with the same path resumes from the last one: an interruption loses
    at most the steps since, and the resumed run sees the same batches and dropout masks as an
    uninterrupted one (identical results on a CPU).

    With ``distributed=True`` (``torch.distributed`` initialised, e.g. under ``torchrun``) the model
    is wrapped in ``DistributedDataParallel`` and each process computes its share of every batch
    (see :func:`train_epoch`); only rank 0 writes the checkpoint, which every process reads on resume
    (keep it on a file system they share). Every process must call ``fit`` with the same arguments.
    """
    device = torch.device(device)
    check_precision(settings.precision, device)
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int (optimizer steps) or None; got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError(f"checkpoint_every={checkpoint_every} needs checkpoint= (the file to write)")
    if distributed and not torch.distributed.is_initialized():
        raise ValueError("distributed=True needs torch.distributed initialised (run under torchrun); "
                         "or pass distributed=False")
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    # A loss with trainable parts (FeatureDistillLoss's projections) is optimised and checkpointed
    # together with the model.
    trained = model
    if isinstance(loss_fn, nn.Module) and any(True for _ in loss_fn.parameters()):
        trained = nn.ModuleDict({"model": model, "loss": loss_fn})
    trained.to(device)  # before the optimizer, so its state lives on the same device
    per_epoch = len(data.loader(settings.batch_size))  # optimizer steps per epoch, whatever the dataset batches
    optimizer, scheduler = make_optimizer(trained, settings, per_epoch)
    scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
    history: list[float] = []
    start, skip, so_far = 0, 0, (0.0, 0)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        trained.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng") or [{"cpu": state["torch_rng"]}]  # epoch checkpoints of earlier versions
        _set_rng_state(rngs[rank] if len(rngs) == world else rngs[0], device)
        start, history = state["epochs_done"], list(state["history"])
        skip = state.get("steps_done", 0)
        if rank == 0:  # the loss sums of a partly done epoch are the whole batch's: rank 0 carries them
            so_far = tuple(state.get("loss_so_far", (0.0, 0)))
    runner = model
    if distributed:
        gpus = None
        if device.type == "cuda":
            gpus = [device.index if device.index is not None else torch.cuda.current_device()]
        runner = nn.parallel.DistributedDataParallel(model, device_ids=gpus)

    def save(epochs_done: int, steps_done: int = 0, loss_sum: float = 0.0, examples: int = 0) -> None:
        rng = [_rng_state(device)]
        if distributed:
            rng = [None] * world
            torch.distributed.all_gather_object(rng, _rng_state(device))
            sums = torch.tensor([loss_sum, examples], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(sums)
            loss_sum, examples = sums.tolist()
        if rank == 0:
            _save_checkpoint(checkpoint, trained, optimizer, scheduler, epochs_done, history, rng=rng,
                             steps_done=steps_done, loss_so_far=(loss_sum, examples), scaler=scaler)

    for epoch in range(start, settings.epochs):

        def on_step(step: int, loss_sum: float, examples: int, epoch: int = epoch) -> None:
            if checkpoint is not None and (epoch * per_epoch + step) % checkpoint_every == 0 and step < per_epoch:
                save(epoch, step, loss_sum, examples)

        loss = train_epoch(
            runner, data, loss_fn, optimizer, scheduler, batch_size=settings.batch_size, seed=seed, epoch=epoch,
            max_grad_norm=settings.max_grad_norm, device=device, progress=progress and rank == 0,
            desc=f"{desc} epoch {epoch + 1}/{settings.epochs}", grad_accum=settings.grad_accum,
            precision=settings.precision, scaler=scaler, skip_steps=skip if epoch == start else 0,
            loss_so_far=so_far if epoch == start else (0.0, 0), on_step=on_step if checkpoint_every else None,
        )
        history.append(loss)
        if checkpoint is not None:
            save(epoch + 1)
    return history
