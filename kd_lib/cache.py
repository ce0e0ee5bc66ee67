"""Where the course keeps what it computes once: fine-tuned teachers and teacher logits.

Everything is written atomically (to a temporary name, then renamed), so an interrupted run
never leaves a half-written model or logits file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kd_lib.utils import atomic_write_bytes

__all__ = [
    "atomic_save_pretrained",
    "cache_dir",
    "config_key",
    "load_logits",
    "save_logits",
]


def cache_dir() -> Path:
    """``$KD_CACHE_DIR`` if set, else ``~/.cache/kd-course`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("KD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kd-course"


def config_key(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable configuration (12 hex digits)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def atomic_save_pretrained(folder: str | os.PathLike, *objects) -> Path:
    """``save_pretrained`` each of ``objects`` (model, tokenizer, …) into ``folder`` atomically.

    They are saved into a temporary sibling folder that is renamed to ``folder`` at the end;
    an existing ``folder`` is replaced only once the new one is complete. Models are saved as
    safetensors.
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


def save_logits(path: str | os.PathLike, logits: torch.Tensor, idx: list[int] | torch.Tensor, meta: dict) -> Path:
    """Save teacher logits ``[N, C]`` with the example ids ``idx`` ``[N]`` they belong to.

    ``meta`` (JSON-serialisable: which teacher, task, split, …) is stored alongside and
    checked by :func:`load_logits`, so logits from another teacher or data subset are never
    silently reused.
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
    is absent or was made for other data (``idx`` or ``meta`` differ)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata().get("meta", "{}"))
            logits, idx = f.get_tensor("logits"), f.get_tensor("idx")
    except Exception:  # a corrupt file is recomputed, never trusted
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if expected_meta is not None and json.loads(json.dumps(expected_meta, sort_keys=True, default=str)) != meta:
        return None
    if expected_idx is not None and idx.tolist() != list(expected_idx):
        return None
    return logits, idx
