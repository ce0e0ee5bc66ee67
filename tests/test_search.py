"""kd_lib.search (retrieval metrics, students, embedding distillation, costs) and the search widget.

Metrics are checked against hand-worked fixtures, loop-by-loop reference formulas, scikit-learn's
``ndcg_score`` and SciPy's ``spearmanr``; students and losses on tiny random BERTs.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.stats import spearmanr
from sklearn.metrics import ndcg_score
from transformers import AutoTokenizer

from conftest import save_tiny_bert
from kd_lib.course.widgets import format_search_results, search_explorer
from kd_lib.data import EncodedDataset
from kd_lib.embeddings import encode, mean_pool
from kd_lib.search import (
    EmbeddingDistillLoss,
    index_size_bytes,
    layer_subset_encoder,
    measure_embedding_speed,
    narrow_encoder,
    ndcg_at_k,
    neighbour_relevance,
    pca_basis,
    precision_at_k,
    recall_at_k,
    same_label_relevance,
    search,
    sentence_transformer,
    spearman,
    token_vectors,
    top_k_neighbours,
)
from kd_lib.training import TrainSettings, fit

SENTENCES = ["a cat sat on the mat", "stocks fell sharply today", "the team won the final", "dogs bark at night",
             "new chip doubles battery life", "rain is expected tomorrow"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-layer, 32-wide random BertModel and the packaged tokenizer."""
    folder = tmp_path_factory.mktemp("tiny")
    model = save_tiny_bert(folder)
    return model.bert.eval(), AutoTokenizer.from_pretrained(folder)


# --------------------------------------------------------------------------------------- retrieval


def test_top_k_neighbours_orders_by_cosine_and_excludes_self():
    corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.9], [-1.0, 0.1]])
    scores, idx = top_k_neighbours(torch.tensor([[2.0, 0.2]]), corpus, k=3)
    assert idx.tolist() == [[0, 2, 1]]
    norm = math.hypot(2, 0.2)
    expected = torch.tensor([2.0 / norm, 2.18 / norm / math.hypot(1, 0.9), 0.2 / norm])
    torch.testing.assert_close(scores[0], expected)
    _, idx = top_k_neighbours(corpus, corpus, k=1, exclude_self=True)
    assert idx[:, 0].tolist() == [2, 2, 0, 1]  # row 3's best other neighbour is the one with the positive y
    with pytest.raises(ValueError, match="k must be an int in"):
        top_k_neighbours(corpus, corpus, k=4, exclude_self=True)
    with pytest.raises(ValueError, match="same D"):
        top_k_neighbours(torch.ones(1, 3), corpus, k=1)


def test_search_returns_texts_and_scores():
    corpus = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    hits = search(torch.tensor([0.0, 2.0]), corpus, ["x", "diagonal", "y"], k=2)
    assert [t for _, t in hits] == ["y", "diagonal"]
    assert hits[0][0] == pytest.approx(1.0) and hits[1][0] == pytest.approx(0.8)


def test_relevance_matrices():
    rel = same_label_relevance([0, 1], [1, 0, 0])
    assert rel.tolist() == [[False, True, True], [True, False, False]]
    marked = neighbour_relevance(torch.tensor([[2, 0], [1, 1]]), 3)
    assert marked.tolist() == [[True, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="row numbers"):
        neighbour_relevance(torch.tensor([[3]]), 3)


def test_metrics_on_a_hand_worked_example():
    # query 0: relevant {0, 3}, retrieved [3, 1, 0]: hits 1, 0, 1
    # query 1: relevant {2},    retrieved [0, 1, 4]: no hit
    relevant = torch.zeros(2, 5, dtype=torch.bool)
    relevant[0, [0, 3]] = True
    relevant[1, 2] = True
    retrieved = torch.tensor([[3, 1, 0], [0, 1, 4]])
    assert precision_at_k(retrieved, relevant) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(retrieved, relevant) == pytest.approx((2 / 2 + 0) / 2)
    dcg0, ideal0 = 1 + 1 / 2, 1 + 1 / math.log2(3)  # hits at ranks 1 and 3; two relevant documents
    assert ndcg_at_k(retrieved, relevant) == pytest.approx((dcg0 / ideal0 + 0) / 2)
    with pytest.raises(ValueError, match="no relevant document"):
        recall_at_k(retrieved, torch.zeros(2, 5, dtype=torch.bool))


def _reference_metrics(ranking: list[list[int]], relevant: list[set[int]], k: int) -> tuple[float, float, float]:
    """Precision, recall and nDCG at k, one query at a time, straight from the definitions."""
    p = r = n = 0.0
    for ranked, rel in zip(ranking, relevant, strict=True):
        top = ranked[:k]
        hits = [1.0 if d in rel else 0.0 for d in top]
        p += sum(hits) / k
        r += sum(hits) / len(rel)
        dcg = sum(h / math.log2(rank + 2) for rank, h in enumerate(hits))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(rel))))
        n += dcg / ideal
    q = len(ranking)
    return p / q, r / q, n / q


