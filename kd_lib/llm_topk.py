"""Top-k caches of a language-model teacher: its k most likely next tokens at every position, stored once.

A dense cache of a 49,152-token teacher needs 196,608 bytes per token in float32 -- 25 GB for
128k tokens -- so practical pipelines keep only the teacher's top ``k`` log-probabilities and token
ids per position (``k * 6 + 4`` bytes here: int32 ids, float16 values and the float32 log of the mass
left out). What to do with the left-out mass is a choice, and :func:`topk_kd_loss` offers both:

* ``"renormalize"``: the teacher's kept probabilities scaled to sum to 1, zero elsewhere; the loss is
  ``KL(p~ || p_s)`` against the student's full softmax;
* ``"bucket"``: the kept probabilities as they are plus one bucket for the rest, matched against the
  student's probabilities on the same tokens and its total mass on all others -- a KL over ``k + 1``
  outcomes, never more than the full KL (merging outcomes cannot increase a KL divergence).

With ``k`` equal to the vocabulary both are the full forward KL of :func:`kd_lib.llm_losses.forward_kl`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kd_lib.losses import check_temperature
from kd_lib.training import LossFunction
from kd_lib.utils import atomic_write_bytes

__all__ = ["MODES", "TopKCache", "bytes_per_token", "kd_from_topk", "load_topk", "save_topk", "teacher_topk",
           "topk_kd_loss"]

MODES = ("renormalize", "bucket")


@dataclass
class TopKCache:
    """A teacher's top-``k`` next-token log-probabilities for every position of a set of blocks.

    Attributes:
        ids: ``[N, L, k]`` int32 token ids, most likely first.
        logp: ``[N, L, k]`` float16 log-probabilities of those tokens at ``temperature``.
        log_rest: ``[N, L]`` float32 log of the probability left out (``-inf`` when ``k = V``).
        temperature: the teacher's softmax temperature.
        meta: what produced the cache (teacher, tokenizer, data, ``k``); checked when it is loaded.

    Taught in notebook 12, section 5 (Top-k logit caches).
    """

    ids: torch.Tensor
    logp: torch.Tensor
    log_rest: torch.Tensor
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    def kept_mass(self) -> torch.Tensor:
        """``[N, L]``: the teacher probability the cache keeps at each position."""
        return self.logp.float().exp().sum(-1)


def bytes_per_token(k: int, id_bytes: int = 4, value_bytes: int = 2, rest_bytes: int = 4) -> int:
    """Bytes a top-``k`` cache stores per token (ids, values, and the left-out mass).

    Taught in notebook 12, section 5 (Top-k logit caches).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    return k * (id_bytes + value_bytes) + rest_bytes


@torch.no_grad()
def teacher_topk(teacher, data, k: int, *, temperature: float = 1.0, batch_size: int = 8,
                 device: str | torch.device = "cpu", meta: dict | None = None) -> TopKCache:
    """Run ``teacher`` (eval mode, no gradients) over ``data`` once and keep its top ``k`` per position.

    Args:
        teacher: a causal LM returning ``.logits [B, L, V]``.
        data: blocks with ``loader(batch_size)`` yielding ``input_ids``, ``attention_mask`` and ``row``
            (e.g. :class:`kd_lib.lm.LMBlocks`); rows come back in ``data``'s order.
        k: tokens kept per position, ``1 <= k <= V``.

    Positions past a block's end are filled with id 0, log-probability ``-inf`` and no rest.

    Taught in notebook 12, section 5 (Top-k logit caches).
    """
    temperature = check_temperature(temperature, kd=True)
    bytes_per_token(k)  # validates k
    was_training = teacher.training
    teacher.eval()
    length = max(len(ids) for ids in data.input_ids)
    parts: dict[str, list[torch.Tensor]] = {"ids": [], "logp": [], "log_rest": []}
    try:
        for batch in data.loader(batch_size):
            logits = teacher(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device)).logits
            if k > logits.shape[-1]:
                raise ValueError(f"k={k} is larger than the teacher's vocabulary ({logits.shape[-1]})")
            log_p = F.log_softmax(logits.double() / temperature, dim=-1)
            top = log_p.topk(k, dim=-1)
            rest = torch.logsumexp(log_p.scatter(-1, top.indices, -math.inf), dim=-1)
            padding = ~batch["attention_mask"].to(device).bool()  # outputs at padding are arbitrary: not kept
            ids = top.indices.masked_fill(padding[..., None], 0)
            values, rest = top.values.masked_fill(padding[..., None], -math.inf), rest.masked_fill(padding, -math.inf)
            pad = length - logits.shape[1]
            parts["ids"].append(F.pad(ids, (0, 0, 0, pad)).to(torch.int32).cpu())
            parts["logp"].append(F.pad(values, (0, 0, 0, pad), value=-math.inf).to(torch.float16).cpu())
            parts["log_rest"].append(F.pad(rest, (0, pad), value=-math.inf).to(torch.float32).cpu())
    finally:
        teacher.train(was_training)
    return TopKCache(**{name: torch.cat(p) for name, p in parts.items()}, temperature=temperature,
                     meta={**(meta or {}), "k": k, "temperature": temperature})


