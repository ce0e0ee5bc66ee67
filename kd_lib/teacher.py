"""The fine-tuned teacher: trained once per recipe, cached as safetensors, reused everywhere.

``finetuned_teacher(TeacherRecipe(...))`` returns the teacher fine-tuned on the task: from
the cache when a teacher with exactly this recipe exists, otherwise it trains one (resuming
from the last finished epoch if an earlier attempt was interrupted) and caches it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kd_lib.cache import atomic_save_pretrained, cache_dir, config_key
from kd_lib.data import TASKS, EncodedDataset, load_task
from kd_lib.distill import TrainSettings, ce_loss, evaluate_accuracy, fit
from kd_lib.models import PACKAGED_TEACHER_NAME, PACKAGED_TEACHER_SHA256, load_teacher
from kd_lib.utils import quiet_hf, set_seed, sha256_file

__all__ = ["TeacherRecipe", "eval_split", "finetuned_teacher", "teacher_identity"]

MARKER = "kd_teacher.json"


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that determines a fine-tuned teacher (and so its cache key)."""

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
        return TrainSettings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, warmup_ratio=self.warmup_ratio)


def eval_split(task: str) -> str:
    """The labelled held-out split a task is evaluated on (``validation`` or ``test``)."""
    return next(s for s in TASKS[task].splits if s != "train")


def teacher_identity(name_or_path: str | None) -> str:
    """What identifies the starting weights: the packaged hash, a local folder's hash, or a hub name."""
    if name_or_path is None:
        return f"{PACKAGED_TEACHER_NAME}@{PACKAGED_TEACHER_SHA256[:16]}"
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        hashes = sorted(sha256_file(p)[:16] for p in folder.glob("*.safetensors"))
        return f"{folder.resolve()}@{'+'.join(hashes)}"
    return str(name_or_path)


def _recipe_key(recipe: TeacherRecipe) -> str:
    return config_key({**asdict(recipe), "teacher": teacher_identity(recipe.teacher)})


def finetuned_teacher(
    recipe: TeacherRecipe,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
):
    """Return ``(model, tokenizer, info)`` for the teacher fine-tuned with ``recipe``.

    ``info`` holds the recipe, the cache folder, the evaluation accuracy, the training
    losses, the wall time of the training, and ``from_cache``. The model is in eval mode.
    """
    root = Path(cache_root) if cache_root is not None else cache_dir()
    folder = root / "teachers" / f"{recipe.task}-{_recipe_key(recipe)}"
    num_labels = len(TASKS[recipe.task].label_names)
    if (folder / MARKER).is_file():
        model, tokenizer = load_teacher(folder, num_labels=num_labels)
        info = json.loads((folder / MARKER).read_text())
        return model.to(device).eval(), tokenizer, {**info, "folder": str(folder), "from_cache": True}

    start = time.perf_counter()
    set_seed(recipe.seed)
    model, tokenizer = load_teacher(recipe.teacher, num_labels=num_labels)
    data = load_task(recipe.task, limit={"train": recipe.train_limit} if recipe.train_limit else None, seed=recipe.seed)
    train = EncodedDataset(data["train"], tokenizer, recipe.max_length)
    held_out = EncodedDataset(data[eval_split(recipe.task)], tokenizer, recipe.max_length)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    history = fit(
        model, train, ce_loss(), recipe.settings(), seed=recipe.seed, checkpoint=str(partial / "checkpoint.pt"),
        device=device, progress=progress, desc="fine-tune teacher",
    )
    acc = evaluate_accuracy(model, held_out, device=device)
    label_names = TASKS[recipe.task].label_names
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    info = {
        "recipe": asdict(recipe),
        "teacher_identity": teacher_identity(recipe.teacher),
        "eval_split": eval_split(recipe.task),
        "accuracy": acc,
        "train_losses": history,
        "train_examples": len(train),
        "wall_s": time.perf_counter() - start,
    }

    class _Marker:  # written inside the same atomic folder swap as the weights
        def save_pretrained(self, path):
            (Path(path) / MARKER).write_text(json.dumps(info, indent=1))

    with quiet_hf():
        atomic_save_pretrained(folder, model, tokenizer, _Marker())
    shutil.rmtree(partial, ignore_errors=True)
    return model.eval(), tokenizer, {**info, "folder": str(folder), "from_cache": False}
