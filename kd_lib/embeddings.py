"""Sentence embeddings from the packaged all-MiniLM-L6-v2 teacher (or any BERT-family encoder).

all-MiniLM-L6-v2 was trained as a sentence encoder: a sentence's embedding is the *mean* of its
token vectors from the last layer -- padding excluded -- followed by L2 normalisation. That is
what :func:`encode` computes, so its output matches ``sentence-transformers``' own.

Shapes: ``N`` sentences, ``L`` tokens (after padding), ``H`` hidden size (384 for MiniLM-L6).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lib.models import verify_packaged_teacher
from kd_lib.utils import quiet_hf

__all__ = ["cosine_matrix", "encode", "load_encoder", "mean_pool"]


def load_encoder(name_or_path: str | os.PathLike | None = None):
    """Load a bare Transformer encoder (no task head) and its fast tokenizer.

    Args:
        name_or_path: ``None`` for the packaged all-MiniLM-L6-v2, whose weights are checked
            against their recorded sha256 first; otherwise a local folder or Hub name.
            Weights are read from safetensors only and remote code is never run.

    Returns:
        ``(model, tokenizer)``: an ``AutoModel`` in eval mode on the CPU and its tokenizer.

    Raises:
        kd_lib.models.TeacherIntegrityError: the packaged weights were altered.

    Taught in notebook 01, section 4 (Dark knowledge in a real teacher).
    """
    from transformers import AutoModel, AutoTokenizer

    source = str(verify_packaged_teacher()) if name_or_path is None else os.fspath(name_or_path)
    with quiet_hf():
        model = AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    model.eval()
    return model, tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors over the real tokens only.

    Args:
        hidden: ``[N, L, H]`` last-layer token vectors.
        attention_mask: ``[N, L]``, 1 for real tokens and 0 for padding.

    Returns:
        ``[N, H]``: for each sentence, the sum of its real token vectors divided by their count.

    Taught in notebook 01, section 4 (Dark knowledge in a real teacher).
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [N, L, H] and attention_mask [N, L]; got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [N, L, 1]
    counts = mask.sum(dim=1).clamp(min=1e-9)  # [N, 1]; a sentence always has [CLS] and [SEP]
    return (hidden * mask).sum(dim=1) / counts


def encode(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 256,
    normalize: bool = True,
) -> torch.Tensor:
    """Embed sentences with mask-aware mean pooling (the way all-MiniLM-L6-v2 was trained).

    Args:
        model: a Hugging Face encoder (e.g. from :func:`load_encoder`).
        tokenizer: its tokenizer.
        texts: ``N`` sentences.
        batch_size: sentences per forward pass; the result does not depend on it.
        max_length: longer inputs are truncated to this many tokens (256 is the length
            all-MiniLM-L6-v2 is configured for in sentence-transformers).
        normalize: L2-normalise each embedding, so dot products are cosine similarities.

    Returns:
        Float32 tensor ``[N, H]`` on the CPU (``H = 384`` for all-MiniLM-L6-v2).

    Taught in notebook 01, section 4 (Dark knowledge in a real teacher).
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string: wrap it in a list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    texts = list(texts)
    if not texts:
        return torch.empty(0, model.config.hidden_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                hidden = model(**batch).last_hidden_state  # [n, L, H]
                chunks.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
    finally:
        model.train(was_training)
    emb = torch.cat(chunks)
    return F.normalize(emb, p=2, dim=-1) if normalize else emb


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities between the rows of ``a`` ``[N, H]`` and ``b`` ``[M, H]``: ``[N, M]``.

    Taught in notebook 08, section 1 (The teacher is a search engine).
    """
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