def save_topk(path: str | os.PathLike, cache: TopKCache) -> Path:
    """Write ``cache`` as one safetensors file (its ``meta`` and temperature in the header), atomically.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    from safetensors.torch import save

    header = {"meta": json.dumps(cache.meta, sort_keys=True), "temperature": repr(cache.temperature)}
    tensors = {"ids": cache.ids.contiguous(), "logp": cache.logp.contiguous(), "log_rest": cache.log_rest.contiguous()}
    return atomic_write_bytes(path, save(tensors, metadata=header))


def load_topk(path: str | os.PathLike, expected_meta: dict | None = None) -> TopKCache:
    """Read a cache written by :func:`save_topk`.

    Raises:
        ValueError: ``expected_meta`` given and the stored ``meta`` differs on one of its keys (a cache of
            another teacher, tokenizer, data or ``k``): the message names the keys; compute it again.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in ("ids", "logp", "log_rest")}
    meta = json.loads(header.get("meta", "{}"))
    if expected_meta is not None:
        differ = sorted(key for key, value in expected_meta.items() if meta.get(key) != value)
        if differ:
            raise ValueError(f"top-k cache {path} was made with other {', '.join(differ)} "
                             f"({ {key: meta.get(key) for key in differ} }); delete it to compute it again")
    return TopKCache(**tensors, temperature=float(header.get("temperature", "1.0")), meta=meta)


def topk_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, log_rest: torch.Tensor,
                 mask: torch.Tensor, *, mode: str = "renormalize", temperature: float = 1.0) -> torch.Tensor:
    """``T**2 *`` the mean over masked positions of the forward KL from a top-k cache to the student.

    Args:
        student_logits: ``[B, L, V]``.
        ids, logp: ``[B, L, k]`` the cached token ids and teacher log-probabilities (at ``temperature``).
        log_rest: ``[B, L]`` log of the teacher's left-out mass.
        mask: ``[B, L]``, the positions with a target (``labels != -100``).
        mode: ``"renormalize"`` or ``"bucket"`` (see the module docstring).

    Taught in notebook 12, section 5 (Top-k logit caches).
    """
    temperature = check_temperature(temperature, kd=True)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    keep = mask.bool()
    if not keep.any():
        raise ValueError("mask selects no position: there is nothing to distil (check the labels and padding)")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q = F.log_softmax(student_logits[keep].to(dtype) / temperature, dim=-1)  # [N, V]
    index = ids[keep].long()
    log_q_k = log_q.gather(-1, index)
    log_p = logp[keep].to(dtype)
    if mode == "renormalize":
        log_p = F.log_softmax(log_p, dim=-1)
        kl = _plogp_ratio(log_p, log_q_k).sum(-1)
    else:
        log_r = log_rest[keep].to(dtype)
        log_q_rest = torch.logsumexp(log_q.scatter(-1, index, -math.inf), dim=-1)
        kl = _plogp_ratio(log_p, log_q_k).sum(-1) + _plogp_ratio(log_r, log_q_rest)
    return temperature**2 * kl.mean()


def _plogp_ratio(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``p * (log p - log q)`` elementwise, 0 where ``p = 0``."""
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(log_p == -math.inf, torch.zeros_like(terms), terms)


def kd_from_topk(cache: TopKCache, mode: str = "renormalize", alpha: float = 1.0) -> LossFunction:
    """``alpha * topk_kd_loss + (1 - alpha) * CE`` against a cache, rows looked up by ``batch["row"]``,
    for :func:`kd_lib.training.fit`. The temperature is the cache's.

    Taught in notebook 12, section 6 (Healing the pruned student).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (1: soft targets only); got {alpha!r}")

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits, labels, rows = outputs.logits, batch["labels"].to(outputs.logits.device), batch["row"]
        length = labels.shape[1]
        mask = labels != -100
        ids, logp, log_rest = (t[rows, :length].to(logits.device) for t in (cache.ids, cache.logp, cache.log_rest))
        kd = topk_kd_loss(logits, ids, logp, log_rest, mask, mode=mode, temperature=cache.temperature)
        if alpha == 1:
            return kd
        ce = F.cross_entropy(logits[mask].float(), labels[mask])
        return alpha * kd + (1 - alpha) * ce

    return LossFunction(loss)
