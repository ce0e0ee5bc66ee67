"""Small shared helpers: seeding, quiet Hugging Face loading, atomic writes, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "fast_mode", "quiet_hf", "set_seed", "sha256_file", "sha256_file_cached"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so that CPU runs are reproducible.

    Taught in notebook 02, section 1 (Cross-entropy).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fast_mode() -> bool:
    """True when ``KD_FAST=1``: notebooks shrink data and steps to run in well under a minute.

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """
    return os.environ.get("KD_FAST", "0").strip() not in {"", "0", "false", "False"}


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks (memory stays flat for large weights).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_digests: dict[tuple[str, int, int], str] = {}


def sha256_file_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered for as long as the file keeps its path, size and modification time
    (verifying the same data file or teacher again costs nothing).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and an interrupted write leaves the old file
    (if any) intact.

    Taught in notebook 03, section 3 (Offline distillation: the teacher's logits, computed once).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block.

    transformers 5 prints a "LOAD REPORT" table (whose row order varies between runs) and a
    "Loading weights" progress bar to stderr; neither belongs in notebook outputs or logs.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    from transformers.utils import logging as hf_logging

    old_level = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old_level)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