@pytest.mark.parametrize("k", [1, 3, 10])
def test_metrics_match_reference_formulas_and_sklearn(k):
    g = torch.Generator().manual_seed(k)
    emb = torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    labels[:4] = torch.arange(4)  # every label occurs at least twice (below), so each query has a relevant document
    labels[4:8] = torch.arange(4)
    _, idx = top_k_neighbours(emb, emb, k, exclude_self=True)
    relevant = same_label_relevance(labels, labels)
    relevant.fill_diagonal_(False)
    sims = F.normalize(emb, dim=1) @ F.normalize(emb, dim=1).T
    ranking = [[j for j in sims[i].argsort(descending=True).tolist() if j != i] for i in range(40)]
    rel_sets = [{j for j in range(40) if j != i and labels[j] == labels[i]} for i in range(40)]
    p, r, n = _reference_metrics(ranking, rel_sets, k)
    assert precision_at_k(idx, relevant) == pytest.approx(p)
    assert recall_at_k(idx, relevant) == pytest.approx(r)
    assert ndcg_at_k(idx, relevant) == pytest.approx(n)
    sims.fill_diagonal_(-10.0)  # the query itself is not a document
    assert ndcg_at_k(idx, relevant) == pytest.approx(ndcg_score(relevant.numpy(), sims.numpy(), k=k), abs=1e-6)


def test_recall_against_the_teachers_neighbours_is_their_overlap():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(30, 6, generator=g)
    student = teacher + 0.5 * torch.randn(30, 6, generator=g)
    _, t_idx = top_k_neighbours(teacher, teacher, 5, exclude_self=True)
    _, s_idx = top_k_neighbours(student, student, 5, exclude_self=True)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(t_idx.tolist(), s_idx.tolist(), strict=True)) / (30 * 5)
    assert recall_at_k(s_idx, neighbour_relevance(t_idx, 30)) == pytest.approx(overlap)
    assert recall_at_k(t_idx, neighbour_relevance(t_idx, 30)) == 1.0
    assert 0.2 < overlap < 1.0  # the noise changed some neighbours, not all


def test_spearman_matches_scipy_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=g), torch.randn(50, generator=g)
    y = x + y
    assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    tied_x, tied_y = [1, 2, 2, 3, 3, 3, 7], [3, 1, 2, 2, 5, 5, 4]
    assert spearman(tied_x, tied_y) == pytest.approx(spearmanr(tied_x, tied_y).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        spearman([1, 2, 3], [5, 5, 5])
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------------------- costs


def test_index_size_bytes():
    assert index_size_bytes(1000, 384) == 1000 * 384 * 4
    assert index_size_bytes(1000, 384, "float16") == 768_000
    assert index_size_bytes(1000, 256, "int8") == 256_000
    assert index_size_bytes(3, 10, "binary") == 3 * 2  # 10 bits round up to 2 bytes per embedding
    with pytest.raises(ValueError, match="precision must be one of"):
        index_size_bytes(1, 1, "int4")
    with pytest.raises(ValueError, match="n must be"):
        index_size_bytes(-1, 4)


def test_measure_embedding_speed_alternates_and_reports_sentences_per_second():
    calls = []

    def slow(texts):
        calls.append("slow")
        time.sleep(0.02)

    def fast(texts):
        calls.append("fast")
        time.sleep(0.01)

    speed = measure_embedding_speed({"slow": slow, "fast": fast}, ["a"] * 10, repeats=3, warmup=1)
    assert calls == ["slow", "fast"] * 2 + ["fast", "slow"] + ["slow", "fast"]  # warm-up, then rotating rounds
    assert 250 < speed["slow"] <= 500 and 500 < speed["fast"] <= 1000
    assert 1.5 < speed["fast"] / speed["slow"] < 2.5
    with pytest.raises(ValueError, match="texts is empty"):
        measure_embedding_speed({"fast": fast}, [])


# --------------------------------------------------------------------------------------- students


def test_layer_subset_encoder_keeps_the_chosen_layers(tiny):
    bert, tokenizer = tiny
    student = layer_subset_encoder(bert, [0, 3]).eval()
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    assert bert.config.num_hidden_layers == 4 and len(bert.encoder.layer) == 4  # the teacher is untouched
    ids = tokenizer(SENTENCES[:1], return_tensors="pt")["input_ids"]  # one sentence: no padding, no mask needed
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids)
        for i in (0, 3):  # the teacher's layers 0 and 3, by hand
            h = bert.encoder.layer[i](h)
            h = h[0] if isinstance(h, tuple) else h
        out = student(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, h, atol=1e-5, rtol=0)
    full = layer_subset_encoder(bert, range(4)).eval()
    enc = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(full(**enc).last_hidden_state, bert(**enc).last_hidden_state)
    query = student.encoder.layer[0].attention.self.query.weight
    assert query.data_ptr() != bert.encoder.layer[0].attention.self.query.weight.data_ptr()  # a copy, not shared
    with pytest.raises(ValueError, match="do not exist"):
        layer_subset_encoder(bert, [0, 4])


