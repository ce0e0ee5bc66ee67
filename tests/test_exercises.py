"""kd_lib.course.exercises: every check accepts the right answer and recognises typical wrong ones by name."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from kd_lib.course import exercises as ex
from kd_lib.course.digits import load_digits_split
from kd_lib.losses import distillation_loss, kd_loss


def assert_right(result: ex.Verdict) -> None:
    assert isinstance(result, ex.Verdict)
    assert result.ok, result.message
    assert bool(result) and str(result).startswith("✓ correct")


def assert_wrong(result: ex.Verdict, *words: str) -> None:
    assert isinstance(result, ex.Verdict)
    assert not result.ok and not bool(result), f"a wrong answer passed: {result.message}"
    assert str(result).startswith("✗")
    for word in words:
        assert word.lower() in result.message.lower(), f"{word!r} not in hint: {result.message}"


# --- the result type and argument handling --------------------------------------------------------


def test_result_displays_a_verdict():
    good, bad = ex.Verdict(True, "fine", "check_x"), ex.Verdict(False, "use batchmean", "check_x")
    assert repr(good) == "✓ correct (check_x): fine"
    assert repr(bad) == "✗ not yet (check_x): use batchmean"
    assert good._repr_markdown_().startswith("**✓ correct**") and "`check_x`" in bad._repr_markdown_()


def test_wrong_argument_types_raise_a_clear_type_error():
    with pytest.raises(TypeError, match="my_kd_loss must be a function"):
        ex.check_kd_loss(3.0)
    with pytest.raises(TypeError, match="x_float32 must be a number"):
        ex.check_softmax_overflow("89", 710.0)
    with pytest.raises(TypeError, match="per_row must be True or False"):
        ex.check_shift_invariance(1, False)
    with pytest.raises(TypeError, match="predicted must be a list"):
        ex.check_tokenize_prediction("unfilmable", "un ##film ##able")
    with pytest.raises(TypeError, match="bert_large must be a whole number"):
        ex.check_largest_batch(63, 20.5)


def test_a_function_that_raises_gives_a_verdict_not_an_exception():
    def broken(s, t, temperature):
        raise RuntimeError("shape mismatch")

    assert_wrong(ex.check_kd_loss(broken), "raised RuntimeError", "shape mismatch")


def test_a_wrong_shape_is_reported():
    assert_wrong(ex.check_high_temperature_gradient(lambda z, v: (z - v)[:3]), "shape (3,)")


def test_every_check_is_exported_and_documented():
    names = [n for n in ex.__all__ if n.startswith("check_")]
    assert sorted(names) == sorted(n for n in dir(ex) if n.startswith("check_"))
    assert len(names) >= 25
    for n in names:
        fn = getattr(ex, n)
        assert fn.__doc__ and "Args:" in fn.__doc__, n


# --- 01 ---------------------------------------------------------------------------------------------


def temperature_for(logits, target):
    lo, hi = 1e-3, 1e3
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if torch.softmax(logits / mid, -1).max() > target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def test_temperature_for_target():
    assert_right(ex.check_temperature_for_target(temperature_for))
    assert_wrong(ex.check_temperature_for_target(lambda z, p: 1 / temperature_for(z, p)), "1/T")

    def wrong_way(logits, target):  # moves the wrong end of the interval: ends at a bound
        lo, hi = 1e-3, 1e3
        for _ in range(100):
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if torch.softmax(logits / mid, -1).max() > target else (mid, hi)
        return lo

    assert_wrong(ex.check_temperature_for_target(wrong_way), "decreases as T grows")
    assert_wrong(ex.check_temperature_for_target(lambda z, p: -1.0), "finite and > 0")


def test_softmax_overflow():
    lim32, lim64 = math.log(torch.finfo(torch.float32).max), math.log(torch.finfo(torch.float64).max)
    assert_right(ex.check_softmax_overflow(89, 710))
    assert_right(ex.check_softmax_overflow(lim32 + 1e-4, lim64 + 1e-9))
    assert_wrong(ex.check_softmax_overflow(710, 89), "swapped")
    assert_wrong(ex.check_softmax_overflow(88, 710), "float32", "still finite")
    assert_wrong(ex.check_softmax_overflow(89, 800), "float64", "smaller x")


def entropy_derivative(z, temperature):
    p = torch.softmax(z / temperature, -1)
    return ((p * z**2).sum() - (p * z).sum() ** 2) / temperature**3


def test_entropy_derivative():
    assert_right(ex.check_entropy_derivative(entropy_derivative))
    assert_wrong(ex.check_entropy_derivative(lambda z, t: entropy_derivative(z, t) * t), "factor of T")
    assert_wrong(ex.check_entropy_derivative(lambda z, t: -entropy_derivative(z, t)), "sign")
    assert_wrong(ex.check_entropy_derivative(lambda z, t: z.var(unbiased=False) / t**3), "unweighted variance")


def limit_gradient(z, v):
    return ((z - z.mean()) - (v - v.mean())) / z.numel()


def test_high_temperature_gradient():
    assert_right(ex.check_high_temperature_gradient(limit_gradient))
    assert_wrong(ex.check_high_temperature_gradient(lambda z, v: limit_gradient(z, v) * z.numel()), "factor of C")
    assert_wrong(ex.check_high_temperature_gradient(lambda z, v: (z - v) / z.numel()), "mean-centred")
    assert_wrong(ex.check_high_temperature_gradient(lambda z, v: -limit_gradient(z, v)), "sign")


def test_the_limit_gradient_is_what_autograd_gives_at_high_temperature():
    z, v = torch.randn(10, dtype=torch.float64, requires_grad=True), torch.randn(10, dtype=torch.float64)
    (grad,) = torch.autograd.grad(kd_loss(z[None], v[None], 1e4), z)
    assert torch.allclose(grad, limit_gradient(z.detach(), v), atol=1e-4)


# --- 02 ---------------------------------------------------------------------------------------------


def test_shift_invariance():
    assert_right(ex.check_shift_invariance(per_row=True, per_class=False))
    assert_wrong(ex.check_shift_invariance(per_row=True, per_class=True), "per class")
    assert_wrong(ex.check_shift_invariance(per_row=False, per_class=False), "per row")


def kl(p, q):
    p, q = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    return (p * (p / q).log()).sum().item()


T_, COVER, MODE = [0.45, 0.45, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2], [0.85, 0.05, 0.05, 0.05]


def test_kl_directions():
    right = (kl(T_, COVER), kl(T_, MODE), kl(COVER, T_), kl(MODE, T_))
    assert right[0] < right[1] and right[2] < right[3]  # both directions prefer the covering student here
    assert_right(ex.check_kl_directions(*right))
    assert_wrong(ex.check_kl_directions(right[2], right[3], right[0], right[1]), "swapped")
    assert_wrong(ex.check_kl_directions(*(x / math.log(2) for x in right)), "bits")
    assert_wrong(ex.check_kl_directions(right[0], right[1], right[2], 0.2), "reverse_mode wrong")


def my_kd_loss(s, t, temperature):
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean") * (
        temperature**2
    )


@pytest.mark.filterwarnings("ignore:reduction")  # the reduction="mean" mistake warns
def test_kd_loss():
    assert_right(ex.check_kd_loss(my_kd_loss))

    def mean(s, t, temp):
        return F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="mean") * temp**2

    def no_t2(s, t, temp):
        return my_kd_loss(s, t, temp) / temp**2

    def swapped(s, t, temp):
        return F.kl_div(F.log_softmax(t / temp, -1), F.softmax(s / temp, -1), reduction="batchmean") * temp**2

    def softmax_input(s, t, temp):
        return F.kl_div(F.softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp**2

    def detached(s, t, temp):
        return my_kd_loss(s.detach(), t, temp)

    assert_wrong(ex.check_kd_loss(mean), "1/C", "reduction='mean'", "batchmean")
    assert_wrong(ex.check_kd_loss(no_t2), "T²")
    assert_wrong(ex.check_kd_loss(swapped), "swapped")
    assert_wrong(ex.check_kd_loss(softmax_input), "softmax instead of log_softmax")
    assert_wrong(ex.check_kd_loss(detached), "no gradient")


def my_token_kd_loss(s, t, mask, temperature):
    keep = mask.bool()
    return my_kd_loss(s[keep], t[keep], temperature)


def test_token_kd_loss():
    assert_right(ex.check_token_kd_loss(my_token_kd_loss))

    def unmasked(s, t, mask, temp):
        return my_kd_loss(s.flatten(0, 1), t.flatten(0, 1), temp)

    def batchmean_3d(s, t, mask, temp):
        return F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp**2

    def multiply_mask(s, t, mask, temp):  # right on ordinary inputs, nan/inf-prone with huge padded logits
        log_ps, log_pt = torch.log(torch.softmax(s / temp, -1)), torch.log(torch.softmax(t / temp, -1))
        kl_tok = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        return (kl_tok * mask).sum() / mask.sum() * temp**2

    assert_wrong(ex.check_token_kd_loss(unmasked), "padding is not masked")
    assert_wrong(ex.check_token_kd_loss(batchmean_3d), "divides by B only")
    assert_wrong(ex.check_token_kd_loss(lambda s, t, m, temp: my_token_kd_loss(s, t, m, temp) / temp**2), "T²")
    assert_wrong(ex.check_token_kd_loss(multiply_mask), "huge logits")


def test_effective_alpha():
    assert_right(ex.check_effective_alpha(lambda a, c: c * a / (1 - a + c * a)))
    assert_wrong(ex.check_effective_alpha(lambda a, c: c * a), "C·alpha")
    assert_wrong(ex.check_effective_alpha(lambda a, c: a / c), "wrong direction")


def test_effective_alpha_really_matches_the_gradient_direction():
    # the buggy loss at alpha' has a gradient parallel to the correct loss at alpha
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10), torch.randint(0, 10, (8,))
    alpha, c = 0.5, 10
    a2 = c * alpha / (1 - alpha + c * alpha)
    (g1,) = torch.autograd.grad(distillation_loss(s, t, y, 2.0, alpha), s)
    buggy = a2 * kd_loss(s, t, 2.0) / c + (1 - a2) * F.cross_entropy(s, y)
    (g2,) = torch.autograd.grad(buggy, s)
    assert F.cosine_similarity(g1.flatten(), g2.flatten(), dim=0) > 1 - 1e-5


# --- 03 ---------------------------------------------------------------------------------------------


def my_distillation_loss(s, t, y, temperature, alpha):
    return alpha * my_kd_loss(s, t, temperature) + (1 - alpha) * F.cross_entropy(s, y)


def test_distillation_loss():
    assert_right(ex.check_distillation_loss(my_distillation_loss))
    assert_wrong(ex.check_distillation_loss(lambda s, t, y, T, a: my_distillation_loss(s, t, y, T, 1 - a)),
                 "alpha weights the wrong term")
    assert_wrong(ex.check_distillation_loss(
        lambda s, t, y, T, a: a * my_kd_loss(s, t, T) + (1 - a) * F.cross_entropy(s / T, y)), "T = 1")
    assert_wrong(ex.check_distillation_loss(
        lambda s, t, y, T, a: a * my_kd_loss(s, t, T) / T**2 + (1 - a) * F.cross_entropy(s, y)), "T²")


def test_validation_split():
    y = load_digits_split()[1].numpy()  # y_train
    rows = np.arange(len(y))
    fit, val = train_test_split(rows, test_size=0.2, stratify=y, random_state=0)
    assert_right(ex.check_validation_split(y, fit, val))
    assert_right(ex.check_validation_split(torch.as_tensor(y), fit.tolist(), val.tolist()))
    by_class = np.argsort(y, kind="stable")  # the last 20 % of rows sorted by class: not stratified
    cut = int(0.8 * len(y))
    assert_wrong(ex.check_validation_split(y, by_class[:cut], by_class[cut:]), "stratify")
    assert_wrong(ex.check_validation_split(y, fit, np.concatenate([val, fit[:5]])), "in both parts")
    assert_wrong(ex.check_validation_split(y, fit[10:], val), "neither part")
    assert_wrong(ex.check_validation_split(y, fit, np.append(val, len(y) + 3)), "test set")


# --- 04 ---------------------------------------------------------------------------------------------


def test_tokenize_prediction():
    assert_right(ex.check_tokenize_prediction("unfilmable", ["un", "##film", "##able"]))
    assert_right(ex.check_tokenize_prediction("the 2nd sequel 🎬", ["the", "2nd", "sequel", "[UNK]"]))
    assert_wrong(ex.check_tokenize_prediction("unfilmable", ["un", "film", "able"]), "##")
    assert_wrong(ex.check_tokenize_prediction("Tarantino", ["Tara", "##ntino"]), "uncased")
    assert_wrong(ex.check_tokenize_prediction("the 2nd sequel 🎬", ["the", "2nd", "sequel", "🎬"]), "[UNK]")


def bert_params(V, P, S, H, L, F):
    embeddings = (V + P + S) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H
    return embeddings + L * layer + H * H + H


def test_bert_param_formula_against_a_real_model():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, max_position_embeddings=16, type_vocab_size=3, hidden_size=8,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=20)
    assert bert_params(100, 16, 3, 8, 2, 20) == sum(p.numel() for p in BertModel(cfg).parameters())
    assert_right(ex.check_bert_param_formula(bert_params))


def test_bert_param_formula_mistakes():
    def no_pooler(V, P, S, H, L, F):
        return bert_params(V, P, S, H, L, F) - (H * H + H)

    def no_layernorm(V, P, S, H, L, F):
        return bert_params(V, P, S, H, L, F) - 2 * H * (1 + 2 * L)

    def no_token_types(V, P, S, H, L, F):
        return bert_params(V, P, S, H, L, F) - S * H

    assert_wrong(ex.check_bert_param_formula(no_pooler), "pooler")
    assert_wrong(ex.check_bert_param_formula(no_layernorm), "LayerNorm")
    assert_wrong(ex.check_bert_param_formula(no_token_types), "token-type")
    assert_wrong(ex.check_bert_param_formula(lambda *cfg: "many"), "tensor or a number")


def test_bert_base_counts():
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    with torch.device("meta"):
        total = sum(p.numel() for p in BertModel(BertConfig()).parameters())
        d6 = sum(p.numel() for p in DistilBertModel(DistilBertConfig()).parameters())
        emb = sum(p.numel() for n, p in BertModel(BertConfig()).named_parameters() if n.startswith("embeddings."))
    assert total == bert_params(30522, 512, 2, 768, 12, 3072)
    assert_right(ex.check_bert_base_counts(total, emb / total, d6))
    assert_wrong(ex.check_bert_base_counts(total, 100 * emb / total, d6), "fraction")
    assert_wrong(ex.check_bert_base_counts(total, emb / total, d6 + 768 * 768 + 768), "pooler")
    assert_wrong(ex.check_bert_base_counts(total - 768 * 768 - 768, emb / total, d6), "without the pooler")


def pad_share(lengths, batch_size):
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    slots = sum(len(b) * max(b) for b in batches)
    return (slots - sum(lengths)) / slots


def test_pad_share():
    assert_right(ex.check_pad_share(pad_share))
    assert_wrong(ex.check_pad_share(lambda lengths, b: 1 - sum(lengths) / (len(lengths) * max(lengths))),
                 "longest of the whole set")
    assert_wrong(ex.check_pad_share(lambda lengths, b: 1 - pad_share(lengths, b)), "share of real tokens")

    def over_real(lengths, batch_size):
        share = pad_share(lengths, batch_size)
        return share / (1 - share)  # pads / real

    assert_wrong(ex.check_pad_share(over_real), "not by the real tokens")


def fit_temperature(logits, labels):
    grid = torch.arange(0.5, 5.0, 0.01)
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return grid[nll.argmin()].item()


def test_temperature_scaling():
    assert_right(ex.check_temperature_scaling(fit_temperature))
    assert_wrong(ex.check_temperature_scaling(lambda z, y: 1 / fit_temperature(z, y)), "multiply")

    def by_accuracy(logits, labels):
        grid = torch.arange(1.0, 5.0, 0.5)  # every T has the same accuracy: argmax picks the first
        return grid[torch.stack([(logits / t).argmax(-1).eq(labels).float().mean() for t in grid]).argmax()].item()

    assert_wrong(ex.check_temperature_scaling(by_accuracy), "log-likelihood", "not the accuracy")
    assert_wrong(ex.check_temperature_scaling(lambda z, y: 1.0), "grid")


# --- 05 ---------------------------------------------------------------------------------------------


def test_pair_difference_layer():
    assert_right(ex.check_pair_difference_layer(0))
    assert_wrong(ex.check_pair_difference_layer(1), "hidden_states[0]")
    assert_wrong(ex.check_pair_difference_layer(3), "token type 1")


def test_fold_token_types():
    assert_right(ex.check_fold_token_types(lambda pos, types: pos + types[0]))
    assert_wrong(ex.check_fold_token_types(lambda pos, types: pos + types[1]), "token type 1")
    assert_wrong(ex.check_fold_token_types(lambda pos, types: pos), "nothing was folded")
    assert_wrong(ex.check_fold_token_types(lambda pos, types: torch.cat([pos, types])), "shape")


# --- 06 ---------------------------------------------------------------------------------------------


def test_projection_count():
    per = 256 * 384 + 384
    assert_right(ex.check_projection_count(4, 4 * per))
    assert_wrong(ex.check_projection_count(3, 3 * per), "embedding")
    assert_wrong(ex.check_projection_count(4, 4 * 256 * 384), "bias")
    assert_wrong(ex.check_projection_count(4, per), "multiply")


def cosine_loss(hs, ht, mask):
    keep = mask.bool()
    return (1 - F.cosine_similarity(hs[keep], ht[keep], dim=-1)).mean()


def test_cosine_hidden_loss():
    assert_right(ex.check_cosine_hidden_loss(cosine_loss))
    assert_wrong(ex.check_cosine_hidden_loss(lambda hs, ht, m: (1 - F.cosine_similarity(hs, ht, dim=-1)).mean()),
                 "padding is not masked")
    assert_wrong(ex.check_cosine_hidden_loss(lambda hs, ht, m: (1 - (hs * ht).sum(-1))[m.bool()].mean()),
                 "unnormalised")
    assert_wrong(ex.check_cosine_hidden_loss(lambda hs, ht, m: F.cosine_similarity(hs, ht, dim=-1)[m.bool()].mean()),
                 "1 - cos")


def my_layer_map(n_student, n_teacher, strategy):
    if strategy == "uniform":
        return [i * n_teacher // n_student for i in range(1, n_student + 1)]
    return list(range(n_teacher - n_student + 1, n_teacher + 1))


def test_layer_map():
    assert_right(ex.check_layer_map(my_layer_map))
    assert_wrong(ex.check_layer_map(lambda s, t, k: [j - 1 for j in my_layer_map(s, t, k)]), "off by one",
                 "hidden_states[0]")
    assert_wrong(ex.check_layer_map(
        lambda s, t, k: [(i - 1) * t // s for i in range(1, s + 1)] if k == "uniform" else my_layer_map(s, t, k)),
        "last layer")
    assert_wrong(ex.check_layer_map(lambda s, t, k: "2, 4, 6"), "list of ints")


# --- 07 ---------------------------------------------------------------------------------------------


def my_ece(logits, labels, n_bins):
    conf, pred = torch.softmax(logits, -1).max(-1)
    correct = pred.eq(labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.double().mean() * (correct[sel].mean() - conf[sel].mean()).abs()
    return total


def test_ece():
    assert_right(ex.check_ece(my_ece))

    def unweighted(logits, labels, n_bins):
        conf, pred = torch.softmax(logits, -1).max(-1)
        correct = pred.eq(labels).double()
        edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
        gaps = [(correct[s].mean() - conf[s].mean()).abs() for lo, hi in itertools.pairwise(edges)
                if (s := (conf > lo) & (conf <= hi)).any()]
        return sum(gaps) / len(gaps)

    assert_wrong(ex.check_ece(unweighted), "n_b / N")
    assert_wrong(ex.check_ece(lambda z, y, n: my_ece(z, y, 1)), "one bin")


def csr_bytes(w):
    nnz, rows = int((w != 0).sum()), w.shape[0]
    return 4 * nnz + 8 * nnz + 8 * (rows + 1)


def test_csr_bytes():
    assert_right(ex.check_csr_bytes(csr_bytes))
    assert_wrong(ex.check_csr_bytes(lambda w: 4 * int((w != 0).sum())), "only the values")
    assert_wrong(ex.check_csr_bytes(lambda w: 8 * int((w != 0).sum()) + 4 * (w.shape[0] + 1)), "int64")


def test_csr_break_even():
    assert_right(ex.check_csr_break_even(2 / 3))
    assert_wrong(ex.check_csr_break_even(0.5), "int32")
    assert_wrong(ex.check_csr_break_even(66.7), "fraction")
    assert_wrong(ex.check_csr_break_even(1 / 3), "density")


# --- 08 ---------------------------------------------------------------------------------------------


def qr_compress(w, b, s):
    _, r = torch.linalg.qr(torch.cat([w, b[:, None]], dim=1), mode="reduced")
    return torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1) @ r.T


def test_qr_index():
    assert_right(ex.check_qr_index(qr_compress))
    assert_wrong(ex.check_qr_index(lambda w, b, s: s @ torch.linalg.qr(w, mode="reduced")[1].T), "without the bias")

    def complete(w, b, s):
        _, r = torch.linalg.qr(torch.cat([w, b[:, None]], dim=1), mode="complete")
        return torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1) @ r.T

    assert_wrong(ex.check_qr_index(complete), "thin QR")
    assert_wrong(ex.check_qr_index(lambda w, b, s: s), "R [s; 1]")


# --- 09 ---------------------------------------------------------------------------------------------


def next_token_labels(ids, mask):
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return labels


def test_next_token_labels():
    assert_right(ex.check_next_token_labels(next_token_labels))
    assert_wrong(ex.check_next_token_labels(lambda ids, mask: ids.masked_fill(mask == 0, -100)), "no shift")

    def backwards(ids, mask):
        labels = torch.full_like(ids, -100)
        labels[:, 1:] = ids[:, :-1]
        return labels.masked_fill(mask == 0, -100)

    def pad_targets(ids, mask):
        labels = torch.full_like(ids, -100)
        labels[:, :-1] = ids[:, 1:]
        return labels

    assert_wrong(ex.check_next_token_labels(backwards), "wrong way")
    assert_wrong(ex.check_next_token_labels(pad_targets), "-100")


def test_next_token_labels_agree_with_lmblocks():
    from kd_lib.lm import LMBlocks

    class Tok:  # a whitespace tokenizer with ids, enough for LMBlocks
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, texts):
            return {"input_ids": [[int(w) for w in t.split()] for t in texts]}

    blocks = LMBlocks(["5 6 7 8", "9 10"], Tok(), block_size=8)
    batch = blocks.collate([blocks[0], blocks[1]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # LMBlocks keeps the end-of-text token as an input, so its labels are ours on the same ids
    assert torch.equal(next_token_labels(ids, mask), batch["labels"])


# --- 10 ---------------------------------------------------------------------------------------------


def test_mixture_flip_temperature():
    z = torch.tensor([[[8.0, 0.0]], [[0.0, 2.0]], [[0.0, 2.0]]], dtype=torch.float64)
    lo, hi = 1.0, 4.0
    for _ in range(50):
        mid = (lo + hi) / 2
        p0 = torch.softmax(z / mid, -1).mean(0)[0, 0]
        lo, hi = (mid, hi) if p0 < 0.5 else (lo, mid)
    assert_right(ex.check_mixture_flip_temperature(round(lo, 2)))
    assert_wrong(ex.check_mixture_flip_temperature(lo - 0.5), "still class 1")
    assert_wrong(ex.check_mixture_flip_temperature(lo + 0.5), "already class 0")


# --- 11 ---------------------------------------------------------------------------------------------


def largest_batch(params, layers, hidden, heads):
    from kd_lib.trainer import training_memory_gb

    batch = 1
    while training_memory_gb(params, layers=layers, hidden=hidden, heads=heads, batch=batch + 1,
                             seq_len=512)["total"] <= 24:
        batch += 1
    return batch


def test_largest_batch():
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        base = sum(p.numel() for p in BertForSequenceClassification(BertConfig(num_labels=3)).parameters())
    b, lg = largest_batch(base, 12, 768, 12), largest_batch(335_000_000, 24, 1024, 16)
    assert_right(ex.check_largest_batch(b, lg))
    assert_wrong(ex.check_largest_batch(b + 1, lg), "one too many")
    assert_wrong(ex.check_largest_batch(b, lg // 2), "float32")


def accumulate(model, loss_fn, x, y, k):
    model.zero_grad()
    for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
        (loss_fn(model(xs), ys) / k).backward()


def test_grad_accumulation():
    assert_right(ex.check_grad_accumulation(accumulate))

    def no_division(model, loss_fn, x, y, k):
        for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
            loss_fn(model(xs), ys).backward()

    def zero_inside(model, loss_fn, x, y, k):
        for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
            model.zero_grad()
            (loss_fn(model(xs), ys) / k).backward()

    def steps(model, loss_fn, x, y, k):
        accumulate(model, loss_fn, x, y, k)
        torch.optim.SGD(model.parameters(), lr=0.1).step()

    assert_wrong(ex.check_grad_accumulation(no_division), "divide each micro-batch's loss by k")
    assert_wrong(ex.check_grad_accumulation(zero_inside), "zero the gradients once")
    assert_wrong(ex.check_grad_accumulation(steps), "do not step")
    assert_wrong(ex.check_grad_accumulation(lambda *a: None), "no gradients")


def _log_probs(s, t):
    return F.log_softmax(s, -1), F.log_softmax(t, -1)


def test_reverse_kl():
    def reverse(s, t, mask):
        log_q, log_p = _log_probs(s, t)
        return (log_q.exp() * (log_q - log_p)).sum(-1)[mask].mean()

    def forward(s, t, mask):
        log_q, log_p = _log_probs(s, t)
        return (log_p.exp() * (log_p - log_q)).sum(-1)[mask].mean()

    def unmasked(s, t, mask):
        log_q, log_p = _log_probs(s, t)
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean()

    def batchmean(s, t, mask):  # masked, but summed over positions and divided by B
        log_q, log_p = _log_probs(s, t)
        return F.kl_div(log_p[mask], log_q[mask], reduction="sum", log_target=True) / s.shape[0]

    assert_right(ex.check_reverse_kl(reverse))
    assert_right(ex.check_reverse_kl(lambda s, t, mask: F.kl_div(  # kl_div(input, target) = KL(target || input)
        F.log_softmax(t[mask], -1), F.log_softmax(s[mask], -1), reduction="batchmean", log_target=True)))
    assert_wrong(ex.check_reverse_kl(forward), "forward KL")
    assert_wrong(ex.check_reverse_kl(unmasked), "padded positions")
    assert_wrong(ex.check_reverse_kl(batchmean), "number of masked positions")


def test_topk_bytes():
    def right(k, vocab):
        return k * ((1 if vocab <= 256 else 2 if vocab <= 65_536 else 4) + 2) + 4

    assert_right(ex.check_topk_bytes(right))
    assert_wrong(ex.check_topk_bytes(lambda k, vocab: right(k, vocab) - 4), "4 bytes")
    assert_wrong(ex.check_topk_bytes(lambda k, vocab: 6 * k + 4), "16-bit")
    def strict(k, vocab):  # < instead of <=: 256 and 65,536 ids do fit
        return k * ((1 if vocab < 256 else 2 if vocab < 65_536 else 4) + 2) + 4

    def loose(k, vocab):  # one id too many in 8 / 16 bits
        return k * ((1 if vocab <= 257 else 2 if vocab <= 65_537 else 4) + 2) + 4

    assert_wrong(ex.check_topk_bytes(strict), "still fit")
    assert_wrong(ex.check_topk_bytes(loose), "do not fit")
    assert_wrong(ex.check_topk_bytes(lambda k, vocab: 2.5), "whole number")


def test_truncate_topk():
    def right(logp, log_rest, k):
        return logp[..., :k], torch.logaddexp(log_rest, torch.logsumexp(logp[..., k:], -1))

    assert_right(ex.check_truncate_topk(right))
    assert_wrong(ex.check_truncate_topk(lambda logp, log_rest, k: (logp[..., :k], torch.log1p(
        -logp[..., :k].exp().sum(-1)))), "log space")
    assert_wrong(ex.check_truncate_topk(lambda logp, log_rest, k: (logp[..., :k], log_rest)), "old log_rest")
    assert_wrong(ex.check_truncate_topk(lambda logp, log_rest, k: (logp[..., -k:], right(logp, log_rest, k)[1])),
                 "first k columns")
    assert_wrong(ex.check_truncate_topk(lambda logp, log_rest, k: logp), "pair")


def test_student_log_rest():
    def right(logits, ids):
        return torch.logsumexp(logits.scatter(-1, ids, -math.inf), -1) - torch.logsumexp(logits, -1)

    assert_right(ex.check_student_log_rest(right))
    assert_wrong(ex.check_student_log_rest(lambda logits, ids: torch.log1p(
        -F.softmax(logits, -1).gather(-1, ids).sum(-1))), "cancels")
    assert_wrong(ex.check_student_log_rest(lambda logits, ids: torch.logsumexp(
        logits.gather(-1, ids), -1) - torch.logsumexp(logits, -1)), "on* the ids")


def test_completion_labels():
    def right(prompts, completions, eos):
        after = ((completions == eos).long().cumsum(1) - (completions == eos).long()) > 0
        ids = torch.cat([prompts, completions.masked_fill(after, -100)], 1)
        labels = torch.full_like(ids, -100)
        labels[:, prompts.shape[1] - 1:-1] = ids[:, prompts.shape[1]:]
        return labels

    def unshifted(prompts, completions, eos):
        labels = right(prompts, completions, eos)
        return torch.cat([torch.full_like(labels[:, :1], -100), labels[:, :-1]], 1)

    def eos_dropped(prompts, completions, eos):
        return right(prompts, completions.masked_fill((completions == eos).long().cumsum(1) > 0, -100), eos)

    def no_stop(prompts, completions, eos):
        return right(prompts, completions, -1)

    def prompt_too(prompts, completions, eos):
        ids = torch.cat([prompts, completions], 1)
        return torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)

    assert_right(ex.check_completion_labels(right))
    assert_wrong(ex.check_completion_labels(unshifted), "unshifted")
    assert_wrong(ex.check_completion_labels(eos_dropped), "target too")
    assert_wrong(ex.check_completion_labels(no_stop), "padding")
    assert_wrong(ex.check_completion_labels(prompt_too), "prompt is given")


def test_generation_tokens():
    assert_right(ex.check_generation_tokens(lambda b, p, g: b * (p + g - 1)))
    assert_wrong(ex.check_generation_tokens(lambda b, p, g: b * (p + g)), "never fed back")
    assert_wrong(ex.check_generation_tokens(lambda b, p, g: b * sum(p + i for i in range(g))), "without a cache")
    assert_wrong(ex.check_generation_tokens(lambda b, p, g: b * g), "prompt is read once")
    assert_wrong(ex.check_generation_tokens(lambda b, p, g: 0.5), "whole number")


def test_position_mean():
    def right(values, mask, p):
        return (values.sum(0) / mask.sum(0).clamp_min(1))[p - 1:-1]

    assert_right(ex.check_position_mean(right))
    assert_wrong(ex.check_position_mean(lambda v, m, p: (v.sum(0) / v.shape[0])[p - 1:-1]), "batch size")
    assert_wrong(ex.check_position_mean(lambda v, m, p: (v.sum(0) / m.sum(0).clamp_min(1))[p:]), "off by one")
    assert_wrong(ex.check_position_mean(lambda v, m, p: v.mean(0)[p - 1:-1] * 2), "expected")


def test_bits_per_byte():
    assert_right(ex.check_bits_per_byte(lambda ppl, n, b: n * math.log2(ppl) / b))
    assert_wrong(ex.check_bits_per_byte(lambda ppl, n, b: n * math.log(ppl) / b), "nats per byte")
    assert_wrong(ex.check_bits_per_byte(lambda ppl, n, b: math.log2(ppl)), "bits per token")
    assert_wrong(ex.check_bits_per_byte(lambda ppl, n, b: b * math.log2(ppl) / n), "bytes / tokens")
    assert_wrong(ex.check_bits_per_byte(lambda ppl, n, b: n * math.log10(ppl) / b), "base 10")
    assert_wrong(ex.check_bits_per_byte(lambda ppl, n, b: 1.0), "expected")


def test_aligned_pairs():
    def starts(sizes):
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def right(student, teacher):
        t_starts = starts(teacher)
        return [(t, t_starts.index(b)) for t, b in enumerate(starts(student)) if b in t_starts]

    def ends(student, teacher):
        t_ends = [sum(teacher[:i + 1]) for i in range(len(teacher))]
        return [(t, t_ends.index(sum(student[:t + 1]))) for t in range(len(student)) if sum(student[:t + 1]) in t_ends]

    assert_right(ex.check_aligned_pairs(right))
    assert right([1, 3, 2, 3, 1, 4, 1, 5, 4], [4, 5, 1, 4, 6, 4]) == [(0, 0), (2, 1), (4, 2), (5, 3), (6, 4), (8, 5)]
    assert_wrong(ex.check_aligned_pairs(ends), "end")
    assert_wrong(ex.check_aligned_pairs(lambda s, t: [(i, i) for i in range(min(len(s), len(t)))]), "byte offset")
    assert_wrong(ex.check_aligned_pairs(lambda s, t: [(0, 0)]), "expected")
    assert_wrong(ex.check_aligned_pairs(lambda s, t: 3), "pairs")


def test_uld_distance():
    def padded(x, size, descending=True):
        return F.pad(x.sort(descending=descending).values, (0, size - len(x)))

    def right(p, q):
        size = max(len(p), len(q))
        return (padded(p, size) - padded(q, size)).abs().sum()

    def pads_p_only(p, q):
        return (padded(p, len(p)) - padded(q, len(p))).abs().sum()

    def unsorted(p, q):
        size = max(len(p), len(q))
        return (F.pad(p, (0, size - len(p))) - F.pad(q, (0, size - len(q)))).abs().sum()

    def ascending(p, q):
        size = max(len(p), len(q))
        return (padded(p, size, False) - padded(q, size, False)).abs().sum()

    def truncated(p, q):
        size = min(len(p), len(q))
        return (p.sort(descending=True).values[:size] - q.sort(descending=True).values[:size]).abs().sum()

    def signed(p, q):
        size = max(len(p), len(q))
        return (padded(p, size) - padded(q, size)).sum()

    assert_right(ex.check_uld_distance(right))
    assert_wrong(ex.check_uld_distance(pads_p_only), "shorter")
    assert_wrong(ex.check_uld_distance(unsorted), "sort both")
    assert_wrong(ex.check_uld_distance(ascending), "decreasing")
    assert_wrong(ex.check_uld_distance(truncated), "pad the shorter")
    assert_wrong(ex.check_uld_distance(signed), "absolute")
    assert_wrong(ex.check_uld_distance(lambda p, q: 0.3), "expected")


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ex.check_grad_accumulation(accumulate)
    ex.check_pair_difference_layer(0)
    ex.check_projection_count(4, 4)
    assert torch.equal(torch.rand(3), expected)


# --- the solution notebooks -------------------------------------------------------------------------

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS_DIR / "solutions").glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _code(path: Path) -> list[dict]:
    return [c for c in _cells(path) if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_every_course_notebook_has_a_solution_notebook():
    assert len(COURSE) >= 11
    assert [p.name for p in SOLUTIONS] == [f"{p.name[:2]}_solutions.ipynb" for p in COURSE]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_is_titled_executed_in_order_and_clean(path):
    cells = _cells(path)
    course = next(p for p in COURSE if p.name[:2] == path.name[:2])
    course_title = "".join(_cells(course)[0]["source"]).splitlines()[0].split(" · ", 1)[1]
    assert "".join(cells[0]["source"]).startswith(f"# {path.name[:2]} · Solutions: {course_title}")
    code = _code(path)
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one go"
    for i, cell in enumerate(code):
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"{path.name} cell {i}: stored error"
            assert out.get("name") != "stderr", f"{path.name} cell {i}: stderr {''.join(out['text'])[:200]!r}"
    checks = [c for c in code if "check_" in "".join(c["source"])]
    assert checks and all(".ok" in "".join(c["source"]) for c in checks if "result = check_" in "".join(c["source"]))
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in code)
    assert path.stat().st_size < 200_000


def test_every_check_is_used_in_a_solution_notebook():
    text = "\n".join("".join(c["source"]) for p in SOLUTIONS for c in _code(p))
    unused = [n for n in ex.__all__ if n.startswith("check_") and f"{n}(" not in text]
    assert not unused, f"checks no solution notebook calls: {unused}"


def _good_step(teacher, student, optimizer, x, y, T, alpha):
    teacher.eval()
    with torch.no_grad():
        t_logits = teacher(x)
    loss = distillation_loss(student(x), t_logits, y, T, alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step(*, teacher_eval=True, no_grad=True, call_student=True, swap=False, zero_grad=True, update=True):
    """A train_step with one of the snippet's bugs switched on."""

    def step(teacher, student, optimizer, x, y, T, alpha):
        if teacher_eval:
            teacher.eval()
        with torch.set_grad_enabled(not no_grad):
            t_logits = teacher(x)
        s_logits = student(x) if call_student else t_logits
        loss = distillation_loss(t_logits, s_logits, y, T, alpha) if swap else distillation_loss(
            s_logits, t_logits, y, T, alpha)
        if update:
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss

    return step


def test_fixed_snippet():
    def make_opt(student):
        return torch.optim.AdamW(student.parameters(), lr=1e-3)

    assert_right(ex.check_fixed_snippet(make_opt, _good_step))
    assert_right(ex.check_fixed_snippet(make_opt, _step()))
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(teacher_eval=False)), "eval()")
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(no_grad=False)), "no_grad")
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(call_student=False, update=False)), "never called")
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(swap=True, update=False)), "swapped")
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(zero_grad=False)), "zero_grad")
    assert_wrong(ex.check_fixed_snippet(make_opt, _step(update=False)), "optimizer.step()")
    other = torch.nn.Linear(8, 3)
    assert_wrong(ex.check_fixed_snippet(lambda s: torch.optim.SGD(other.parameters(), lr=0.1), _good_step),
                 "student.parameters()")
    assert_wrong(ex.check_fixed_snippet(lambda s: s, _good_step), "not a torch.optim")
    with pytest.raises(TypeError, match="train_step"):
        ex.check_fixed_snippet(make_opt, 3)
