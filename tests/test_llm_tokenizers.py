"""kd_lib.llm_tokenizers: shared text pieces, byte-aligned positions, ULD and bits per byte across tokenizers."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from kd_lib.llm_losses import forward_kl
from kd_lib.llm_students import small_llama
from kd_lib.llm_tokenizers import (
    PieceTokens,
    aligned_positions,
    bits_per_byte,
    cross_tokenizer_targets,
    kd_across_tokenizers,
    realign,
    same_vocabulary,
    text_pieces,
    token_bytes,
    uld_loss,
)
from kd_lib.lm import train_bpe_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the old cat sleeps on the warm mat by the door.",
    "She walked along the river bank, thinking of the letter she had written and never sent to him.",
    "A single man in possession of a good fortune must be in want of a wife, or so the neighbours said.",
    "The café was quiet; a naïve young clerk read “Emma” — twice — and then went home in the rain.",
] * 2
PIECES = ["The lazy dog sleeps by the warm door.", "She read the letter twice and sent it to him.",
          "“Café” — naïve", "A good man must be in want of a fortune, or so they said."]
ASCII_ROWS = (0, 1, 3)
V_S, V_T = 300, 400  # the student's and the teacher's vocabularies
K = 8


@pytest.fixture(scope="module")
def toks():
    """(student tokenizer, teacher tokenizer): two different byte-level BPEs trained on the same text."""
    return train_bpe_tokenizer(TEXTS, V_S), train_bpe_tokenizer(TEXTS, V_T)


def llama(vocab: int, seed: int, **kwargs):
    """A one-layer Llama left in train mode with attention dropout, so a forward pass not in eval mode is random."""
    model = small_llama(vocab, layers=1, width=16, heads=2, kv_heads=1, seed=seed, **kwargs)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    return model.train()


@torch.no_grad()
def eval_logits(model, ids: list[int]) -> torch.Tensor:
    """``[L, V]`` float64 logits of one row run alone, in eval mode (the model is put back in train mode)."""
    model.eval()
    try:
        return model(input_ids=torch.tensor([ids])).logits[0].double()
    finally:
        model.train()


@pytest.fixture(scope="module")
def setup(toks):
    s_tok, t_tok = toks
    student_data, teacher_data = PieceTokens(PIECES, s_tok), PieceTokens(PIECES, t_tok)
    alignment = aligned_positions(student_data, teacher_data)
    teacher = llama(V_T, seed=0)
    targets = cross_tokenizer_targets(teacher, teacher_data, alignment, K, vocab_limit=V_S, batch_size=3)
    return SimpleNamespace(s_tok=s_tok, t_tok=t_tok, student_data=student_data, teacher_data=teacher_data,
                           alignment=alignment, teacher=teacher, targets=targets)


def sorted_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` logits -> float64 probabilities sorted in decreasing order."""
    return F.softmax(logits.double(), -1).sort(-1, descending=True).values


def uld_by_hand(student_logits, teacher_logits, mask) -> torch.Tensor:
    """Boizard et al.'s ULD: both full distributions sorted, the shorter zero-padded, L1, mean over the mask."""
    q, p = sorted_probs(student_logits[mask]), sorted_probs(teacher_logits[mask])
    width = max(q.shape[-1], p.shape[-1])
    q, p = F.pad(q, (0, width - q.shape[-1])), F.pad(p, (0, width - p.shape[-1]))
    return (q - p).abs().sum(-1).mean()


def truncated_uld_by_hand(student_rows, p_top, p_rest) -> torch.Tensor:
    """``sum_{i<=k} |q_(i) - p_(i)| + |q_rest - p_rest|`` per row (student probabilities zero-padded to k), mean."""
    k = p_top.shape[-1]
    q = sorted_probs(student_rows)
    q = F.pad(q, (0, max(0, k - q.shape[-1])))
    return ((q[:, :k] - p_top.double()).abs().sum(-1) + (q[:, k:].sum(-1) - p_rest.double()).abs()).mean()


