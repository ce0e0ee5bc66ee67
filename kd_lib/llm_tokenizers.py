"""Distilling between language models with different tokenizers: shared text, aligned positions, ULD.

Token-level KD compares the teacher's and the student's next-token distributions entry by entry, so it
needs the **same vocabulary** -- the same token behind every id -- not merely the same *size*: a student
with its own tokenizer gets a shape error, and "fixing" it by slicing the teacher's logits to the
student's size runs silently while matching unrelated tokens (the vocabulary-size trap). With two
tokenizers three things differ, and this module handles each:

* **the ids**: :func:`same_vocabulary` says whether id-wise KD is meaningful;
* **the positions**: one text is cut into different tokens, so position ``t`` of the student is not
  position ``t`` of the teacher. :class:`PieceTokens` tokenises the same text pieces for each model and
  records where each token ends in bytes; :func:`aligned_positions` pairs the positions where both
  models have read exactly the same bytes and predict a token that starts at the same byte;
* **the units**: a per-token perplexity depends on how much text a token holds; :func:`bits_per_byte`
  compares models with different tokenizers on the same bytes.

Universal Logit Distillation (ULD; Boizard et al. 2024, arXiv 2402.12030) needs no shared ids: it
compares the two distributions' probabilities **sorted** in decreasing order (the smaller vocabulary
padded with zeros), by their L1 distance -- the 1-Wasserstein distance when every pair of tokens is one
unit apart. :func:`uld_loss` computes it from the teacher's top ``k`` (the cache of notebook 12), and
:func:`kd_across_tokenizers` makes it (or forward KL, where the vocabulary is shared) an objective for
:func:`kd_lib.training.fit`.

Tokenizers must be byte-level BPE (GPT-2's kind: SmolLM2's and :func:`kd_lib.lm.train_bpe_tokenizer`'s),
whose tokens map one-to-one onto bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kd_lib.llm_topk import TopKCache, topk_kd_loss
from kd_lib.lm import LMBlocks
from kd_lib.training import LossFunction

__all__ = ["METHODS", "CrossTargets", "PieceTokens", "aligned_positions", "bits_per_byte", "cross_tokenizer_targets",
           "kd_across_tokenizers", "realign", "same_vocabulary", "text_pieces", "token_bytes", "uld_loss"]

METHODS = ("uld", "kl")


def text_pieces(texts: Sequence[str], chars: int = 400) -> list[str]:
    """Cut each text into pieces of at most ``chars`` characters, at whitespace, without leading or trailing
    whitespace (a run of more than ``chars`` characters without a space is cut into pieces of its own). A piece
    is the unit both tokenizers read, so the models see exactly the same text.

    Taught in notebook 14, section 2 (One text, two tokenizations).
    """
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 20:
        raise ValueError(f"chars must be an int >= 20 (characters per piece); got {chars!r}")
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings (e.g. chapters), not a single string")
    pieces = []
    for text in texts:
        piece = ""
        for word in text.split():
            if piece and len(piece) + 1 + len(word) > chars:
                pieces.append(piece)
                piece = ""
            while len(word) > chars:  # a "word" longer than a piece: its own pieces, nothing dropped
                pieces.append(word[:chars])
                word = word[chars:]
            piece = f"{piece} {word}" if piece else word
        if piece:
            pieces.append(piece)
    return pieces


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, ids: Sequence[int]) -> list[int]:
    """The number of UTF-8 bytes each token stands for (0 for special tokens such as end-of-text).

    Raises:
        ValueError: the tokenizer is not byte-level BPE (its decoder is not ``ByteLevel``, or a token is not a
            string of byte symbols).

    Taught in notebook 14, section 2 (One text, two tokenizations).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in repr(backend.decoder):
        raise ValueError(f"tokenizer is not byte-level BPE (its decoder is {backend and backend.decoder!r}), so its "
                         "tokens' lengths in bytes are unknown: use a GPT-2-style byte-level BPE, e.g. "
                         "kd_lib.lm.train_bpe_tokenizer")
    special = set(tokenizer.all_special_ids)
    sizes = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)), strict=True):
        if token_id in special:
            sizes.append(0)
        elif all(ch in BYTE_DECODER for ch in token):
            sizes.append(len(token))
        else:
            raise ValueError(f"tokenizer is not byte-level BPE (token {token!r}, id {token_id}, is not made "
                             f"of byte symbols): use a GPT-2-style byte-level BPE, e.g. kd_lib.lm.train_bpe_tokenizer")
    return sizes


