"""Distillation on the ecosystem's machinery: a ``transformers.Trainer`` with a frozen teacher.

The course's own loop (:func:`kd_lib.training.fit`) is for understanding; at scale you want what
everyone else uses -- the ``transformers`` Trainer, which brings ``torchrun``/Accelerate data
parallelism, mixed precision, gradient accumulation, logging and checkpoints. This module plugs
distillation into it:

- :class:`DistillationTrainer`: ``compute_loss`` applies ``distillation_loss`` (with an optional
  DistilBERT-style cosine term on the last hidden states) against a frozen teacher -- live, or
  its logits from the cache. It trains with the loop's optimizer, schedule and data order
  (:func:`kd_lib.training.adamw`, :func:`kd_lib.training.warmup_linear_schedule`, :class:`EpochShuffle`),
  so both give the same student.
- :func:`trainer_fit`: ``fit``'s counterpart on the Trainer, with checkpoints that count only once
  complete, and resume from the last of them; the main job's ``--backend trainer``.
- :func:`training_memory_gb` and :func:`training_time_s`: back-of-the-envelope memory and time
  of a distillation run, for planning one on GPUs (notebook 11).

Taught in notebook 11 (Scaling up), sections 1 and 4.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from kd_lib.data import EncodedDataset
from kd_lib.distill import kd_from_cache, kd_online
from kd_lib.distributed import launched
from kd_lib.losses import check_alpha, check_temperature
from kd_lib.training import (
    ForwardNeeds,
    TrainSettings,
    adamw,
    check_batch_split,
    check_precision,
    epoch_seed,
    forward,
    needs_of,
    warmup_linear_schedule,
)
from kd_lib.utils import atomic_write_bytes

__all__ = [
    "COMPLETE",
    "DistillationTrainer",
    "EpochShuffle",
    "epoch_order",
    "last_checkpoint",
    "trainer_fit",
    "training_arguments",
    "training_memory_gb",
    "training_time_s",
]

COMPLETE = "kd_complete.json"  # written into a Trainer checkpoint folder once every file of it is saved


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The rows of a dataset of ``n`` items in the order the course's loop visits them in ``epoch``:
    exactly the order of ``EncodedDataset.loader(batch_size, shuffle=True, seed=epoch_seed(seed, epoch))``.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    loader = torch.utils.data.DataLoader(range(n), batch_size=max(1, n), shuffle=True, generator=generator)
    return next(iter(loader)).tolist()


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A sampler yielding :func:`epoch_order` of the epoch set by ``set_epoch`` (the Trainer calls it).

    Accelerate deals the batches of this one order to the processes in turn (batch ``i`` to rank
    ``i mod P``), so with ``P`` processes of ``B / P`` examples each, every optimizer step sees the
    same ``B`` examples as one process with batches of ``B``.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(epoch_order(self.n, self.seed, self.epoch))


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is ``distillation_loss`` against a frozen teacher.

    ``alpha * T^2 * KL(teacher(T) || student(T)) + (1 - alpha) * CE(student, labels)``, plus
    ``cosine_weight * (1 - cos)`` between the last hidden states of student and teacher over the
    real tokens (needs a live teacher of the student's width). The teacher is either

    - ``teacher``: a live model, frozen (``requires_grad=False``), in eval mode, run under
      ``no_grad`` on this process's device. It is an attribute of the trainer, not of the model:
      never in the optimizer, never wrapped for DDP, never saved in checkpoints; or
    - ``teacher_logits``: its logits ``[N, C]`` over ``train_dataset``, computed once (the cache),
      looked up by each batch's ``row`` -- so ``TrainingArguments(remove_unused_columns=False)`` is
      required (the default would drop ``row``).

    ``compute_loss`` runs the ``model`` it is handed, which under ``torchrun`` is the DDP-wrapped
    student (a stored reference would bypass the gradient synchronisation). It returns a per-batch
    mean; the Trainer divides it by the gradient-accumulation steps (``loss_is_scaled_for_ga = False``),
    so ``num_items_in_batch`` is accepted and not needed. In evaluation the loss is the held-out
    cross-entropy (cached logits exist for the training rows only).

    Optimizer and schedule are the course loop's (:func:`~kd_lib.training.adamw`: AdamW without decay
    on biases and LayerNorms, fused when ``args.optim`` is ``adamw_torch_fused``;
    :func:`~kd_lib.training.warmup_linear_schedule`: linear warm-up over
    ``args.warmup_steps`` -- a ratio if below 1 -- then linear decay), and batches come in
    :func:`epoch_order`: on the same data this trainer and :func:`~kd_lib.training.fit` train the same
    student.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        teacher: nn.Module | None = None,
        teacher_logits: torch.Tensor | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        cosine_weight: float = 0.0,
        **kwargs,
    ) -> None:
        temperature, alpha = check_temperature(temperature, kd=True), check_alpha(alpha)
        if (teacher is None) == (teacher_logits is None):
            raise ValueError("pass exactly one of teacher= (a live model) or teacher_logits= (its cached [N, C] "
                             f"logits); got {'both' if teacher is not None else 'neither'}")
        if args is not None and args.remove_unused_columns:
            raise ValueError("TrainingArguments(remove_unused_columns=True) would drop the batch's 'row' (the "
                             "key of cached teacher logits); pass remove_unused_columns=False")
        if isinstance(cosine_weight, bool) or not isinstance(cosine_weight, int | float) or cosine_weight < 0:
            raise ValueError(f"cosine_weight must be a number >= 0; got {cosine_weight!r}")
        if teacher is not None and model is not None:
            student_params = {id(p) for p in model.parameters()}
            if teacher is model or any(id(p) in student_params for p in teacher.parameters()):
                raise ValueError("teacher and student share parameters: pass a separate (frozen) teacher model")
        train_dataset = kwargs.get("train_dataset")
        if teacher_logits is not None:
            if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2:
                got = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits)
                raise ValueError(f"teacher_logits must be a tensor of shape [N, C]; got {got}")
            if cosine_weight:
                raise ValueError(f"cosine_weight={cosine_weight} needs a live teacher= (hidden states are not cached)")
            if train_dataset is not None and len(train_dataset) != teacher_logits.shape[0]:
                raise ValueError(f"teacher_logits has {teacher_logits.shape[0]} rows but train_dataset "
                                 f"{len(train_dataset)} items: compute the logits over this training set")
        super().__init__(model, args, **kwargs)
        self.remove_callback(PrinterCallback)  # it prints every log dict; progress bars and results say enough
        if teacher is not None:
            self.teacher = teacher.to(self.args.device)
            self.kd = kd_online(self.teacher, temperature, alpha, cosine_weight)
        else:
            self.teacher = None
            self.kd = kd_from_cache(teacher_logits.to(self.args.device), temperature, alpha)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The distillation loss of the batch ``inputs`` (``input_ids``/``attention_mask`` ``[B, L]``,
        ``labels``/``row`` ``[B]``) for ``model``, a 0-dim tensor in nats; with ``return_outputs``,
        ``(loss, outputs)``. ``num_items_in_batch`` is unused (see the class docstring)."""
        needs = needs_of(self.kd) if model.training else ForwardNeeds()
        outputs = forward(model, inputs, inputs["input_ids"].device, needs)
        if model.training:
            if self.teacher is not None and self.teacher.training:
                self.teacher.eval()  # someone switched it back to train mode: dropout would make it noisy
            loss = self.kd(outputs, inputs)
        else:
            loss = F.cross_entropy(outputs.logits.float(), inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer has every process write its own ``rng_state_{rank}.pth``; here rank 0 gathers and
        writes them all (atomically), so that only rank 0 ever writes. Same files, same format."""
        if self.args.world_size <= 1:
            super()._save_rng_state(output_dir)
            return
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        states = [None] * self.args.world_size
        torch.distributed.all_gather_object(states, state)
        if self.args.process_index == 0:
            for rank, rank_state in enumerate(states):
                buffer = io.BytesIO()
                torch.save(rank_state, buffer)
                atomic_write_bytes(Path(output_dir) / f"rng_state_{rank}.pth", buffer.getvalue())

    def _get_train_sampler(self, train_dataset=None) -> EpochShuffle:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochShuffle(len(dataset), self.args.seed)

    def _settings(self) -> TrainSettings:
        return TrainSettings(lr=self.args.learning_rate, weight_decay=self.args.weight_decay,
                             fused_adamw=self.args.optim == "adamw_torch_fused")

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = adamw(model if model is not None else self.model, self._settings())
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            warmup = self.args.warmup_steps
            steps = int(warmup) if warmup >= 1 else int(warmup * max(1, num_training_steps))
            self.lr_scheduler = warmup_linear_schedule(optimizer or self.optimizer, num_training_steps, steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class _MarkComplete(TrainerCallback):
    """After the Trainer saved a checkpoint (every process its part), rank 0 marks it complete.

    The Trainer writes a checkpoint's files one by one; a run killed in between leaves a folder
    that looks like a checkpoint. Only folders holding :data:`COMPLETE` are resumed from.
    """

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_write_bytes(folder / COMPLETE, json.dumps({"global_step": state.global_step}).encode())
        return control


def _damage(checkpoint: Path) -> str | None:
    """Why a completely written Trainer checkpoint cannot be resumed from (a file unreadable), or ``None``."""
    import zipfile

    from kd_lib.models import TeacherIntegrityError, check_safetensors

    try:
        paths = sorted(checkpoint.iterdir())
    except OSError as exc:  # removed meanwhile by another process
        return f"it cannot be listed ({type(exc).__name__})"
    for path in paths:
        try:
            if path.suffix == ".safetensors":
                check_safetensors(path)
            elif path.suffix in {".pt", ".pth", ".bin"}:  # torch.save files are zip archives
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        return f"{path.name} is corrupt"
        except (TeacherIntegrityError, zipfile.BadZipFile, OSError) as exc:
            return f"{path.name} cannot be read ({type(exc).__name__})"
    return None


def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The Trainer checkpoint ``folder/checkpoint-N`` with the largest ``N`` that was completely
    written (holds :data:`COMPLETE`) and whose files can be read, or ``None``. A complete checkpoint
    with a damaged file is reported on stderr and removed; the one before it is used instead.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """
    done = [p for p in Path(folder).glob("checkpoint-*") if (p / COMPLETE).is_file() and p.name[11:].isdigit()]
    for checkpoint in sorted(done, key=lambda p: int(p.name[11:]), reverse=True):
        problem = _damage(checkpoint)
        if problem is None:
            return checkpoint
        print(f"checkpoint {checkpoint} is damaged ({problem}): discarding it", file=sys.stderr)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def training_arguments(
    settings: TrainSettings,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_every: int | None = None,
) -> TrainingArguments:
    """``TrainingArguments`` that make the Trainer train like :func:`kd_lib.training.fit` with ``settings``.

    ``settings.batch_size`` examples per optimizer step, split into ``settings.grad_accum`` micro-batches
    on each of ``$WORLD_SIZE`` processes; checkpoints every ``checkpoint_every`` steps (else every
    epoch) into ``output_dir``, the last two kept; mixed precision from ``settings.precision``.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """
    device = torch.device(device)
    check_precision(settings.precision, device)
    per_device = check_batch_split(settings.batch_size, settings.grad_accum, launched().world)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        optim="adamw_torch_fused" if settings.fused_adamw else "adamw_torch",  # read by create_optimizer
        max_grad_norm=settings.max_grad_norm,
        warmup_steps=settings.warmup_ratio,
        seed=seed,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        use_cpu=device.type == "cpu",
        save_strategy="steps" if checkpoint_every else "epoch",
        save_steps=checkpoint_every or 500,
        save_total_limit=2,
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_pin_memory=device.type == "cuda",
        ddp_find_unused_parameters=False,  # every student parameter gets a gradient: skip DDP's extra graph walk
        log_level="error",
    )


