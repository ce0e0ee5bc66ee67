"""The one training loop of the course, for teachers and students alike; prediction and accuracy.

The loop is the same whatever is trained: the *objective* is a parameter. :func:`ce_loss`
fine-tunes a teacher (or trains the CE-only baseline); the distillation objectives live in
:mod:`kd_lib.distill`. An objective is any callable ``objective(outputs, batch) -> loss`` that
may declare, through :class:`ForwardNeeds`, what it needs from the student's forward pass
(hidden states, attention maps) -- see :class:`Objective`.

``fit`` also scales up: gradient accumulation and mixed precision (``TrainSettings.grad_accum``,
``TrainSettings.precision``), checkpoints every N optimizer steps that resume mid-epoch, and
multi-process data parallelism (``fit(..., distributed=True)`` under ``torchrun``): every
process sees the same shuffled global batches and computes its share of each.

Taught in notebook 04 (A BERT teacher), section 3 (optimizer, schedule, the loop), and
notebook 11 (Scaling up), section 2 (data parallelism).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.distributed import SINGLE, Processes, all_gather, current, sum_over_processes
from kd_lib.losses import IGNORE_INDEX
from kd_lib.utils import atomic_write_bytes

__all__ = [
    "PRECISIONS",
    "EpochStart",
    "ForwardNeeds",
    "LossFunction",
    "Objective",
    "Optimization",
    "TrainSettings",
    "accuracy",
    "adamw",
    "ce_loss",
    "check_batch_split",
    "check_precision",
    "epoch_seed",
    "evaluate_accuracy",
    "fit",
    "forward",
    "freeze",
    "make_optimizer",
    "needs_of",
    "predict_logits",
    "train_epoch",
    "warmup_linear_schedule",
]

# Training precisions: float32, or mixed precision (autocast) in bfloat16 or float16 -- the latter two on CUDA GPUs.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Settings and their checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run (AdamW with linear warm-up and decay).

    ``batch_size`` is the number of examples per optimizer step, however they are computed:
    with ``grad_accum = k`` each step accumulates the gradients of ``k`` micro-batches, and with
    ``P`` processes (``fit(..., distributed=True)``) each process computes ``1 / P`` of every
    micro-batch -- the same steps, the same schedule and (up to float rounding) the same result.
    ``precision`` is ``"fp32"``, or ``"bf16"`` / ``"fp16"`` mixed precision (CUDA GPUs only).
    ``fused_adamw`` updates every parameter in one fused AdamW kernel (``torch.optim.AdamW(fused=True)``)
    instead of one tensor at a time: the same update up to float rounding, and faster on a CPU, where
    the per-tensor update of a large embedding table takes a good part of a small model's step (the
    main job uses it; notebook 05, section 4 measures it).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    precision: str = "fp32"
    fused_adamw: bool = False

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
        check_batch_split(self.batch_size, self.grad_accum, 1)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if not isinstance(self.fused_adamw, bool):
            raise ValueError(f"fused_adamw must be True or False; got {self.fused_adamw!r}")


def check_batch_split(batch_size: int, grad_accum: int, world: int) -> int:
    """Examples per micro-batch and process: ``batch_size / (grad_accum * world)``; ``ValueError`` naming
    the options when it is not a whole number.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    parts = grad_accum * world
    if batch_size % parts:
        raise ValueError(
            f"--batch-size {batch_size} must be a multiple of --grad-accum {grad_accum} x {world} process(es) "
            f"= {parts}: it counts the examples of one optimizer step, split evenly over micro-batches and processes"
        )
    return batch_size // parts


def check_precision(precision: str, device: str | torch.device) -> str:
    """Return ``precision`` if it can train on ``device``; else raise ``ValueError`` naming the fix.

    Mixed precision (``"bf16"``, ``"fp16"``) is for CUDA GPUs: on a CPU, autocast to float16 is
    slow or unsupported and bfloat16 gains nothing, so both are refused rather than silently ignored.
    bfloat16 needs a GPU of compute capability 8.0 or newer (A100, H100, RTX 30xx and later).

    Taught in notebook 11, section 3 (On GPUs: the commands).
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of ``epoch`` in a run seeded ``seed``: the loop and the Trainer visit the same order.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """
    return seed * 1000 + epoch


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------