def test_token_vectors_are_one_token_sentence_embeddings(tiny):
    bert, tokenizer = tiny
    vectors = token_vectors(bert, tokenizer, batch_size=4096)
    assert vectors.shape == (bert.config.vocab_size, 32)
    for token in ("cat", "##ing"):
        t = tokenizer.convert_tokens_to_ids(token)
        ids = torch.tensor([[tokenizer.cls_token_id, t, tokenizer.sep_token_id]])
        with torch.no_grad():
            expected = bert(input_ids=ids).last_hidden_state.mean(1)[0]
        torch.testing.assert_close(vectors[t], expected, atol=1e-5, rtol=0)


def test_pca_basis_finds_the_directions_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 1.0, 0.1]) + torch.tensor([1.0, 2.0, 3.0])
    mean, comps = pca_basis(x, 2)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(comps @ comps.T, torch.eye(2), atol=1e-5, rtol=0)
    assert abs(comps[0, 0]) > 0.99 and abs(comps[1, 1]) > 0.99  # the x axis, then the y axis
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:2]  # covariance eigenvalues, largest first
    variances = ((x - mean) @ comps.T).var(0)
    torch.testing.assert_close(variances, eigenvalues, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="dim an int"):
        pca_basis(x, 4)


def test_narrow_encoder_starts_as_a_static_embedding_model(tiny):
    bert, tokenizer = tiny
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(bert.config.vocab_size, 32, generator=g)
    student, projection = narrow_encoder(bert, vectors, hidden_size=16, num_layers=2, num_heads=2)
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2
    assert (projection.in_features, projection.out_features) == (16, 32)
    enc = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        out = student(**enc).last_hidden_state
    rows = student.embeddings.word_embeddings.weight[enc["input_ids"]]  # [B, L, 16]
    expected = (rows - rows.mean(-1, keepdim=True)) / torch.sqrt(rows.var(-1, unbiased=False, keepdim=True) + 1e-12)
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(out[real], expected[real], atol=1e-4, rtol=0)
    mean, comps = pca_basis(vectors, 16)
    torch.testing.assert_close(student.embeddings.word_embeddings.weight, (vectors - mean) @ comps.T)
    with pytest.raises(ValueError, match="divisible"):
        narrow_encoder(bert, vectors, hidden_size=15, num_heads=2)


def test_narrow_encoder_projection_maps_back_to_the_teachers_space(tiny):
    bert, _ = tiny
    vectors = torch.randn(bert.config.vocab_size, 8, generator=torch.Generator().manual_seed(2)) * 3 + 1
    student, projection = narrow_encoder(bert, vectors, hidden_size=8, num_layers=1, num_heads=2)
    coords = student.embeddings.word_embeddings.weight.detach()  # full width: the PCA is a rotation
    typical_std = sum(float(row.std(unbiased=False)) for row in coords) / len(coords)
    with torch.no_grad():
        back = projection(coords / typical_std)  # a coordinate vector with the typical scale ...
    torch.testing.assert_close(back, vectors, atol=1e-4, rtol=0)  # ... maps back onto its token vector


def test_sentence_transformer_package_embeds_like_kd_lib_encode(tiny):
    bert, tokenizer = tiny
    st = sentence_transformer(bert, tokenizer)
    ours = encode(bert, tokenizer, SENTENCES)
    theirs = st.encode(SENTENCES, convert_to_tensor=True, show_progress_bar=False)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    projection = torch.nn.Linear(32, 48)
    projected = sentence_transformer(bert, tokenizer, projection)
    with torch.no_grad():
        expected = F.normalize(projection(encode(bert, tokenizer, SENTENCES, normalize=False)), dim=1)
    theirs = projected.encode(SENTENCES, convert_to_tensor=True, show_progress_bar=False)
    assert theirs.shape == (len(SENTENCES), 48)
    torch.testing.assert_close(theirs, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes 16 features"):
        sentence_transformer(bert, tokenizer, torch.nn.Linear(16, 48))


# --------------------------------------------------------------------------------------- loss


def _batch(tokenizer, texts, rows):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "row": torch.tensor(rows)}


