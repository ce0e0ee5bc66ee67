"""Checks for the exercises of notebook 04 · A BERT teacher.

:func:`check_tokenize_prediction`, :func:`check_bert_param_formula`, :func:`check_bert_base_counts`,
:func:`check_pad_share`, :func:`check_temperature_scaling`.

Import them from :mod:`kd_lib.course.exercises`; :class:`~kd_lib.course.exercises.verdict.Verdict`
and the machinery the checks share are in :mod:`kd_lib.course.exercises.verdict`.

:func:`bert_param_counts` (a BERT's parameters, part by part) also serves notebook 11's checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from kd_lib.course.exercises.verdict import (
    Verdict,
    call,
    checked,
    diagnose,
    generator,
    ok,
    require_callable,
    require_int,
    require_number,
    to_tensor,
    wrong,
)

__all__ = [
    "bert_param_counts",
    "check_bert_base_counts",
    "check_bert_param_formula",
    "check_pad_share",
    "check_temperature_scaling",
    "check_tokenize_prediction",
]


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    from kd_lib.models import packaged_teacher_path

    return AutoTokenizer.from_pretrained(packaged_teacher_path(), use_fast=True)


def check_tokenize_prediction(text: str, predicted: Sequence[str]) -> Verdict:
    """Exercise 04.1: your predicted WordPiece tokens of ``text`` against the course tokenizer's.

    Args:
        text: the text, e.g. ``"unfilmable"``.
        predicted: your predicted pieces, e.g. ``["un", "##film", "##able"]`` (without [CLS]/[SEP]).
    """
    name = "check_tokenize_prediction"
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    if isinstance(predicted, str) or not all(isinstance(p, str) for p in predicted):
        raise TypeError("predicted must be a list of str pieces, e.g. ['un', '##film', '##able']")
    predicted = list(predicted)
    actual = _tokenizer().tokenize(text)
    if predicted == actual:
        return ok(name, f"{text!r} -> {actual}")
    hints = []
    if [p.lower() for p in predicted] == actual:
        hints.append("the tokenizer is uncased: it lowercases (and strips accents) before splitting")
    if [p.removeprefix("##") for p in predicted] == [a.removeprefix("##") for a in actual]:
        hints.append("the pieces are right but the ## marks are not: ## starts every piece that continues a word")
    if "[UNK]" in predicted and "[UNK]" not in actual:
        hints.append("no [UNK] here: single characters are in the vocabulary, so unknown words fall back to pieces")
    if "[UNK]" in actual and "[UNK]" not in predicted:
        hints.append("a character the vocabulary lacks (like an emoji) makes its whole word [UNK]")
    punctuation = {".", "-", ",", "!", "?", "'"}
    if punctuation & set(actual) and not punctuation & set(predicted):
        hints.append("punctuation is split off as its own token before WordPiece runs")
    hint = "; ".join(hints) or "compare with the greedy longest-match-first rule"
    return wrong(name, f"{text!r} -> {actual}, you predicted {predicted}: {hint}")


def bert_param_counts(v: int, p: int, s: int, h: int, layers: int, f: int) -> dict[str, int]:
    return {
        "embeddings": (v + p + s) * h + 2 * h,
        "attention": layers * (4 * (h * h + h) + 2 * h),
        "ffn": layers * ((h * f + f) + (f * h + h) + 2 * h),
        "pooler": h * h + h,
    }


@checked
def check_bert_param_formula(n_params: Callable[[int, int, int, int, int, int], int]) -> Verdict:
    """Exercise 04.3: your formula for the parameters of a ``BertModel`` (with pooler, without a head).

    Args:
        n_params: your function ``(V, P, S, H, L, F) -> count`` for vocabulary ``V``, positions ``P``,
            token types ``S``, hidden size ``H``, ``L`` layers and FFN size ``F``.
    """
    name = "check_bert_param_formula"
    require_callable(n_params, "n_params", "(V, P, S, H, L, F) -> parameter count")
    for cfg in ((100, 16, 3, 8, 2, 24), (30522, 512, 2, 384, 6, 1536)):
        _, _, s, h, layers, f = cfg
        parts = bert_param_counts(*cfg)
        expected = sum(parts.values())
        got = to_tensor(name, call(name, n_params, *cfg), "the returned count", ()).item()
        if got == expected:
            continue
        diff = expected - got
        known = {
            parts["pooler"]: "the pooler (a dense H x H layer with bias on [CLS]) is missing",
            -parts["pooler"]: "too many by H² + H: is the pooler counted twice?",
            2 * h * (1 + 2 * layers): "the LayerNorms are missing: one after the embeddings and two per layer, "
                                      "each with 2H parameters (scale and shift)",
            s * h: "the token-type embeddings (S x H) are missing",
            layers * (4 * h + f + h) + h: "the biases are missing (every Linear has one)",
            layers * (h * f + f + f * h + h): "the feed-forward block (H -> F -> H, with biases) is missing",
            layers * (h * f + f): "the FFN has two Linears, H -> F and F -> H: count both",
            layers * 2 * h * h: "attention has four H x H matrices (query, key, value, output): count all four",
            layers * h * h: "attention has four H x H matrices (query, key, value, output): count all four",
            2 * h: "a LayerNorm (2H) is missing",
        }
        hint = known.get(diff, f"got {got:,.0f}, expected {expected:,}: off by {diff:,.0f}; count part by part "
                               f"(embeddings {parts['embeddings']:,}, attention {parts['attention']:,}, FFN "
                               f"{parts['ffn']:,}, pooler {parts['pooler']:,})")
        return wrong(name, f"(V, P, S, H, L, F) = {cfg}: {hint}")
    return ok(name, "matches the BertModel count for all-MiniLM-L6-v2 (22,713,216) and a tiny config")


def check_bert_base_counts(total: int, embedding_share: float, distilbert_6: int) -> Verdict:
    """Exercise 04.3: bert-base-uncased's parameter count by formula (``V = 30522, P = 512, S = 2, H = 768,
    L = 12, F = 3072``).

    Args:
        total: all parameters of ``BertModel`` with the pooler, without a classification head.
        embedding_share: the embeddings' share of ``total``, as a fraction in ``[0, 1]``.
        distilbert_6: parameters of a 6-layer DistilBERT made from it, without pre-classifier and head
            (no token types, no pooler).
    """
    name = "check_bert_base_counts"
    total = require_int(total, "total")
    share = require_number(embedding_share, "embedding_share")
    d6 = require_int(distilbert_6, "distilbert_6")
    parts = bert_param_counts(30522, 512, 2, 768, 12, 3072)
    exp_total = sum(parts.values())
    exp_d6 = (30522 + 512) * 768 + 2 * 768 + (parts["attention"] + parts["ffn"]) // 2
    if total != exp_total:
        hint = "without the pooler" if total == exp_total - parts["pooler"] else "see check_bert_param_formula"
        return wrong(name, f"total: got {total:,}, expected about 109.5 M ({hint})")
    if share > 1 and abs(share / 100 - parts["embeddings"] / exp_total) < 1e-3:
        return wrong(name, "give the share as a fraction (0.22), not a percentage")
    if abs(share - parts["embeddings"] / exp_total) > 1e-3:
        return wrong(name, f"embedding_share: got {share:.4f}; the embeddings are (V + P + S)·H + 2H of the total")
    if d6 != exp_d6:
        known = {
            exp_d6 + 2 * 768: "drop the token-type embeddings: DistilBERT has none (folded into the positions)",
            exp_d6 + parts["pooler"]: "H² + H too many: DistilBERT has no pooler (and leave out the pre-classifier, "
                                      "which belongs to the head)",
            exp_d6 + parts["pooler"] + 2 * 768: "drop the pooler and the token-type embeddings: DistilBERT has neither",
        }
        return wrong(name, f"distilbert_6: got {d6:,}; " + known.get(d6, "(V + P)·H + 2H, plus 6 of the 12 layers"))
    return ok(name, f"{exp_total:,} parameters, {parts['embeddings'] / exp_total:.1%} of them embeddings; a 6-layer "
                    f"DistilBERT has {exp_d6:,} ({exp_d6 / exp_total:.1%}): half the layers saves 39 % here because "
                    "the embeddings are a smaller share")


@checked
def check_pad_share(pad_share: Callable[[Sequence[int], int], float]) -> Verdict:
    """Exercise 04.2: the share of padding positions under dynamic padding.

    Args:
        pad_share: your function ``(lengths, batch_size) -> share``: the rows, in the given order, are cut
            into consecutive batches of ``batch_size`` (the last may be smaller), each padded to its own
            longest row; the result is pad positions / all positions, in ``[0, 1)``.
    """
    name = "check_pad_share"
    require_callable(pad_share, "pad_share", "(lengths, batch_size) -> share")
    g = generator(6)
    lengths = (torch.randint(3, 40, (23,), generator=g)).tolist()
    for order, batch_size in ((lengths, 4), (sorted(lengths), 4), (lengths, 5)):
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        real = sum(order)
        slots = sum(len(b) * max(b) for b in batches)
        expected = torch.tensor((slots - real) / slots, dtype=torch.float64)
        full = batches[:-1] if len(batches[-1]) < batch_size else batches
        full_slots, full_real = sum(len(b) * max(b) for b in full), sum(sum(b) for b in full)
        mistakes = [
            ("you padded every row to the longest of the whole set: dynamic padding pads each batch to its own "
             "longest row", 1 - real / (len(order) * max(order))),
            ("divide the pad positions by all positions (real + pad), not by the real tokens", (slots - real) / real),
            ("the last, smaller batch is missing", (full_slots - full_real) / full_slots),
            ("that is the share of real tokens; the pad share is 1 minus it", real / slots),
        ]
        got = to_tensor(name, call(name, pad_share, list(order), batch_size), "the share", ())
        verdict = diagnose(name, got, expected, mistakes, rtol=1e-6)
        if verdict is not None:
            return verdict
    return ok(name, "right for shuffled and sorted rows and a partial last batch")


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return F.cross_entropy(logits / temperature, labels).item()


@lru_cache(maxsize=1)
def _calibration_data() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Over-confident synthetic logits ``[400, 4]``, labels drawn at ``T = 2``, and the NLL-optimal T."""
    g = generator(7)
    logits = torch.randn(400, 4, generator=g, dtype=torch.float64) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g).squeeze(1)
    lo, hi = 0.05, 20.0  # golden-section search on a unimodal NLL
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(logits, labels, a) < _nll(logits, labels, b):
            hi = b
        else:
            lo = a
    return logits, labels, (lo + hi) / 2


