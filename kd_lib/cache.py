"""Where the course keeps what it computes once: trained models and teacher logits.

- :func:`cached_model`: the one cache-or-train helper. A model trained once (a fine-tuned teacher,
  a federated client) lives in a folder named by the hash of everything that determined it, with
  one completion record, :data:`RECORD`, written inside the same atomic folder swap as its weights:
  a folder without it is not an entry.
- :func:`save_logits` / :func:`load_logits` / :func:`cached_logits`: teacher logits with the example
  ids and the settings they belong to, so logits of another teacher or data subset are never reused.

Everything is written atomically (to a temporary name, then renamed), so an interrupted run
never leaves a half-written model or logits file that a later run would trust.
Taught in notebook 04, section 3 (the teacher cache) and notebook 05, section 3 (logits once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from kd_lib.utils import atomic_write_bytes, quiet_hf, sha256_file, sha256_file_cached

__all__ = [
    "RECORD",
    "atomic_save_pretrained",
    "cache_dir",
    "cached_logits",
    "cached_model",
    "config_key",
    "load_logits",
    "save_logits",
    "verify_entry",
]

RECORD = "kd_record.json"  # a cache entry's completion record: written with its weights, in one atomic swap
T = TypeVar("T")


def cache_dir() -> Path:
    """``$KD_CACHE_DIR`` if set, else ``~/.cache/kd-course`` (``$XDG_CACHE_HOME`` respected).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    env = os.environ.get("KD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kd-course"


def config_key(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable configuration (12 hex digits).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def atomic_save_pretrained(folder: str | os.PathLike, *objects) -> Path:
    """``save_pretrained`` each of ``objects`` (model, tokenizer, …) into ``folder`` atomically.

    They are saved into a temporary sibling folder that is renamed to ``folder`` at the end;
    an existing ``folder`` is replaced only once the new one is complete. Models are saved as
    safetensors.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for obj in objects:
            obj.save_pretrained(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


FILES = "files"  # the record's map of every file in the entry to its sha256


class _Record:
    """Saved like a model, last: writes the entry's :data:`RECORD`, with the sha256 of every file saved
    before it, into the folder being assembled."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def save_pretrained(self, path) -> None:
        files = {p.name: sha256_file(p) for p in sorted(Path(path).iterdir()) if p.is_file() and p.name != RECORD}
        self.record = {**self.record, FILES: files}
        (Path(path) / RECORD).write_text(json.dumps(self.record, indent=1, default=str))


def verify_entry(folder: str | os.PathLike) -> dict:
    """The record of the cache entry in ``folder``, after checking every file against the sha256 recorded
    when it was written; ``ValueError`` saying what is wrong (record unreadable, a file missing or altered).
    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"its record {RECORD} cannot be read ({exc})") from None
    files = record.get(FILES) if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"its record {RECORD} lists no files with their sha256")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{name} is missing")
        if sha256_file_cached(path) != digest:
            raise ValueError(f"{name} does not match the sha256 recorded when it was written (altered or damaged)")
    return record


def _load_sound(folder: Path, load: Callable[[Path], T], report: bool) -> tuple[T, dict] | None:
    """``(value, info)`` of a sound entry in ``folder``; else ``None`` -- after removing a damaged one when
    ``report`` (the caller holds the lock), saying so on stderr."""
    if not folder.exists():
        return None
    try:
        record = verify_entry(folder)
        return load(folder), {**record, "folder": str(folder), "from_cache": True}
    except Exception as exc:  # any failure to verify or to load means: build it again
        if report:
            print(f"cache entry {folder} is damaged ({exc}): discarding it and building it again", file=sys.stderr)
            shutil.rmtree(folder)
        return None


def cached_model(
    folder: str | os.PathLike,
    load: Callable[[Path], T],
    train: Callable[[Path], tuple[T, Sequence, dict]],
) -> tuple[T, dict]:
    """``(value, info)``: ``load(folder)`` when ``folder`` holds a sound entry, else ``train`` it and cache it.

    ``train(scratch)`` returns ``(value, objects, record)``: what the caller gets, the objects to save
    (anything with ``save_pretrained``: model, tokenizer), and a JSON-serialisable ``record`` (what
    determined the model and what was measured). ``scratch`` is a working folder beside the entry for
    checkpoints, so an interrupted training resumes; it is removed once the entry is written.
    The objects and ``RECORD`` (with every file's sha256) are saved together with
    :func:`atomic_save_pretrained`.

    Every hit is verified (:func:`verify_entry`) and loaded, writing nothing; an entry that fails either
    is reported on stderr, discarded and trained again. Building takes a file lock beside the entry
    (``<folder>.lock``, left in place), so a second process that asks for the same entry meanwhile
    waits for the first and then loads what it wrote (no work twice, no shared scratch).

    ``info`` is the record plus ``folder`` and ``from_cache``.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    from filelock import FileLock

    folder = Path(folder)
    hit = _load_sound(folder, load, report=False)  # the common case, read-only: no lock, nothing written
    if hit is not None:
        return hit
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.with_name(folder.name + ".lock"))):
        hit = _load_sound(folder, load, report=True)  # another process may have built it while we waited
        if hit is not None:
            return hit
        scratch = folder.with_name(folder.name + ".partial")
        scratch.mkdir(parents=True, exist_ok=True)
        value, objects, record = train(scratch)
        saved = _Record(record)
        with quiet_hf():
            atomic_save_pretrained(folder, *objects, saved)
        shutil.rmtree(scratch, ignore_errors=True)
        return value, {**saved.record, "folder": str(folder), "from_cache": False}


def save_logits(path: str | os.PathLike, logits: torch.Tensor, idx: list[int] | torch.Tensor, meta: dict) -> Path:
    """Save teacher logits ``[N, C]`` with the example ids ``idx`` ``[N]`` they belong to.

    ``meta`` (JSON-serialisable: which teacher, task, split, …) is stored alongside and
    checked by :func:`load_logits`, so logits from another teacher or data subset are never
    silently reused.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    from safetensors.torch import save

    idx = torch.as_tensor(idx, dtype=torch.long)
    if logits.dim() != 2 or logits.shape[0] != idx.shape[0]:
        raise ValueError(f"logits must be [N, C] with N = len(idx) = {idx.shape[0]}; got {tuple(logits.shape)}")
    blob = save(
        {"logits": logits.detach().float().cpu().contiguous(), "idx": idx.contiguous()},
        metadata={"meta": json.dumps(meta, sort_keys=True, default=str)},
    )
    return atomic_write_bytes(path, blob)


def load_logits(path: str | os.PathLike, expected_idx: list[int] | None = None, expected_meta: dict | None = None):
    """Load ``(logits [N, C], idx [N])`` saved by :func:`save_logits`, or ``None`` if the file
    is absent or was made for other data (``idx`` or ``meta`` differ).

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata().get("meta", "{}"))
            logits, idx = f.get_tensor("logits"), f.get_tensor("idx")
    except Exception as exc:  # a corrupt file is recomputed, never trusted
        print(f"logits cache {path} is damaged ({type(exc).__name__}): discarding it; the logits are computed again",
              file=sys.stderr)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if expected_meta is not None and json.loads(json.dumps(expected_meta, sort_keys=True, default=str)) != meta:
        return None
    if expected_idx is not None and idx.tolist() != list(expected_idx):
        return None
    return logits, idx


def cached_logits(model, data, path: str | os.PathLike, meta: dict, **predict) -> tuple[torch.Tensor, bool]:
    """``(logits [N, C], from_cache)``: ``model``'s logits over ``data`` (an ``EncodedDataset``) from ``path``
    when they were saved there for the same example ids and ``meta``, else computed with
    :func:`kd_lib.training.predict_logits` (``**predict``: batch size, device, progress) and saved.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    from kd_lib.training import predict_logits

    found = load_logits(path, expected_idx=data.idx, expected_meta=meta)
    if found is not None:
        return found[0], True
    logits = predict_logits(model, data, **predict)
    save_logits(path, logits, data.idx, meta)
    return logits, False