def test_embedding_distill_loss_is_the_mse_of_normalised_mean_pooled_embeddings(tiny):
    bert, tokenizer = tiny
    g = torch.Generator().manual_seed(3)
    teacher = F.normalize(torch.randn(6, 32, generator=g), dim=1)
    batch = _batch(tokenizer, [SENTENCES[4], SENTENCES[1]], [4, 1])
    with torch.no_grad():
        outputs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    value = EmbeddingDistillLoss(teacher)(outputs, batch)
    h, m = outputs.last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
    pooled = (h * m).sum(1) / m.sum(1)
    student = pooled / pooled.norm(dim=1, keepdim=True)
    expected = ((student - teacher[[4, 1]]) ** 2).sum() / (2 * 32)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # on unit vectors the MSE is the cosine distance in disguise: |s - t|^2 = 2 - 2 cos(s, t)
    cos = (student * teacher[[4, 1]]).sum(1)
    assert value.item() == pytest.approx(((2 - 2 * cos).mean() / 32).item(), rel=1e-5)
    raw = EmbeddingDistillLoss(teacher, normalize=False)(outputs, batch)
    assert raw.item() == pytest.approx(F.mse_loss(mean_pool(h, batch["attention_mask"]), teacher[[4, 1]]).item())


def test_embedding_distill_loss_with_projection_and_bad_input(tiny):
    bert, tokenizer = tiny
    teacher = torch.randn(6, 48)
    batch = _batch(tokenizer, SENTENCES[:2], [0, 1])
    with torch.no_grad():
        outputs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    projection = torch.nn.Linear(32, 48)
    value = EmbeddingDistillLoss(teacher, projection)(outputs, batch)
    student = F.normalize(projection(mean_pool(outputs.last_hidden_state, batch["attention_mask"])), dim=1)
    assert value.item() == pytest.approx(((student - teacher[:2]) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"projection=nn\.Linear"):
        EmbeddingDistillLoss(teacher)(outputs, batch)
    with pytest.raises(ValueError, match=r"tensor \[N, D\]"):
        EmbeddingDistillLoss(torch.randn(6))


def test_fit_with_the_embedding_loss_pulls_the_student_towards_the_teacher(tiny):
    bert, tokenizer = tiny
    texts = SENTENCES * 4
    teacher_model = layer_subset_encoder(bert, [0, 1, 2, 3])  # a different (deeper) encoder than the student
    teacher = encode(teacher_model, tokenizer, texts)
    student = layer_subset_encoder(bert, [0])
    projection = torch.nn.Linear(32, 32)
    data = EncodedDataset(Dataset.from_dict({"text": texts, "label": [0] * len(texts)}), tokenizer, max_length=16)
    loss = EmbeddingDistillLoss(teacher, projection)
    before = projection.weight.detach().clone()
    history = fit(student, data, loss, TrainSettings(epochs=4, lr=3e-3, batch_size=8), progress=False)
    assert history[-1] < 0.5 * history[0]
    assert not torch.equal(projection.weight, before)  # fit trained the loss's projection too


# --------------------------------------------------------------------------------------- widget


def test_format_search_results_puts_models_side_by_side():
    results = {"teacher": [(0.91, "the cat sat"), (0.5, "a very long sentence that will not fit the column")],
               "student": [(0.88, "the cat sat"), (0.47, "dogs")]}
    text = format_search_results("cat", results, width=20)
    lines = text.splitlines()
    assert lines[0] == "query: cat"
    assert lines[2] == " 1 0.910 the cat sat    | 0.880 the cat sat"
    assert lines[3] == " 2 0.500 a very long s… | 0.470 dogs"
    with pytest.raises(ValueError, match="same number"):
        format_search_results("q", {"a": [(1.0, "x")], "b": []})


def test_search_explorer_shows_each_models_results():
    corpus = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    texts = ["east", "north", "north-east"]
    box = search_explorer({"a": lambda q: torch.tensor([[1.0, 0.1]]), "b": lambda q: torch.tensor([[0.1, 1.0]])},
                          {"a": corpus, "b": corpus}, texts, query="anything", k=2)
    shown = box.children[1].value
    assert shown.startswith("<pre>") and "query: anything" in shown
    assert " 1 0.995 east" in shown and "| 0.995 north\n" in shown
    box.children[0].value = "  "  # a blank query clears the results
    assert box.children[1].value == ""