def not_byte_level_tokenizer(vocab: dict[str, int], wordpiece: bool = False):
    model = models.WordPiece(vocab, unk_token="[UNK]") if wordpiece else models.WordLevel(vocab, unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[SEP]")


# --- text_pieces ------------------------------------------------------------------------------------------------


def test_text_pieces_cut_greedily_at_whitespace_and_never_across_texts():
    text = "The cat sat on the mat and the dog lay by the door."
    assert text_pieces([text, "  Short\n one. "], chars=20) == [
        "The cat sat on the", "mat and the dog lay", "by the door.", "Short one."]
    assert text_pieces([text, "  Short\n one. "], chars=22) == [  # exactly 22 characters fit
        "The cat sat on the mat", "and the dog lay by the", "door.", "Short one."]


@pytest.mark.parametrize("chars", [20, 37, 400])
def test_text_pieces_are_short_stripped_and_join_back_to_the_text(chars):
    texts = [" \n".join(TEXTS), "  Leading   and\ttrailing\n\nwhitespace   everywhere  ", "  "]
    pieces = text_pieces(texts, chars=chars)
    assert pieces and all(0 < len(p) <= chars and p == p.strip() and "  " not in p for p in pieces)
    assert " ".join(pieces) == " ".join(" ".join(t.split()) for t in texts if t.strip())
    words = [w for t in texts for w in t.split()]
    assert [w for p in pieces for w in p.split(" ")] == words  # every cut falls between two words


def test_a_run_longer_than_a_piece_is_cut_into_pieces_of_its_own_and_nothing_is_dropped():
    pieces = text_pieces(["a " + "x" * 45 + " b"], chars=20)
    assert pieces == ["a", "x" * 20, "x" * 20, "x" * 5 + " b"]
    assert "".join(p.replace(" ", "") for p in pieces) == "a" + "x" * 45 + "b"


@pytest.mark.parametrize(("texts", "chars", "message"), [
    (["some text"], 19, "chars must be an int >= 20"),
    (["some text"], 20.0, "chars must be an int >= 20"),
    ("a single string", 20, "not a single string"),
])
def test_text_pieces_refuse_bad_inputs(texts, chars, message):
    with pytest.raises(ValueError, match=message):
        text_pieces(texts, chars=chars)


# --- token_bytes and PieceTokens ------------------------------------------------------------------------------------

BYTE_OF = {symbol: byte for byte, symbol in bytes_to_unicode().items()}  # GPT-2's table, from transformers


def test_token_bytes_count_the_utf8_bytes_of_each_token_and_zero_for_specials(toks):
    for tok in toks:
        for piece in PIECES:
            ids = tok(piece, add_special_tokens=False)["input_ids"]
            raw = [bytes(BYTE_OF[ch] for ch in token) for token in tok.convert_ids_to_tokens(ids)]
            assert b"".join(raw) == piece.encode("utf-8")
            sizes = token_bytes(tok, [tok.eos_token_id, *ids, tok.pad_token_id])
            assert sizes == [0, *map(len, raw), 0] and sum(sizes) == len(piece.encode("utf-8"))
    assert len("“Café” — naïve".encode()) == 22 > len("“Café” — naïve")  # the non-ASCII piece has multi-byte chars


def test_piece_tokens_rows_are_eos_plus_tokens_and_byte_starts_count_the_bytes_before(toks):
    for tok in toks:
        data = PieceTokens(PIECES, tok, max_tokens=64)
        assert len(data) == len(PIECES) and data.block_size == 64 and data.pad_token_id == 1
        assert data.n_bytes == sum(len(p.encode("utf-8")) for p in PIECES)
        for row, piece in enumerate(PIECES):
            ids = tok(piece, add_special_tokens=False)["input_ids"]
            assert data.labels[row] == ids
            assert data.input_ids[row] == [tok.eos_token_id, *ids[:-1]] and tok.eos_token_id == 0
            raw = [bytes(BYTE_OF[ch] for ch in token) for token in tok.convert_ids_to_tokens(ids)]
            assert data.byte_starts[row] == [sum(len(r) for r in raw[:t]) for t in range(len(ids))]
            if row in ASCII_ROWS:  # decoding a prefix gives the same count
                assert data.byte_starts[row] == [
                    len(tok.decode(ids[:t], clean_up_tokenization_spaces=False).encode()) for t in range(len(ids))]
        batch = next(iter(data.loader(len(PIECES))))  # every token of every piece is a target
        assert (batch["labels"] != -100).sum().item() == sum(len(ids) for ids in data.labels)


def test_piece_tokens_refuse_long_pieces_and_empty_inputs(toks):
    tok = toks[0]
    n = len(tok(PIECES[0], add_special_tokens=False)["input_ids"])
    assert len(PieceTokens(PIECES[:1], tok, max_tokens=n).labels[0]) == n
    with pytest.raises(ValueError, match=f"a piece has {n} tokens > max_tokens={n - 1}"):
        PieceTokens(PIECES[:1], tok, max_tokens=n - 1)
    with pytest.raises(ValueError, match="pieces must be a non-empty sequence"):
        PieceTokens([], tok)
    with pytest.raises(ValueError, match="pieces must be a non-empty sequence"):
        PieceTokens("one string", tok)
    with pytest.raises(ValueError, match="do not cover its bytes exactly"):
        PieceTokens(["fine", ""], tok)


def test_a_tokenizer_that_is_not_byte_level_is_refused():
    tok = not_byte_level_tokenizer({"[UNK]": 0, "[PAD]": 1, "[SEP]": 2, "naïve": 3, "—": 4, "yes": 5})
    with pytest.raises(ValueError, match="not byte-level BPE"):
        token_bytes(tok, tok("naïve — yes", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="not byte-level BPE"):
        PieceTokens(["naïve — yes"], tok)


def test_an_ascii_wordpiece_tokenizer_is_not_taken_for_byte_level_bpe():
    # "a", "##b", "c", "d": 1 + 3 + 1 + 1 symbols = the 6 bytes of "ab c d" (the 2 extra '#' make up for the 2 spaces
    # the pre-tokenizer drops), so only a check of the tokenizer's kind tells it from a byte-level BPE.
    tok = not_byte_level_tokenizer({"[UNK]": 0, "[PAD]": 1, "[SEP]": 2, "a": 3, "##b": 4, "c": 5, "d": 6},
                                   wordpiece=True)
    assert tok("ab c d", add_special_tokens=False)["input_ids"] == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="not byte-level BPE"):  # else byte_starts [0, 1, 4, 5]; true: [0, 1, 3, 5]
        PieceTokens(["ab c d"], tok)


# --- aligned_positions ----------------------------------------------------------------------------------------------


def test_aligned_positions_pair_equal_byte_starts_and_only_those(setup):
    s, t, alignment = setup.student_data, setup.teacher_data, setup.alignment
    assert alignment.shape == (len(PIECES), max(len(ids) for ids in s.labels)) and alignment.dtype == torch.long
    unaligned = 0
    for row in range(len(PIECES)):
        n = len(s.labels[row])
        assert (alignment[row, n:] == -1).all() and alignment[row, 0].item() == 0
        pairs = [(pos, u) for pos, u in enumerate(alignment[row, :n].tolist()) if u >= 0]
        assert all(s.byte_starts[row][pos] == t.byte_starts[row][u] for pos, u in pairs)
        assert len(pairs) == len(set(s.byte_starts[row]) & set(t.byte_starts[row]))
        unaligned += n - len(pairs)
        if row in ASCII_ROWS:  # both have read the same text before an aligned pair
            for pos, u in pairs:
                assert setup.s_tok.decode(s.labels[row][:pos]) == setup.t_tok.decode(t.labels[row][:u])
    assert unaligned > 0  # the two tokenizers really cut the pieces differently


def test_aligned_positions_with_one_tokenizer_are_the_identity_and_other_pieces_are_refused(setup):
    s = setup.student_data
    alignment = aligned_positions(s, s)
    for row, ids in enumerate(s.labels):
        assert alignment[row, : len(ids)].tolist() == list(range(len(ids)))
        assert (alignment[row, len(ids):] == -1).all()
    with pytest.raises(ValueError, match="must tokenise the same pieces; got 3 and 4 rows"):
        aligned_positions(PieceTokens(PIECES[:3], setup.s_tok), setup.teacher_data)


# --- same_vocabulary ------------------------------------------------------------------------------------------------


def test_same_vocabulary_needs_the_same_ids_not_the_same_size(toks):
    s_tok, t_tok = toks
    assert same_vocabulary(s_tok, s_tok) and same_vocabulary(t_tok, copy.deepcopy(t_tok))
    assert not same_vocabulary(s_tok, t_tok) and not same_vocabulary(t_tok, s_tok)
    other = train_bpe_tokenizer(["Completely different words: zebra, quartz, jigsaw, vortex, kayak."] * 3, V_S)
    assert len(other) == len(s_tok) and not same_vocabulary(s_tok, other)  # the vocabulary-size trap


# --- uld_loss -------------------------------------------------------------------------------------------------------


def logits(*shape, seed, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MASK = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])


