"""One training loop for fine-tuning teachers and distilling students; logit caching.

The loop is the same whatever is trained: the *loss* is a parameter. ``ce_loss()`` fine-tunes
a teacher (or trains the CE-only baseline); ``kd_from_cache(...)`` distils from teacher
logits computed once; ``kd_online(...)`` runs the teacher alongside the student (needed for
hidden-state losses, whose teacher features are too large to cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.data import EncodedDataset
from kd_lib.losses import check_alpha, check_temperature, distillation_loss

__all__ = [
    "LossFn",
    "TrainSettings",
    "accuracy",
    "ce_loss",
    "evaluate_accuracy",
    "fit",
    "kd_from_cache",
    "kd_online",
    "make_optimizer",
    "predict_logits",
    "train_epoch",
]

# A loss function receives the student's forward outputs and the batch and returns a 0-dim loss.
LossFn = Callable[[object, dict], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run (AdamW with linear warm-up and decay)."""

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int; got {self.epochs!r}")
        if not (isinstance(self.lr, float | int) and 0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1); got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {self.batch_size!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio!r}")


def make_optimizer(model: nn.Module, settings: TrainSettings, steps_per_epoch: int):
    """AdamW (no weight decay on biases and LayerNorm) and a linear warm-up/decay schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = int(settings.warmup_ratio * total)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _forward(model: nn.Module, batch: dict, device: torch.device, hidden_states: bool = False):
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        output_hidden_states=hidden_states,
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
            mask = batch["attention_mask"].to(device).bool()
            s_h, t_h = outputs.hidden_states[-1][mask], t_out.hidden_states[-1][mask]
            if s_h.shape[-1] != t_h.shape[-1]:
                raise ValueError(f"cosine loss needs equal widths; student {s_h.shape[-1]}, teacher {t_h.shape[-1]}")
            value = value + cosine_weight * (1 - F.cosine_similarity(s_h, t_h, dim=-1)).mean()
        return value

    loss.needs_hidden_states = cosine_weight > 0
    return loss


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
) -> float:
    """Train ``model`` for one epoch over ``data`` (shuffled with ``seed + epoch``).

    Returns the mean training loss. The shuffle order depends only on ``seed`` and ``epoch``,
    so a run resumed at an epoch boundary sees the same batches as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.to(device).train()
    total, count = 0.0, 0
    batches = data.loader(batch_size, shuffle=True, seed=seed * 1000 + epoch)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        outputs = _forward(model, batch, device, getattr(loss_fn, "needs_hidden_states", False))
        loss = loss_fn(outputs, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}: lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        n = batch["labels"].shape[0]
        total += loss.item() * n
        count += n
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


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch."""
    return math.ceil(n_examples / batch_size)


def _save_checkpoint(path, model, optimizer, scheduler, epochs_done: int, history: list[float]) -> None:
    import io

    from kd_lib.utils import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(
        {
            "epochs_done": epochs_done,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
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
) -> list[float]:
    """Train for ``settings.epochs`` epochs; return the mean loss of each epoch.

    With ``checkpoint`` (a file path), the model, optimizer, schedule and RNG state are saved
    atomically after every epoch, and a later call with the same path resumes after the last
    completed epoch -- an interruption loses at most the epoch in progress, and the resumed
    run sees the same batches as an uninterrupted one.
    """
    from pathlib import Path

    model.to(torch.device(device))  # before the optimizer, so its state lives on the same device
    optimizer, scheduler = make_optimizer(model, settings, steps_per_epoch(len(data), settings.batch_size))
    history: list[float] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, history = state["epochs_done"], list(state["history"])
    for epoch in range(start, settings.epochs):
        loss = train_epoch(
            model, data, loss_fn, optimizer, scheduler, batch_size=settings.batch_size, seed=seed, epoch=epoch,
            max_grad_norm=settings.max_grad_norm, device=device, progress=progress,
            desc=f"{desc} epoch {epoch + 1}/{settings.epochs}",
        )
        history.append(loss)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, epoch + 1, history)
    return history
