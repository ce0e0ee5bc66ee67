"""The fine-tuned teacher: trained once per recipe, cached as safetensors, reused everywhere.

``finetuned_teacher(TeacherRecipe(...))`` is the one way the course gets a fine-tuned teacher:
a ``--teacher`` folder that the course already fine-tuned is loaded as it is; otherwise the
teacher named by the recipe (:func:`kd_lib.models.resolve_teacher`: packaged, folder or hub name)
is fine-tuned once and cached under the hash of the recipe (:func:`kd_lib.cache.cached_model`),
resuming from the last finished epoch if an earlier attempt was interrupted.

Taught in notebook 04 (A BERT teacher), section 3.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kd_lib.cache import cache_dir, cached_model, config_key, verify_entry
from kd_lib.data import TASKS, EncodedDataset, eval_split, load_task, set_label_names
from kd_lib.models import TeacherIntegrityError, load_teacher, resolve_teacher
from kd_lib.training import TrainSettings, ce_loss, evaluate_accuracy, fit
from kd_lib.utils import set_seed

__all__ = ["TeacherRecipe", "finetuned_teacher", "recipe_key"]


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that determines a fine-tuned teacher (and so its cache key).

    Taught in notebook 04, section 4 (The teacher's soft labels).
    """

    task: str = "sst2"
    teacher: str | None = None  # None: the packaged all-MiniLM-L6-v2
    train_limit: int | None = 8000  # None: the whole training split
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    warmup_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of: {', '.join(sorted(TASKS))}")

    def settings(self) -> TrainSettings:
        """The :class:`~kd_lib.training.TrainSettings` the teacher is fine-tuned with."""
        return TrainSettings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, warmup_ratio=self.warmup_ratio)


def recipe_key(recipe: TeacherRecipe) -> str:
    """The cache key of a recipe: the hash of its fields and of the starting weights' identity
    (:meth:`kd_lib.models.TeacherSource.identity`).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    return config_key({**asdict(recipe), "teacher": resolve_teacher(recipe.teacher).identity()})


def _fine_tune(recipe: TeacherRecipe, scratch: Path, device, progress: bool, checkpoint_every: int | None):
    """Fine-tune the recipe's teacher (checkpoints in ``scratch``); return it, what to save, and its record."""
    start = time.perf_counter()
    set_seed(recipe.seed)
    model, tokenizer = load_teacher(recipe.teacher, num_labels=len(TASKS[recipe.task].label_names))
    data = load_task(recipe.task, limit={"train": recipe.train_limit} if recipe.train_limit else None, seed=recipe.seed)
    train = EncodedDataset(data["train"], tokenizer, recipe.max_length)
    held_out = EncodedDataset(data[eval_split(recipe.task)], tokenizer, recipe.max_length)
    history = fit(
        model, train, ce_loss(), recipe.settings(), seed=recipe.seed, checkpoint=str(scratch / "checkpoint.pt"),
        device=device, progress=progress, desc="fine-tune teacher", checkpoint_every=checkpoint_every,
    )
    acc = evaluate_accuracy(model, held_out, device=device)
    set_label_names(model, recipe.task)
    record = {
        "recipe": asdict(recipe),
        "teacher_identity": resolve_teacher(recipe.teacher).identity(),
        "eval_split": eval_split(recipe.task),
        "accuracy": acc,
        "train_losses": history,
        "train_examples": len(train),
        "wall_s": time.perf_counter() - start,
    }
    return (model.eval(), tokenizer), (model, tokenizer), record


def finetuned_teacher(
    recipe: TeacherRecipe,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
):
    """Return ``(model, tokenizer, info)`` for the teacher fine-tuned with ``recipe``.

    When ``recipe.teacher`` is a folder the course already fine-tuned (it holds a cache record), that
    teacher is loaded as it is. Otherwise the teacher is fine-tuned once and cached in
    ``cache_root`` (default ``$KD_CACHE_DIR``) under ``teachers/<task>-<recipe_key>``.

    ``info`` holds the recipe, the cache folder, the evaluation accuracy, the training losses, the
    wall time of the training, and ``from_cache``. The model is in eval mode on ``device``. Fine-tuning
    checkpoints after every epoch, and every ``checkpoint_every`` optimizer steps if given (not part of
    the recipe: it changes nothing in the result), so an interrupted fine-tuning resumes.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    source = resolve_teacher(recipe.teacher)
    num_labels = len(TASKS[recipe.task].label_names)
    if source.finetuned:
        folder = Path(source.location)
        try:
            record = verify_entry(folder)
        except ValueError as exc:
            raise TeacherIntegrityError(
                f"teacher folder {folder} was fine-tuned by the course but is damaged: {exc}; restore it, or "
                "delete it and pass the base model to fine-tune it again") from None
        model, tokenizer = load_teacher(folder, num_labels=num_labels)
        return model.to(device).eval(), tokenizer, {**record, "folder": str(folder), "from_cache": True}
    root = Path(cache_root) if cache_root is not None else cache_dir()
    folder = root / "teachers" / f"{recipe.task}-{recipe_key(recipe)}"

    def load(path: Path):
        model, tokenizer = load_teacher(path, num_labels=num_labels)
        return model.to(device).eval(), tokenizer

    def train(scratch: Path):
        return _fine_tune(recipe, scratch, device, progress, checkpoint_every)

    (model, tokenizer), info = cached_model(folder, load, train)
    return model, tokenizer, info