class PieceTokens(LMBlocks):
    """Text pieces tokenised for one model: every token of every piece is a target.

    Row ``i`` is ``[end-of-text] + tokens(piece_i)[:-1]`` as input and ``tokens(piece_i)`` as labels (already
    shifted, as in :class:`kd_lib.lm.LMBlocks`, whose batches and loader it shares), so the model predicts all
    of the piece's bytes from its first. ``byte_starts[i][t]`` is the byte at which the token predicted at
    position ``t`` starts; ``n_bytes`` is the pieces' total UTF-8 bytes. Pieces longer than ``max_tokens``
    raise (cut them shorter with :func:`text_pieces`).

    Taught in notebook 14, section 2 (One text, two tokenizations).
    """

    def __init__(self, pieces: Sequence[str], tokenizer, max_tokens: int = 512) -> None:
        if isinstance(pieces, str) or not pieces:
            raise ValueError("pieces must be a non-empty sequence of strings (see text_pieces)")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("tokenizer needs an eos_token and a pad_token "
                             "(kd_lib.llm_teacher.text_tokenizer sets both)")
        self.block_size, self.pad_token_id = max_tokens, tokenizer.pad_token_id
        self.input_ids, self.labels, self.byte_starts, self.n_bytes = [], [], [], 0
        for piece, ids in zip(pieces, tokenizer(list(pieces), add_special_tokens=False)["input_ids"], strict=True):
            sizes = token_bytes(tokenizer, ids)
            if sum(sizes) != len(piece.encode("utf-8")) or not ids:
                raise ValueError(f"the tokens of piece {piece[:40]!r}... do not cover its bytes exactly (empty piece, "
                                 f"or a tokenizer that normalises text): use a byte-level BPE tokenizer")
            if len(ids) > max_tokens:
                raise ValueError(f"a piece has {len(ids)} tokens > max_tokens={max_tokens}: cut shorter pieces")
            self.input_ids.append([tokenizer.eos_token_id, *ids[:-1]])
            self.labels.append(list(ids))
            self.byte_starts.append([0, *torch.tensor(sizes[:-1]).cumsum(0).tolist()])
            self.n_bytes += sum(sizes)


def aligned_positions(student: PieceTokens, teacher: PieceTokens) -> torch.Tensor:
    """``[N, L_s]`` long: for each student position, the teacher position that has read the same bytes and
    predicts a token starting at the same byte; ``-1`` where the teacher has no token boundary there (and on
    padding). Both must tokenise the same pieces.

    Taught in notebook 14, section 3 (Aligning positions).
    """
    if len(student) != len(teacher):
        raise ValueError(f"student and teacher must tokenise the same pieces; "
                         f"got {len(student)} and {len(teacher)} rows")
    length = max(len(ids) for ids in student.input_ids)
    alignment = torch.full((len(student), length), -1, dtype=torch.long)
    for row, (mine, theirs) in enumerate(zip(student.byte_starts, teacher.byte_starts, strict=True)):
        where = {start: u for u, start in enumerate(theirs)}
        alignment[row, : len(mine)] = torch.tensor([where.get(start, -1) for start in mine])
    return alignment


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    """True when both tokenizers map every token string to the same id (and have the same size):
    only then is an id-by-id divergence such as KL between the two models meaningful.

    Taught in notebook 14, section 1 (The vocabulary-size trap).
    """
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


@dataclass
class CrossTargets:
    """The teacher's top-``k`` next-token log-probabilities at a student's positions (``L_s``), or at the
    teacher's own (``L_t``, from ``cross_tokenizer_targets(..., alignment=None)``).

    Attributes:
        cache: a :class:`kd_lib.llm_topk.TopKCache` ``[N, L_s, k]``, filled only where ``aligned``; its ids
            are the teacher's.
        aligned: ``[N, L_s]`` bool, the positions that have targets (aligned to a teacher position).
        sliced: the same from the teacher's logits cut to the first ``vocab_limit`` ids (the trap), or None.

    Taught in notebook 14, section 3 (Aligning positions).
    """

    cache: TopKCache
    aligned: torch.Tensor
    sliced: TopKCache | None = None