def adamw(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW at ``settings.lr``, with ``settings.weight_decay`` on weight matrices only (none on
    biases and LayerNorm); PyTorch's fused kernel when ``settings.fused_adamw``.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        fused=True if settings.fused_adamw else None,  # None: PyTorch's default (per tensor, or foreach on GPUs)
    )


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """The course's learning-rate schedule over ``total_steps`` optimizer steps: a linear warm-up over
    the first ``warmup_steps`` (factor ``(step + 1) / (warmup + 1)``, so the first step already moves),
    then a linear decay to 0 (factor ``(total - step) / (total - warmup)``).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    total, warmup = max(1, total_steps), warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def make_optimizer(model: nn.Module, settings: TrainSettings, steps_per_epoch: int):
    """:func:`adamw` and :func:`warmup_linear_schedule` over ``settings.epochs * steps_per_epoch`` steps,
    the warm-up ``settings.warmup_ratio`` of them.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    optimizer = adamw(model, settings)
    total = max(1, settings.epochs * steps_per_epoch)
    return optimizer, warmup_linear_schedule(optimizer, total, int(settings.warmup_ratio * total))


@dataclass
class Optimization:
    """What one optimizer step uses: the optimizer, its schedule and, for float16, a ``GradScaler``.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None

    def step(self, params: list[nn.Parameter], max_grad_norm: float) -> None:
        """Clip the gradients of ``params`` to ``max_grad_norm``, step the optimizer, advance the schedule."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()


# ---------------------------------------------------------------------------------------------
# Objectives: what a loss needs from the forward pass
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardNeeds:
    """What an objective reads from the model's outputs besides the logits.

    Taught in notebook 06, section 3 (Hidden-state loss (with a projection)).
    """

    hidden_states: bool = False
    attentions: bool = False


@runtime_checkable
class Objective(Protocol):
    """A training objective: ``objective(outputs, batch)`` returns a 0-dim loss, and ``needs`` says
    which optional outputs the loop must ask the model for.

    A plain function ``(outputs, batch) -> loss`` works too: it needs nothing beyond the logits
    (see :func:`needs_of`). Wrap it in :class:`LossFunction` to declare needs.

    Taught in notebook 06, section 3 (Hidden-state loss (with a projection)).
    """

    needs: ForwardNeeds

    def __call__(self, outputs, batch: dict) -> torch.Tensor: ...


class LossFunction:
    """A function ``(outputs, batch) -> loss`` with the :class:`ForwardNeeds` it declares (an :class:`Objective`).

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """

    def __init__(self, fn: Callable[[object, dict], torch.Tensor], needs: ForwardNeeds = ForwardNeeds()) -> None:
        self.fn, self.needs = fn, needs

    def __call__(self, outputs, batch: dict) -> torch.Tensor:
        return self.fn(outputs, batch)

    def __repr__(self) -> str:
        return f"LossFunction({getattr(self.fn, '__qualname__', self.fn)!r}, {self.needs})"


def needs_of(objective) -> ForwardNeeds:
    """The :class:`ForwardNeeds` an objective declares (``ForwardNeeds()`` for a plain function).

    Taught in notebook 06, section 3 (Hidden-state loss (with a projection)).
    """
    return objective.needs if isinstance(objective, Objective) else ForwardNeeds()