@pytest.mark.parametrize("v_s", [7, 12, 19])  # smaller than, equal to and larger than the teacher's 12
def test_uld_with_the_whole_vocabulary_is_boizards_distance(v_s):
    t, s = logits(2, 5, 12, seed=0), logits(2, 5, v_s, seed=1)
    logp = F.log_softmax(t, -1).sort(-1, descending=True).values
    loss = uld_loss(s, logp, torch.full((2, 5), -math.inf), MASK)
    assert loss.item() == pytest.approx(uld_by_hand(s, t, MASK).item(), rel=1e-5)
    assert 0 < loss.item() < 2


@pytest.mark.parametrize("v_s", [7, 19])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_uld_from_the_top_k_compares_the_tails_by_their_totals(v_s, k):
    t, s = logits(2, 5, 12, seed=2), logits(2, 5, v_s, seed=3)
    p = F.softmax(t, -1).sort(-1, descending=True).values
    loss = uld_loss(s, p[..., :k].log(), p[..., k:].sum(-1).log(), MASK)
    assert loss.item() == pytest.approx(truncated_uld_by_hand(s[MASK], p[MASK][:, :k], p[MASK][:, k:].sum(-1)).item(),
                                        rel=1e-5)
    assert loss.item() <= uld_by_hand(s, t, MASK).item() + 1e-6