def _top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` ids, log-probabilities (float64 softmax) and the log of the rest, for ``[..., V]`` logits."""
    log_p = F.log_softmax(logits.double(), dim=-1)
    top = log_p.topk(k, dim=-1)
    return top.indices, top.values, torch.logsumexp(log_p.scatter(-1, top.indices, -math.inf), dim=-1)


@torch.no_grad()
def cross_tokenizer_targets(teacher, teacher_data: PieceTokens, alignment: torch.Tensor | None = None, k: int = 32,
                            *, vocab_limit: int | None = None, batch_size: int = 8) -> CrossTargets:
    """Run ``teacher`` once (eval mode, no gradients) over its tokens of the pieces and keep, at each aligned
    student position, its top ``k`` (at temperature 1); with ``vocab_limit``, also the top ``k`` of its logits
    cut to the first ``vocab_limit`` ids -- what slicing a teacher to a student's vocabulary size gives.

    With ``alignment=None`` the targets stay at the teacher's own positions: what a student sharing its tokenizer
    trains on, and what :func:`realign` moves to the positions of any other student, without running the
    teacher again.

    Taught in notebook 14, section 3 (Aligning positions).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    if vocab_limit is not None and (isinstance(vocab_limit, bool) or not isinstance(vocab_limit, int)
                                    or vocab_limit < k):
        raise ValueError(f"vocab_limit must be None or an int >= k ({k}): the ids kept; got {vocab_limit!r}")
    if alignment is None:
        alignment = aligned_positions(teacher_data, teacher_data)  # the identity, -1 on padding
    n, length = alignment.shape
    aligned = alignment >= 0
    out = {name: {"ids": torch.zeros(n, length, k, dtype=torch.int32),
                  "logp": torch.full((n, length, k), -math.inf, dtype=torch.float16),
                  "log_rest": torch.full((n, length), -math.inf)} for name in ("full", "sliced")}
    was_training, device = teacher.training, next(teacher.parameters()).device
    teacher.eval()
    try:
        for batch in teacher_data.loader(batch_size):
            logits = teacher(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device)).logits.cpu()
            if k > logits.shape[-1]:
                raise ValueError(f"k={k} is larger than the teacher's vocabulary ({logits.shape[-1]})")
            parts = {"full": logits} if vocab_limit is None else {"full": logits, "sliced": logits[..., :vocab_limit]}
            for row_in_batch, row in enumerate(batch["row"].tolist()):
                rows, cols = aligned[row].nonzero(as_tuple=True)[0], alignment[row][aligned[row]]
                for name, part in parts.items():
                    ids, logp, rest = _top(part[row_in_batch, cols], k)
                    out[name]["ids"][row, rows] = ids.to(torch.int32)
                    out[name]["logp"][row, rows] = logp.to(torch.float16)
                    out[name]["log_rest"][row, rows] = rest.float()
    finally:
        teacher.train(was_training)
    meta = {"k": k, "temperature": 1.0}
    sliced = None if vocab_limit is None else TopKCache(**out["sliced"], meta={**meta, "vocab_limit": vocab_limit})
    return CrossTargets(TopKCache(**out["full"], meta=meta), aligned, sliced)


def realign(targets: CrossTargets, alignment: torch.Tensor) -> CrossTargets:
    """Targets at the teacher's own positions (``cross_tokenizer_targets(..., alignment=None)``) moved to a
    student's positions: ``[N, L_s]``, filled where ``alignment`` (from :func:`aligned_positions`) pairs the
    student position with a teacher position that has targets. The same as running the teacher with
    ``alignment``, without running it.

    Taught in notebook 14, section 3 (Aligning positions).
    """
    if alignment.shape[0] != targets.aligned.shape[0]:
        raise ValueError(f"alignment has {alignment.shape[0]} rows, the targets {targets.aligned.shape[0]}: "
                         "both must come from the same pieces")
    index = alignment.clamp_min(0)
    if int(index.max()) >= targets.aligned.shape[1]:
        raise ValueError("alignment points past the teacher's positions: pass the targets at the teacher's own "
                         "positions (cross_tokenizer_targets with alignment=None) of the same pieces")
    aligned = (alignment >= 0) & targets.aligned.gather(1, index)

    def move(cache: TopKCache) -> TopKCache:
        wide = index[..., None].expand(-1, -1, cache.k)
        return TopKCache(ids=cache.ids.gather(1, wide).masked_fill(~aligned[..., None], 0),
                         logp=cache.logp.gather(1, wide).masked_fill(~aligned[..., None], -math.inf),
                         log_rest=cache.log_rest.gather(1, index).masked_fill(~aligned, -math.inf),
                         temperature=cache.temperature, meta=dict(cache.meta))

    return CrossTargets(move(targets.cache), aligned, None if targets.sliced is None else move(targets.sliced))


def uld_loss(student_logits: torch.Tensor, logp: torch.Tensor, log_rest: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """Universal Logit Distillation: the mean over masked positions of the L1 distance between the student's and
    the teacher's probabilities sorted in decreasing order, from the teacher's top ``k``.

    With ``p_(1) >= p_(2) >= ...`` the teacher's sorted probabilities and ``q_(i)`` the student's, the loss at a
    position is ``sum_{i<=k} |q_(i) - p_(i)| + |q_rest - p_rest|`` where ``*_rest`` is the mass outside each
    top ``k`` (a student vocabulary smaller than ``k`` is padded with zeros). With ``k`` the teacher's whole
    vocabulary it is the ULD distance exactly; a smaller ``k`` can only lower it (the tails are compared by
    their totals). Token identities never enter: any two tokenizers can be compared.

    Args:
        student_logits: ``[B, L, V_s]``.
        logp: ``[B, L, k]`` the teacher's top-``k`` log-probabilities, largest first.
        log_rest: ``[B, L]`` the log of the teacher's mass outside its top ``k``.
        mask: ``[B, L]`` bool, the positions to compare (aligned, with a target).

    Returns: a 0-dim tensor, in probability units (between 0 and 2).

    Taught in notebook 14, section 4 (Universal Logit Distillation).
    """
    keep = mask.bool()
    if not keep.any():
        raise ValueError("mask selects no position: there is nothing to distil (no aligned position with a target)")
    k = logp.shape[-1]
    q = F.softmax(student_logits[keep].float(), dim=-1)
    q_top = q.topk(min(k, q.shape[-1]), dim=-1).values
    q_top = F.pad(q_top, (0, k - q_top.shape[-1]))  # a smaller vocabulary: zeros
    p_top = logp[keep].float().exp()
    q_rest = (1 - q_top.sum(-1)).clamp_min(0)
    p_rest = log_rest[keep].float().exp()
    return ((q_top - p_top).abs().sum(-1) + (q_rest - p_rest).abs()).mean()


def kd_across_tokenizers(targets: CrossTargets, method: str = "uld", alpha: float = 0.5, *,
                         shared_vocabulary: bool = False) -> LossFunction:
    """``alpha * distillation + (1 - alpha) * CE`` for :func:`kd_lib.training.fit`, the distillation term on the
    aligned positions only (CE on every target), rows looked up by ``batch["row"]``.

    Args:
        targets: from :func:`cross_tokenizer_targets` on the same pieces as the student's data.
        method: ``"uld"`` (any tokenizers) or ``"kl"`` (forward KL to the renormalised top ``k``, as in
            notebook 12), which needs ``shared_vocabulary=True`` -- check it with :func:`same_vocabulary`.
        alpha: the weight of the distillation term, in ``[0, 1]``.

    Taught in notebook 14, section 6 (Five students, two tokenizers).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "kl" and not shared_vocabulary:
        raise ValueError("method='kl' compares the two distributions token id by token id, which needs the same "
                         "vocabulary: check same_vocabulary(teacher_tokenizer, student_tokenizer) and pass "
                         "shared_vocabulary=True, or use method='uld' across tokenizers")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (1: distillation only); got {alpha!r}")
    cache = targets.cache

    def loss(outputs, batch: dict) -> torch.Tensor:
        logits, labels, rows = outputs.logits, batch["labels"].to(outputs.logits.device), batch["row"]
        length = labels.shape[1]
        has_target = labels != -100
        mask = has_target & targets.aligned[rows, :length].to(logits.device)
        ids, logp, log_rest = (t[rows, :length].to(logits.device) for t in (cache.ids, cache.logp, cache.log_rest))
        if method == "uld":
            distil = uld_loss(logits, logp, log_rest, mask)
        else:
            distil = topk_kd_loss(logits, ids, logp, log_rest, mask, mode="renormalize")
        if alpha == 1:
            return distil
        ce = F.cross_entropy(logits[has_target].float(), labels[has_target])
        return alpha * distil + (1 - alpha) * ce

    return LossFunction(loss)


@torch.no_grad()
def bits_per_byte(model, data: PieceTokens, batch_size: int = 16) -> float:
    """The model's cross-entropy on every byte of the pieces, in bits per byte: the sum of its next-token
    losses (nats) over all targets, divided by ``ln 2`` times the pieces' UTF-8 bytes. Unlike a per-token
    perplexity it does not depend on how the text is tokenised. The model is restored to its mode.

    Taught in notebook 14, section 2 (One text, two tokenizations).
    """
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total = 0.0
    try:
        for batch in data.loader(batch_size):
            ids, mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
            logits = model(input_ids=ids, attention_mask=mask).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                     reduction="sum").item()
    finally:
        model.train(was_training)
    return total / (math.log(2) * data.n_bytes)