def forward(model: nn.Module, batch: dict, device: str | torch.device, needs: ForwardNeeds = ForwardNeeds()):
    """``model``'s outputs on ``batch`` (``input_ids``/``attention_mask`` ``[B, L]``, moved to ``device``),
    with hidden states and attention maps when ``needs`` asks for them.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    extra = {"output_attentions": True} if needs.attentions else {}
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        output_hidden_states=needs.hidden_states,
        **extra,
    )


def freeze(model: nn.Module) -> nn.Module:
    """Put a teacher in eval mode (no dropout) with ``requires_grad=False`` on every parameter: a fixed
    function during distillation. Call ``requires_grad_(True)`` to train it again.

    Taught in notebook 02, section 5 (Five traps).
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def ce_loss() -> LossFunction:
    """Plain cross-entropy with the hard labels: fine-tuning a teacher, the CE-only baseline.

    ``outputs.logits`` ``[B, C]`` against ``batch["labels"]`` ``[B]``, or token logits ``[B, L, V]``
    against pre-shifted next-token labels ``[B, L]``, averaged over the positions whose label is not
    ``-100`` (padding).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits
        labels = batch["labels"].to(logits.device)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    return LossFunction(loss)


# ---------------------------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochStart:
    """Where an epoch starts: after ``steps_done`` optimizer steps whose losses summed to ``loss_sum``
    (loss x examples) over ``examples`` examples (all zero: from its beginning).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """

    steps_done: int = 0
    loss_sum: float = 0.0
    examples: int = 0


def _micro_batches(batch: dict, parts: int, settings: TrainSettings, processes: Processes) -> Iterator[tuple]:
    """This process's ``grad_accum`` micro-batches of a collated batch: ``(part, rows, last)``.

    The batch is cut into ``grad_accum x P`` near-equal slices (as ``torch.tensor_split``); this process
    takes slices ``i * P + rank``. An empty slice is given the batch's first row (to be weighted 0).
    """
    n = batch["labels"].shape[0]
    for i in range(settings.grad_accum):
        last = i == settings.grad_accum - 1
        if parts == 1:
            yield batch, n, last
            continue
        size, extra = divmod(n, parts)
        k = i * processes.world + processes.rank
        start = k * size + min(k, extra)
        stop = start + size + (k < extra)
        count = stop - start
        if count == 0:
            start, stop = 0, 1
        yield {key: v[start:stop] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
               for key, v in batch.items()}, count, last


def train_epoch(
    model: nn.Module,
    data,
    objective: Objective,
    optimization: Optimization,
    settings: TrainSettings,
    *,
    epoch: int,
    seed: int,
    device: str | torch.device = "cpu",
    processes: Processes = SINGLE,
    start: EpochStart = EpochStart(),
    on_step: Callable[[int, float, int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> float:
    """Train ``model`` for one epoch over ``data`` (shuffled with :func:`epoch_seed`); return the mean
    training loss per example.

    The shuffle order depends only on ``seed`` and ``epoch``, so a run resumed at an epoch boundary
    sees the same batches as an uninterrupted one; ``start`` resumes in the middle of the epoch, after
    the first ``start.steps_done`` batches of the same order.

    Each batch of ``settings.batch_size`` examples is one optimizer step, cut into ``grad_accum x P``
    near-equal parts for ``P = processes.world`` processes (``model`` then wrapped in
    ``DistributedDataParallel``); each part's loss is weighted by its share of the batch, so the
    averaged gradient is the whole batch's. ``settings.precision`` ``"bf16"``/``"fp16"`` runs forward
    and loss under ``torch.autocast``. ``on_step(steps_done, loss_sum, examples)`` is called after every
    optimizer step (the hook for step checkpoints).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.to(device).train()
    params = list(model.parameters())
    loss_params: list[nn.Parameter] = []
    if isinstance(objective, nn.Module):  # an objective with trainable parts (e.g. projections) trains with the model
        objective.to(device).train()
        loss_params = list(objective.parameters())
        params += loss_params
    world, parts, needs = processes.world, processes.world * settings.grad_accum, needs_of(objective)
    dtype = PRECISIONS[settings.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    total, count = start.loss_sum, start.examples
    batches = data.loader(settings.batch_size, shuffle=True, seed=epoch_seed(seed, epoch))
    remaining = itertools.islice(batches, start.steps_done, None)
    bar = tqdm(remaining, desc=desc, disable=not progress, leave=False, initial=start.steps_done,
               total=len(batches) if hasattr(batches, "__len__") else None)
    for step, batch in enumerate(bar, start=start.steps_done + 1):
        optimization.optimizer.zero_grad(set_to_none=True)
        n_batch = batch["labels"].shape[0]
        for part, n, last in _micro_batches(batch, parts, settings, processes):
            with model.no_sync() if world > 1 and not last else contextlib.nullcontext():
                with autocast:
                    loss = objective(forward(model, part, device, needs), part)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step}: the learning rate may be too "
                        "high (lower it), or the batch, the model or the teacher's logits hold NaN or inf values")
                weighted = loss if parts == 1 else loss * (world * n / n_batch)
                scaler = optimization.scaler
                (scaler.scale(weighted) if scaler is not None else weighted).backward()
            total += loss.item() * n
            count += n
        if world > 1:  # DDP averages the model's gradients; an objective's own parameters are averaged here
            for p in (p for p in loss_params if p.grad is not None):
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        optimization.step(params, settings.max_grad_norm)
        if on_step is not None:
            on_step(step, total, count)
    total, count = sum_over_processes([total, count], processes, device)
    return total / max(1, count)


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) for every item of ``data`` (an ``EncodedDataset``), in dataset order.

    The model is put in eval mode (dropout off) and no autograd graph is built.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    out = []
    for batch in tqdm(data.loader(batch_size), desc=desc, disable=not progress, leave=False):
        out.append(forward(model, batch, device).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels) -> float:
    """Fraction of rows of ``logits [N, C]`` whose arg-max equals the label ``[N]``.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    labels = torch.as_tensor(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but labels {labels.shape[0]}")
    return (logits.argmax(-1) == labels).float().mean().item()


def evaluate_accuracy(model: nn.Module, data, batch_size: int = 64, device="cpu") -> float:
    """Accuracy of ``model`` on ``data`` (an ``EncodedDataset``).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    return accuracy(predict_logits(model, data, batch_size, device), data.labels)


