"""kd_lib.lm and the Austen data: tokenizer, next-token blocks, losses with padding, perplexity,
sampling, and DistilBERT's masked-LM objective -- checked against formulas written out here."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from kd_lib.data import AUSTEN_FILES, AUSTEN_NOVELS, DataFileError, austen_chapters, data_dir, load_austen
from kd_lib.distill import kd_online
from kd_lib.lm import (
    GPT2_SIZES,
    SPECIAL_TOKENS,
    GPT2Size,
    LMBlocks,
    distilbert_mlm_from_bert,
    distilbert_mlm_loss,
    make_gpt2,
    mlm_collator,
    perplexity,
    sample_text,
    train_bpe_tokenizer,
)
from kd_lib.losses import hidden_state_loss
from kd_lib.training import TrainSettings, ce_loss, fit

# --------------------------------------------------------------------------------------------
# The Austen data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def austen():
    return load_austen()


def test_austen_chapters_and_split(austen):
    assert {k: len(v) for k, v in austen.items()} == {"train": 244, "heldout": 25}
    novels = Counter(austen["train"]["novel"]) + Counter(austen["heldout"]["novel"])
    assert novels == {"pride_and_prejudice": 61, "emma": 55, "sense_and_sensibility": 50, "mansfield_park": 48,
                      "northanger_abbey": 31, "persuasion": 24}
    assert set(novels) == set(AUSTEN_NOVELS)
    assert all(c % 10 == 0 for c in austen["heldout"]["chapter"])
    assert not any(c % 10 == 0 for c in austen["train"]["chapter"])
    assert sorted([*austen["train"]["idx"], *austen["heldout"]["idx"]]) == list(range(269))
    first = austen["train"][0]
    assert (first["novel"], first["chapter"], first["idx"]) == ("emma", 1, 0)
    assert first["text"].startswith("Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy")
    pride = austen["train"][list(austen["train"]["novel"]).index("pride_and_prejudice")]
    assert pride["chapter"] == 1
    assert pride["text"].startswith("It is a truth universally acknowledged, that a single man in possession")
    # 3.64 M characters of training prose, 0.36 M held out
    assert sum(map(len, austen["train"]["text"])) == 3_642_868
    assert sum(map(len, austen["heldout"]["text"])) == 356_527


def test_austen_text_is_stripped(austen):
    for text in [*austen["train"]["text"], *austen["heldout"]["text"]]:
        assert "CHAPTER" not in text and "VOLUME" not in text and "Chapter " not in text[:20]
        assert "THE END" not in text and "FINIS" not in text and "A NOTE ON THE TEXT" not in text
        assert "_" not in text and "\n\n" not in text and "  " not in text
    novels = list(austen["train"]["novel"])
    northanger_last = austen["train"][len(novels) - 1 - novels[::-1].index("northanger_abbey")]["text"]
    assert northanger_last.endswith("*Vide a letter from Mr. Richardson, No. 97, Vol. II, Rambler.")


def test_austen_chapters_on_a_fixture():
    text = (
        "A NOVEL\n\nBy Someone\n\n\n\nVOLUME I\n\n\nCHAPTER I\n\n\nFirst line of\nthe first paragraph.\n\n"
        "Second _paragraph_.\n\n\n\nCHAPTER II\n\nOnly one.\n\n\n\nVOLUME II\n\nCHAPTER I\n\nThird\nchapter.\n\n"
        "THE END\n\nAn appendix.\n"
    )
    assert austen_chapters(text) == [
        "First line of the first paragraph.\nSecond paragraph.",
        "Only one.",
        "Third chapter.",
    ]
    with pytest.raises(ValueError, match="no chapter heading"):
        austen_chapters("Just prose.\n")


def test_austen_heldout_every_and_bad_values():
    halves = load_austen(heldout_every=2)
    assert len(halves["heldout"]) == sum(n // 2 for n in (55, 48, 31, 24, 61, 50))
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="heldout_every must be an int >= 2"):
            load_austen(heldout_every=bad)


def test_altered_austen_file_is_refused(tmp_path):
    for rel in AUSTEN_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir() / rel, tmp_path / rel)
    path = tmp_path / "austen" / "persuasion.txt"
    path.write_text(path.read_text().replace("Anne", "Anna", 1))
    with pytest.raises(DataFileError, match=r"persuasion\.txt does not match its recorded sha256"):
        load_austen(root=tmp_path)
    path.unlink()
    with pytest.raises(DataFileError, match=r"persuasion\.txt is missing"):
        load_austen(root=tmp_path)


# --------------------------------------------------------------------------------------------
# Tokenizer and next-token blocks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts(austen):
    return list(austen["train"]["text"][:3])


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_bpe_tokenizer(texts, vocab_size=400)


def test_tokenizer_vocabulary_specials_and_round_trip(tokenizer, texts):
    assert len(tokenizer) == 400
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS.values()] == [0, 1, 2]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 1, 2)
    for text in (texts[0][:500], "Naïve £5 — unseen characters fall back to bytes."):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # merges compress the prose: fewer tokens than characters
    assert len(tokenizer(texts[1])["input_ids"]) < 0.5 * len(texts[1])


def test_tokenizer_is_deterministic(tokenizer, texts):
    again = train_bpe_tokenizer(texts, vocab_size=400)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


@pytest.mark.parametrize("bad", [100, 259, 70000, 2.0, True])
def test_tokenizer_rejects_bad_vocab_size(texts, bad):
    with pytest.raises(ValueError, match="vocab_size must be an int in"):
        train_bpe_tokenizer(texts, vocab_size=bad)


def test_tokenizer_rejects_a_single_string():
    with pytest.raises(ValueError, match="non-empty sequence of strings"):
        train_bpe_tokenizer("one long string")


def test_blocks_are_the_token_stream_cut_and_shifted(tokenizer, texts):
    block = 50
    data = LMBlocks(texts, tokenizer, block_size=block)
    row = 0
    for text in texts:
        stream = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        n_blocks = math.ceil((len(stream) - 1) / block)  # blocks with at least one target
        inputs, targets = [], []
        for _ in range(n_blocks):
            inputs += data[row]["input_ids"]
            targets += data[row]["labels"]
            assert len(data[row]["input_ids"]) == len(data[row]["labels"]) <= block
            row += 1
        assert inputs == stream[: len(inputs)] and len(inputs) >= len(stream) - 1
        real = [t for t in targets if t != -100]
        assert real == stream[1:]  # every token after the first is predicted exactly once
    assert row == len(data)
    assert data.num_targets == sum(len(tokenizer(t)["input_ids"]) for t in texts)


def test_a_lone_end_of_text_token_makes_no_block(tokenizer):
    text = "Emma Woodhouse"
    ids = tokenizer(text)["input_ids"]
    n = len(ids)
    # block_size n: the n tokens fill one block; the end-of-text token alone would predict nothing
    cut = LMBlocks([text], tokenizer, block_size=n)
    assert len(cut) == 1 and cut[0] == {"input_ids": ids, "labels": [*ids[1:], tokenizer.eos_token_id], "row": 0}
    # block_size n + 1: the end-of-text token joins the block; it has no successor
    whole = LMBlocks([text], tokenizer, block_size=n + 1)
    assert len(whole) == 1 and whole[0]["labels"] == [*ids[1:], tokenizer.eos_token_id, -100]


def test_collate_pads_right_and_masks_padding(tokenizer):
    data = LMBlocks(["A short line.", "A somewhat longer line of prose than that."], tokenizer, block_size=64)
    batch = data.collate([data[0], data[1]])
    lengths = [len(data[0]["input_ids"]), len(data[1]["input_ids"])]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths[0]
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short - 1 :] == -100).all()  # the end-of-text token and the padding
    assert batch["row"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="block_size must be an int >= 2"):
        LMBlocks(["x"], tokenizer, block_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.loader(0)


# --------------------------------------------------------------------------------------------
# Models, losses, perplexity, sampling
# --------------------------------------------------------------------------------------------


def gpt2_params(vocab: int, positions: int, size: GPT2Size) -> int:
    """GPT-2's parameter count: embeddings, per layer 2 LayerNorms + attention + MLP, final LayerNorm
    (the output layer is tied to the token embeddings)."""
    d = size.n_embd
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + positions * d + size.n_layer * per_layer + 2 * d


@pytest.mark.parametrize("name", sorted(GPT2_SIZES))
def test_make_gpt2_sizes(tokenizer, name):
    model = make_gpt2(tokenizer, name, block_size=64)
    size = GPT2_SIZES[name]
    assert sum(p.numel() for p in model.parameters()) == gpt2_params(400, 64, size)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert (model.config.pad_token_id, model.config.eos_token_id) == (1, 0)


def test_make_gpt2_sizes_of_the_notebook():
    # 2,048 tokens and 128 positions: the teacher has 3.7 M parameters, the student 0.68 M
    assert gpt2_params(2048, 128, GPT2_SIZES["teacher"]) == 3_716_608
    assert gpt2_params(2048, 128, GPT2_SIZES["student"]) == 675_328


def test_make_gpt2_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="size must be one of"):
        make_gpt2(tokenizer, "huge")
    with pytest.raises(ValueError, match="divisible by n_head"):
        make_gpt2(tokenizer, GPT2Size(1, 30, 4))
    with pytest.raises(ValueError, match="dropout must be in"):
        make_gpt2(tokenizer, "tiny", dropout=1.0)


@pytest.fixture(scope="module")
def blocks(tokenizer, texts):
    return LMBlocks([t[:600] for t in texts], tokenizer, block_size=32)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return make_gpt2(tokenizer, "tiny", block_size=32, seed=0).eval()


def test_token_ce_matches_hugging_faces_internal_shift(tokenizer, tiny):
    # One block per text (block longer than the text): the pre-shifted labels and HF's shift agree.
    data = LMBlocks(["Emma was sorry.", "She was the youngest of the two daughters."], tokenizer, block_size=32)
    batch = data.collate([data[0], data[1]])
    with torch.no_grad():
        outputs = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hf_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        hf = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=hf_labels).loss
    ours = ce_loss()(outputs, batch)
    # and written out: -log p(next token) averaged over the predicted positions
    log_p = torch.log_softmax(outputs.logits, dim=-1)
    terms = [-log_p[b, t, batch["input_ids"][b, t + 1]] for b in range(2) for t in range(len(data[b]["input_ids"]) - 1)]
    assert torch.allclose(ours, hf, atol=1e-6)
    assert torch.allclose(ours, torch.stack(terms).mean(), atol=1e-6)


def test_kd_online_on_blocks_ignores_padding(tokenizer, blocks, tiny):
    teacher = make_gpt2(tokenizer, "tiny", block_size=32, seed=1)
    batch = blocks.collate([blocks[i] for i in range(len(blocks) - 3, len(blocks))])  # includes a padded block
    assert (batch["attention_mask"] == 0).any()
    loss_fn = kd_online(teacher, temperature=2.0, alpha=0.7)
    logits = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = loss_fn(type("Out", (), {"logits": logits})(), batch)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    p_t = torch.softmax(t_logits[keep] / 2, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(logits[keep] / 2, -1))).sum(-1).mean()
    ce = -torch.log_softmax(logits[keep], -1).gather(1, batch["labels"][keep][:, None]).mean()
    assert torch.allclose(got, 0.7 * 4 * kl + 0.3 * ce, atol=1e-5)
    # changing the logits of padded positions changes nothing
    noisy = logits.detach().clone()
    noisy[~keep] += 100 * torch.randn_like(noisy[~keep])
    assert torch.allclose(loss_fn(type("Out", (), {"logits": noisy})(), batch), got, atol=1e-5)


def test_perplexity_pools_tokens_and_ignores_padding(tokenizer, blocks, tiny):
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(blocks)):  # one block at a time: no padding at all
            ids, labels = torch.tensor([blocks[i]["input_ids"]]), torch.tensor(blocks[i]["labels"])
            log_p = torch.log_softmax(tiny(input_ids=ids).logits[0], -1)
            keep = labels != -100
            total -= log_p[keep].gather(1, labels[keep][:, None]).sum().item()
            count += int(keep.sum())
    assert count == blocks.num_targets
    expected = math.exp(total / count)
    assert perplexity(tiny, blocks, batch_size=5) == pytest.approx(expected, rel=1e-5)
    assert perplexity(tiny, blocks, batch_size=1) == pytest.approx(expected, rel=1e-5)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tokenizer, blocks):
    model = make_gpt2(tokenizer, "tiny", block_size=32)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied output layer: every logit is 0
    assert perplexity(model, blocks) == pytest.approx(len(tokenizer), rel=1e-5)
    assert model.training  # restored


def test_a_few_steps_of_fit_lower_the_perplexity(tokenizer, blocks):
    model = make_gpt2(tokenizer, "tiny", block_size=32, seed=0)
    before = perplexity(model, blocks)
    fit(model, blocks, ce_loss(), TrainSettings(epochs=3, lr=1e-2, batch_size=8, warmup_ratio=0.0),
        progress=False)
    assert perplexity(model, blocks) < 0.5 * before


def test_sample_text_is_seeded_and_greedy_matches_argmax(tokenizer, tiny):
    prompt = "It is a truth"
    a = sample_text(tiny, tokenizer, prompt, max_new_tokens=12, seed=3)
    assert a == sample_text(tiny, tokenizer, prompt, max_new_tokens=12, seed=3)
    torch.manual_seed(123)  # the global RNG does not matter
    assert a == sample_text(tiny, tokenizer, prompt, max_new_tokens=12, seed=3)
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        for _ in range(12):
            nxt = int(tiny(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    greedy = tokenizer.decode(ids[len(tokenizer(prompt)["input_ids"]) :], skip_special_tokens=True)
    assert sample_text(tiny, tokenizer, prompt, max_new_tokens=12, top_k=1) == greedy


def test_sample_text_bad_arguments(tokenizer, tiny):
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        sample_text(tiny, tokenizer, "x", top_k=0)
    with pytest.raises(ValueError, match="temperature must be"):
        sample_text(tiny, tokenizer, "x", temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        sample_text(tiny, tokenizer, "x", max_new_tokens=0)


# --------------------------------------------------------------------------------------------
# DistilBERT's masked-LM distillation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_mlm(tokenizer):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    return BertForMaskedLM(cfg).eval()


@pytest.fixture(scope="module")
def mlm_batch(tokenizer, blocks):
    return mlm_collator(tokenizer, seed=0)([{"input_ids": blocks[i]["input_ids"]} for i in range(len(blocks))])


def test_mlm_collator_masks_15_percent_of_real_tokens(tokenizer, blocks, mlm_batch):
    again = mlm_collator(tokenizer, seed=0)([{"input_ids": blocks[i]["input_ids"]} for i in range(len(blocks))])
    assert torch.equal(again["input_ids"], mlm_batch["input_ids"]) and torch.equal(again["labels"], mlm_batch["labels"])
    chosen = mlm_batch["labels"] != -100
    real = mlm_batch["attention_mask"].bool()
    assert not (chosen & ~real).any()  # padding is never chosen
    assert 0.10 < chosen.sum() / real.sum() < 0.20
    replaced = mlm_batch["input_ids"][chosen] == tokenizer.mask_token_id
    assert 0.65 < replaced.float().mean() < 0.95
    assert not (mlm_batch["input_ids"][~chosen] == tokenizer.mask_token_id).any()
    with pytest.raises(ValueError, match="mlm_probability must be in"):
        mlm_collator(tokenizer, mlm_probability=0.0)


def test_distilbert_student_with_all_layers_is_the_teacher(bert_mlm, mlm_batch):
    full = distilbert_mlm_from_bert(bert_mlm, layers=[0, 1, 2, 3]).eval()
    with torch.no_grad():
        t = bert_mlm(input_ids=mlm_batch["input_ids"], attention_mask=mlm_batch["attention_mask"]).logits
        s = full(input_ids=mlm_batch["input_ids"], attention_mask=mlm_batch["attention_mask"]).logits
    assert (t - s).abs().max() < 1e-4
    half = distilbert_mlm_from_bert(bert_mlm)
    assert half.config.n_layers == 2
    copied = half.distilbert.transformer.layer[1].ffn.lin1.weight  # student layer 1 = teacher layer 2
    assert torch.equal(copied, bert_mlm.bert.encoder.layer[2].intermediate.dense.weight)
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        distilbert_mlm_from_bert(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="do not exist"):
        distilbert_mlm_from_bert(bert_mlm, layers=[0, 4])


def test_distilbert_mlm_loss_matches_the_three_formulas(bert_mlm, mlm_batch):
    student = distilbert_mlm_from_bert(bert_mlm)
    with torch.no_grad():
        nn.init.normal_(student.vocab_projector.bias, std=1.0)  # make the student differ from the teacher's head
    inputs = {"input_ids": mlm_batch["input_ids"], "attention_mask": mlm_batch["attention_mask"]}
    s_out = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t_out = bert_mlm(**inputs, output_hidden_states=True)
    labels, real = mlm_batch["labels"], mlm_batch["attention_mask"].bool()
    parts = distilbert_mlm_loss(s_out, t_out, labels, mlm_batch["attention_mask"], temperature=2.0)

    def kl_t2(mask):
        p_t = F.softmax(t_out.logits[mask] / 2, -1)
        return 4 * nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_out.logits[mask] / 2, -1), p_t)

    masked = labels != -100
    mlm = nn.CrossEntropyLoss()(s_out.logits[masked], labels[masked])
    s_h, t_h = s_out.hidden_states[-1][real], t_out.hidden_states[-1][real]
    cos = nn.CosineEmbeddingLoss()(s_h, t_h, torch.ones(s_h.shape[0]))
    assert torch.allclose(parts["kd"], kl_t2(masked), atol=1e-5)
    assert torch.allclose(parts["mlm"], mlm, atol=1e-5)
    assert torch.allclose(parts["cos"], cos, atol=1e-6)
    assert torch.allclose(parts["loss"], 5 * parts["kd"] + 2 * parts["mlm"] + 1 * parts["cos"])
    everywhere = distilbert_mlm_loss(s_out, t_out, labels, mlm_batch["attention_mask"], kd_on_masked_only=False)
    assert torch.allclose(everywhere["kd"], kl_t2(real), atol=1e-5)
    parts["loss"].backward()
    assert student.distilbert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha_cos must be a finite weight >= 0"):
        distilbert_mlm_loss(s_out, t_out, labels, mlm_batch["attention_mask"], alpha_cos=-1.0)


def test_distilbert_cosine_term_values():
    # the cos term of distilbert_mlm_loss is hidden_state_loss(kind="cosine")
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    b = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])
    # cosines 1, 0, -1 -> losses 0, 1, 2; the third position is padding
    assert hidden_state_loss(a, b, torch.tensor([[1, 1, 0]]), kind="cosine").item() == pytest.approx(0.5)
    assert hidden_state_loss(a, b, torch.tensor([[1, 1, 1]]), kind="cosine").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hidden widths differ"):
        hidden_state_loss(a, b[..., :1], torch.tensor([[1, 1, 1]]), kind="cosine")