@checked
def check_temperature_scaling(fit_temperature: Callable[[torch.Tensor, torch.Tensor], float]) -> Verdict:
    """Exercises 04.5 and 07.1: temperature scaling -- the ``T`` minimising the NLL of ``softmax(logits / T)``.

    Args:
        fit_temperature: your function ``(logits [N, C], labels [N]) -> T``. A grid search is fine if it is
            fine enough: the answer counts as right when its NLL is within 1e-3 nats of the optimum.
    """
    name = "check_temperature_scaling"
    require_callable(fit_temperature, "fit_temperature", "(logits [N, C], labels [N]) -> T")
    logits, labels, best = _calibration_data()
    t = to_tensor(name, call(name, fit_temperature, logits.clone(), labels.clone()), "the returned T", ()).item()
    if not (math.isfinite(t) and t > 0):
        return wrong(name, f"T = {t} is not a temperature (finite, > 0)")
    gap = _nll(logits, labels, t) - _nll(logits, labels, best)
    if gap <= 1e-3:
        return ok(name, f"T = {t:.3f} (optimum {best:.3f}); the NLL is {_nll(logits, labels, best):.4f} nats there")
    if abs(1 / t - best) < 0.05 * best:
        return wrong(name, f"T = {t:.3f} is 1/T of the optimum: divide the logits by T, do not multiply")
    return wrong(name, f"T = {t:.3f}: its NLL is {gap:.4f} nats above the optimum. Minimise the negative "
                       "log-likelihood (cross-entropy) of softmax(logits / T) -- not the accuracy, which dividing by "
                       "T never changes -- on a fine grid (steps of 0.05 or less) wide enough that T is not at an "
                       "end of it")