# ---------------------------------------------------------------------------------------------
# Checkpoints and fit
# ---------------------------------------------------------------------------------------------


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


@dataclass
class _Run:
    """What ``fit`` trains and keeps: the module in the checkpoint, its optimization, the epochs' losses."""

    trained: nn.Module
    optimization: Optimization
    history: list[float]
    device: torch.device
    processes: Processes

    def save(self, path, epochs_done: int, steps_done: int = 0, loss_sum: float = 0.0, examples: int = 0) -> None:
        """Write a checkpoint atomically (rank 0): after ``epochs_done`` whole epochs and ``steps_done``
        optimizer steps of the next one, with the random state of every process."""
        rng = all_gather(_rng_state(self.device), self.processes)
        if self.processes.world > 1:
            loss_sum, examples = sum_over_processes([loss_sum, examples], self.processes, self.device)
        if not self.processes.main:
            return
        opt = self.optimization
        buffer = io.BytesIO()
        torch.save(
            {
                "epochs_done": epochs_done,
                "steps_done": steps_done,
                "loss_so_far": [loss_sum, examples],
                "model": self.trained.state_dict(),
                "optimizer": opt.optimizer.state_dict(),
                "scheduler": opt.scheduler.state_dict(),
                "scaler": opt.scaler.state_dict() if opt.scaler is not None else {},
                "torch_rng": rng[0]["cpu"],
                "rng": rng,
                "history": self.history,
            },
            buffer,
        )
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, path) -> tuple[int, EpochStart]:
        """Restore the checkpoint at ``path``; return the epoch to continue and where in it.

        A checkpoint that cannot be read, or that belongs to another model, is reported on stderr and
        discarded (by rank 0): the training starts again from its first step rather than stopping.
        """
        opt = self.optimization
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            _check_checkpoint(state, self.trained)
            opt.optimizer.load_state_dict(state["optimizer"])  # checks the parameter groups before changing anything
        except Exception as exc:  # torch.load raises many kinds (RuntimeError, EOFError, UnpicklingError, ...)
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"checkpoint {path} is damaged ({type(exc).__name__}: {reason}): discarding it; this training "
                  "starts again from its first step", file=sys.stderr)
            if self.processes.main:
                Path(path).unlink(missing_ok=True)
            return 0, EpochStart()
        self.trained.load_state_dict(state["model"])
        opt.scheduler.load_state_dict(state["scheduler"])
        if opt.scaler is not None and state.get("scaler"):
            opt.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng") or [{"cpu": state["torch_rng"]}]  # epoch checkpoints of earlier versions
        world, rank = self.processes.world, self.processes.rank
        _set_rng_state(rngs[rank] if len(rngs) == world else rngs[0], self.device)
        self.history = list(state["history"])
        # the loss sums of a partly done epoch are the whole batch's: rank 0 carries them
        loss_sum, examples = state.get("loss_so_far", (0.0, 0)) if self.processes.main else (0.0, 0)
        return state["epochs_done"], EpochStart(state.get("steps_done", 0), loss_sum, examples)