def trainer_fit(
    model: nn.Module,
    data: EncodedDataset,
    settings: TrainSettings,
    *,
    output_dir: str | os.PathLike,
    teacher: nn.Module | None = None,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_every: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> list[float]:
    """Distil ``model`` with a :class:`DistillationTrainer`; return the mean training loss of each epoch.

    The Trainer counterpart of :func:`kd_lib.training.fit` (same arguments, same optimizer, schedule
    and data order). Checkpoints go to ``output_dir`` (every ``checkpoint_every`` steps, else every
    epoch); a call that finds a complete one there resumes from it -- the Trainer restores weights,
    optimizer, schedule and random states and skips the batches already seen. Under ``torchrun``
    every process calls this; the Trainer shards the batches and only rank 0 writes.

    The epoch losses are the Trainer's: means over the optimizer steps logged since the last log,
    so after a resume the resumed epoch's entry covers only the steps run after it.

    Taught in notebook 11, section 1 (From the loop to the Trainer).
    """
    args = training_arguments(settings, output_dir, seed=seed, device=device, progress=progress,
                              checkpoint_every=checkpoint_every)
    trainer = DistillationTrainer(
        model, args, teacher=teacher, teacher_logits=teacher_logits, temperature=temperature, alpha=alpha,
        train_dataset=data, data_collator=data.collate, callbacks=[_MarkComplete(), *callbacks],
    )
    resume = last_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ----------------------------------------------------------------------------------------------
# Planning a run on GPUs: memory and time, from parameter counts and token counts
# ----------------------------------------------------------------------------------------------


def training_memory_gb(
    params: int,
    *,
    layers: int,
    hidden: int,
    heads: int,
    batch: int,
    seq_len: int,
    trainable: bool = True,
    precision: str = "bf16",
) -> dict[str, float]:
    """Memory (GB = 1e9 bytes) one process needs to train (or, ``trainable=False``, to run under
    ``no_grad``) a BERT-like encoder on batches of ``batch x seq_len`` tokens.

    Assumptions, each a rule of thumb rather than a measurement:

    - weights in float32 (autocast keeps float32 master weights): 4 bytes per parameter; when
      training, float32 gradients (4) and AdamW's two moments (8): 16 bytes per parameter;
    - activations kept for the backward pass per layer: ``seq_len * batch * hidden * (34 + 5 * heads
      * seq_len / hidden)`` bytes with 16-bit activations (Korthikanti et al., 2022, "Reducing
      activation recomputation in large transformer models", eq. 1), twice that in float32; a
      no-grad forward keeps about one layer's worth at a time;
    - no allocator fragmentation, CUDA context (about 0.5 GB) or data loader buffers.

    Returns ``{"weights", "gradients", "optimizer", "activations", "total"}`` in GB.

    Taught in notebook 11, section 4 (How long, how much memory).
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
    for name, value in (("params", params), ("layers", layers), ("hidden", hidden), ("heads", heads),
                        ("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    per_layer = seq_len * batch * hidden * (34 + 5 * heads * seq_len / hidden) * (2 if precision == "fp32" else 1)
    parts = {
        "weights": 4 * params,
        "gradients": 4 * params if trainable else 0,
        "optimizer": 8 * params if trainable else 0,
        "activations": per_layer * (layers if trainable else 1),
    }
    gb = {k: v / 1e9 for k, v in parts.items()}
    return {**gb, "total": sum(gb.values())}


def training_time_s(
    params: int,
    tokens: int,
    *,
    flops_per_s: float,
    layers: int = 0,
    hidden: int = 0,
    seq_len: int = 0,
    backward: bool = True,
    processes: int = 1,
    scaling_efficiency: float = 0.9,
) -> float:
    """Seconds to push ``tokens`` tokens through a model of ``params`` non-embedding parameters.

    FLOPs per token: ``2 * params + 4 * layers * seq_len * hidden`` for a forward pass (the weights
    plus attention scores and their use; Kaplan et al., 2020, "Scaling laws for neural language
    models", table 1), three times that with the backward pass (``backward=True``: training).
    ``flops_per_s`` is what one device sustains on this workload -- measured, or assumed as a
    fraction of its peak (state it). ``processes`` data-parallel devices run
    ``processes * scaling_efficiency`` times faster (gradient all-reduce and stragglers cost the rest;
    ``scaling_efficiency`` is ignored for one process).

    Taught in notebook 11, section 4 (How long, how much memory).
    """
    if flops_per_s <= 0 or not 0 < scaling_efficiency <= 1 or processes < 1:
        raise ValueError(f"need flops_per_s > 0, 0 < scaling_efficiency <= 1 and processes >= 1; got {flops_per_s}, "
                         f"{scaling_efficiency}, {processes}")
    per_token = (2 * params + 4 * layers * seq_len * hidden) * (3 if backward else 1)
    speed = flops_per_s * (1 if processes == 1 else processes * scaling_efficiency)
    return per_token * tokens / speed