def test_uld_ignores_token_identities_but_kl_does_not():
    t = logits(2, 5, 12, seed=4, scale=4.0)
    s = t[..., torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    logp = F.log_softmax(t, -1).topk(5, -1).values
    log_rest = F.log_softmax(t, -1).topk(7, -1, largest=False).values.logsumexp(-1)
    assert uld_loss(s, logp, log_rest, MASK).item() < 1e-5
    assert forward_kl(s, t, MASK).item() > 1.0


def test_uld_gradients_reach_the_student_and_an_empty_mask_is_refused():
    t, s = logits(2, 5, 12, seed=5), logits(2, 5, 9, seed=6).requires_grad_()
    logp = F.log_softmax(t, -1).topk(4, -1).values
    log_rest = (1 - logp.exp().sum(-1)).log()
    uld_loss(s, logp, log_rest, MASK).backward()
    assert torch.isfinite(s.grad).all() and s.grad[MASK].abs().sum() > 0
    assert (s.grad[~MASK] == 0).all()  # positions outside the mask get no gradient
    with pytest.raises(ValueError, match="nothing to distil"):
        uld_loss(s, logp, log_rest, torch.zeros_like(MASK))


# --- cross_tokenizer_targets ----------------------------------------------------------------------------------------


def test_the_targets_are_the_teachers_top_k_at_the_aligned_positions(setup):
    targets, alignment = setup.targets, setup.alignment
    assert setup.teacher.training  # restored after the (eval) run
    assert torch.equal(targets.aligned, alignment >= 0)
    assert targets.cache.k == K and targets.cache.logp.shape == (*alignment.shape, K)
    assert targets.sliced.meta["vocab_limit"] == V_S
    for row in range(len(PIECES)):
        teacher_logits = eval_logits(setup.teacher, setup.teacher_data.input_ids[row])
        for cache, part in ((targets.cache, teacher_logits), (targets.sliced, teacher_logits[:, :V_S])):
            exact = F.log_softmax(part, -1).sort(-1, descending=True)
            for pos, u in enumerate(alignment[row].tolist()):
                if u < 0:
                    assert torch.isinf(cache.logp[row, pos]).all() and torch.isinf(cache.log_rest[row, pos])
                    continue
                assert cache.ids[row, pos].long().tolist() == exact.indices[u, :K].tolist()
                assert torch.allclose(cache.logp[row, pos].double(), exact.values[u, :K], rtol=1e-3, atol=0)  # fp16
                rest = exact.values[u, K:].logsumexp(-1)
                assert cache.log_rest[row, pos].item() == pytest.approx(rest.item(), rel=1e-5)
    assert (targets.sliced.ids < V_S).all() and (targets.cache.ids >= V_S).any()  # the slice cut real candidates


def test_targets_at_the_teachers_positions_realigned_equal_a_run_with_the_alignment(setup):
    own = cross_tokenizer_targets(setup.teacher, setup.teacher_data, k=K, vocab_limit=V_S)
    lengths = [len(row) for row in setup.teacher_data.labels]
    assert own.aligned.sum().item() == sum(lengths)  # every position of the teacher's own rows, no padding
    assert all(own.aligned[row, :n].all() and not own.aligned[row, n:].any() for row, n in enumerate(lengths))
    moved = realign(own, setup.alignment)
    assert torch.equal(moved.aligned, setup.targets.aligned)
    for a, b in ((moved.cache, setup.targets.cache), (moved.sliced, setup.targets.sliced)):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.logp, b.logp) and torch.equal(a.log_rest, b.log_rest)
    with pytest.raises(ValueError, match="same pieces"):
        realign(own, setup.alignment[:1])
    with pytest.raises(ValueError, match="points past the teacher's positions"):
        realign(own, torch.full_like(setup.alignment, own.aligned.shape[1]))