def _check_checkpoint(state, trained: nn.Module) -> None:
    """``ValueError`` unless ``state`` is a checkpoint of ``trained``: every entry there, every tensor's shape."""
    keys = set(state) if isinstance(state, dict) else set()
    missing = {"epochs_done", "model", "optimizer", "scheduler", "history"} - keys
    if missing:
        raise ValueError(f"it lacks {sorted(missing)}")
    want = {k: tuple(v.shape) for k, v in trained.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    if got != want:
        raise ValueError(f"it holds another model ({len(set(got) ^ set(want))} names and "
                         f"{sum(got.get(k) != v for k, v in want.items())} shapes differ)")


def _check_fit_options(checkpoint, checkpoint_every, distributed: bool) -> None:
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int (optimizer steps) or None; got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError(f"checkpoint_every={checkpoint_every} needs checkpoint= (the file to write)")
    if distributed and not torch.distributed.is_initialized():
        raise ValueError("distributed=True needs torch.distributed initialised (run under torchrun); "
                         "or pass distributed=False")


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    gpus = None
    if device.type == "cuda":
        gpus = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(model, device_ids=gpus)


def fit(
    model: nn.Module,
    data,
    objective: Objective,
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

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    device = torch.device(device)
    check_precision(settings.precision, device)
    _check_fit_options(checkpoint, checkpoint_every, distributed)
    processes = current() if distributed else SINGLE
    # An objective with trainable parts (FeatureDistillLoss's projections) is optimised and checkpointed
    # together with the model.
    trained = model
    if isinstance(objective, nn.Module) and any(True for _ in objective.parameters()):
        trained = nn.ModuleDict({"model": model, "loss": objective})
    trained.to(device)  # before the optimizer, so its state lives on the same device
    per_epoch = len(data.loader(settings.batch_size))  # optimizer steps per epoch, whatever the dataset batches
    optimizer, scheduler = make_optimizer(trained, settings, per_epoch)
    scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
    run = _Run(trained, Optimization(optimizer, scheduler, scaler), [], device, processes)
    first, resume_at = 0, EpochStart()
    if checkpoint is not None and Path(checkpoint).is_file():
        first, resume_at = run.load(checkpoint)
    runner = _wrap_ddp(model, device) if distributed else model

    for epoch in range(first, settings.epochs):

        def on_step(step: int, loss_sum: float, examples: int, epoch: int = epoch) -> None:
            if (epoch * per_epoch + step) % checkpoint_every == 0 and step < per_epoch:
                run.save(checkpoint, epoch, step, loss_sum, examples)

        loss = train_epoch(
            runner, data, objective, run.optimization, settings, epoch=epoch, seed=seed, device=device,
            processes=processes, start=resume_at if epoch == first else EpochStart(),
            on_step=on_step if checkpoint_every else None, progress=progress and processes.main,
            desc=f"{desc} epoch {epoch + 1}/{settings.epochs}",
        )
        run.history.append(loss)
        if checkpoint is not None:
            run.save(checkpoint, epoch + 1)
    return run.history