def test_the_targets_restore_eval_mode_and_refuse_a_bad_k(setup):
    setup.teacher.eval()
    try:
        targets = cross_tokenizer_targets(setup.teacher, setup.teacher_data, setup.alignment, 3)
        assert not setup.teacher.training and targets.sliced is None
        assert torch.equal(targets.cache.ids, setup.targets.cache.ids[..., :3])
    finally:
        setup.teacher.train()
    with pytest.raises(ValueError, match="k must be a positive int"):
        cross_tokenizer_targets(setup.teacher, setup.teacher_data, setup.alignment, 0)
    with pytest.raises(ValueError, match="larger than the teacher's vocabulary"):
        cross_tokenizer_targets(setup.teacher, setup.teacher_data, setup.alignment, 10**6)
    for limit in (0, 2, 3.0):
        with pytest.raises(ValueError, match=r"vocab_limit must be None or an int >= k \(3\)"):
            cross_tokenizer_targets(setup.teacher, setup.teacher_data, setup.alignment, 3, vocab_limit=limit)


# --- kd_across_tokenizers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "kl"}, "needs the same vocabulary"),
    ({"method": "mse"}, "method must be one of"),
    ({"alpha": 1.5}, "alpha must be a number in"),
    ({"alpha": True}, "alpha must be a number in"),
])
def test_kd_across_tokenizers_refuses_bad_settings(setup, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kd_across_tokenizers(setup.targets, **kwargs)


def student_batch(data, rows, vocab, seed):
    batch = data.collate([data[row] for row in rows])
    return batch, logits(*batch["input_ids"].shape, vocab, seed=seed).requires_grad_()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_uld_objective_is_alpha_uld_on_aligned_positions_plus_ce_on_all(setup, alpha):
    rows = [2, 0, 3]  # shuffled: the targets are looked up by batch["row"]
    batch, s = student_batch(setup.student_data, rows, V_S, seed=7)
    loss = kd_across_tokenizers(setup.targets, "uld", alpha)(SimpleNamespace(logits=s), batch)
    has_target = batch["labels"] != -100
    mask = setup.alignment[rows, : s.shape[1]] >= 0
    cache = setup.targets.cache
    p_top = cache.logp[rows, : s.shape[1]][mask].double().exp()
    p_rest = cache.log_rest[rows, : s.shape[1]][mask].double().exp()
    uld = truncated_uld_by_hand(s[mask], p_top, p_rest)
    ce = F.cross_entropy(s[has_target], batch["labels"][has_target])
    assert loss.item() == pytest.approx((alpha * uld + (1 - alpha) * ce).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def shared(setup):
    """(teacher, targets) for a teacher with the student's own tokenizer: identity alignment, top 5."""
    teacher, data = llama(V_S, seed=3), setup.student_data
    return teacher, cross_tokenizer_targets(teacher, data, aligned_positions(data, data), 5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_kl_objective_with_a_shared_vocabulary_is_the_renormalised_top_k_kl(setup, shared, alpha):
    (teacher, targets), data = shared, setup.student_data
    rows = [1, 3]
    batch, s = student_batch(data, rows, V_S, seed=8)
    loss = kd_across_tokenizers(targets, "kl", alpha, shared_vocabulary=True)(SimpleNamespace(logits=s), batch)
    has_target = batch["labels"] != -100
    kl = []
    for i, row in enumerate(rows):  # KL(renormalised teacher top 5 || student) at every target, teacher run alone
        n = len(data.labels[row])
        top = F.log_softmax(eval_logits(teacher, data.input_ids[row]), -1).topk(5, -1)
        p = top.values.exp() / top.values.exp().sum(-1, keepdim=True)
        log_q = F.log_softmax(s[i, :n], -1).gather(-1, top.indices)
        kl.append((p * (p.log() - log_q)).sum(-1))
    kl = torch.cat(kl).mean()
    ce = F.cross_entropy(s[has_target], batch["labels"][has_target])
    assert loss.item() == pytest.approx((alpha * kl + (1 - alpha) * ce).item(), rel=1e-3)  # fp16 cache
    if alpha == 0:
        assert loss.item() == pytest.approx(ce.item(), rel=1e-6)


# --- bits_per_byte --------------------------------------------------------------------------------------------------


def test_bits_per_byte_is_the_summed_token_loss_over_the_bytes(setup):
    model, data = llama(V_S, seed=4), setup.student_data
    nats = sum(F.cross_entropy(eval_logits(model, data.input_ids[row]), torch.tensor(data.labels[row]),
                               reduction="sum").item() for row in range(len(PIECES)))
    n_bytes = sum(len(p.encode("utf-8")) for p in PIECES)
    assert bits_per_byte(model, data, batch_size=3) == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)
    assert model.training  # restored


def test_a_uniform_model_costs_log2_v_bits_per_token(setup):
    model = small_llama(V_S, layers=1, width=16, heads=2, kv_heads=1, tie=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.eval()
    n_tokens = sum(len(setup.s_tok(p, add_special_tokens=False)["input_ids"]) for p in PIECES)
    n_bytes = sum(len(p.encode("utf-8")) for p in PIECES)
    assert bits_per_byte(model, setup.student_data) == pytest.approx(n_tokens * math.log2(V_S) / n_bytes, rel=1e-6)
    assert not model.training  # restored
