"""Semantic search with distilled sentence encoders: retrieval metrics, students, losses, costs.

A search index stores one embedding per document; a query is embedded by the same model and
the documents are ranked by cosine similarity. Distilling the encoder means training a smaller
one whose embeddings land where the teacher's do, so that it ranks documents the same way.

Shapes: ``Q`` queries, ``N`` corpus documents, ``D`` embedding width, ``k`` neighbours kept,
``V`` vocabulary size, ``H`` hidden width of an encoder.

Relevance is a boolean matrix ``relevant [Q, N]`` (document ``j`` is relevant to query ``i``):
same-topic neighbours (:func:`same_label_relevance`) or the teacher's own top ``k``
(:func:`neighbour_relevance`), so that one set of metrics answers both "does the student find
documents on the query's topic?" and "does it return what the teacher returns?".
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.embeddings import cosine_matrix, mean_pool
from kd_lib.evaluate import alternating_medians
from kd_lib.losses import hidden_state_loss
from kd_lib.students import check_teacher_layers
from kd_lib.training import ForwardNeeds

__all__ = [
    "BITS_PER_NUMBER",
    "EmbeddingDistillLoss",
    "index_size_bytes",
    "layer_subset_encoder",
    "measure_embedding_speed",
    "narrow_encoder",
    "ndcg_at_k",
    "neighbour_relevance",
    "pca_basis",
    "precision_at_k",
    "recall_at_k",
    "same_label_relevance",
    "search",
    "sentence_transformer",
    "spearman",
    "token_vectors",
    "top_k_neighbours",
]


# ---------------------------------------------------------------------------------------------
# Retrieval


def top_k_neighbours(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` corpus rows most cosine-similar to each query.

    Args:
        queries: ``[Q, D]`` embeddings.
        corpus: ``[N, D]`` embeddings (need not be normalised).
        k: neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude_self``).
        exclude_self: the queries *are* the corpus (``Q = N``, row ``i`` is document ``i``):
            a document is never its own neighbour.

    Returns:
        ``(scores [Q, k], indices [Q, k])``, best first; scores are cosines in ``[-1, 1]``.

    Taught in notebook 08, section 1 (The teacher is a search engine).
    """
    if queries.dim() != 2 or corpus.dim() != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries and corpus must be [Q, D] and [N, D] with the same D; got {tuple(queries.shape)} "
            f"and {tuple(corpus.shape)}"
        )
    n = corpus.shape[0] - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] for a corpus of {corpus.shape[0]} "
                         f"(exclude_self={exclude_self}); got {k!r}")
    scores = cosine_matrix(queries.float(), corpus.float())
    if exclude_self:
        if queries.shape[0] != corpus.shape[0]:
            raise ValueError(f"exclude_self needs the queries to be the corpus; got {queries.shape[0]} queries for "
                             f"{corpus.shape[0]} documents")
        scores.fill_diagonal_(-math.inf)
    return scores.topk(k, dim=1)


def search(
    query_embedding: torch.Tensor, corpus: torch.Tensor, texts: Sequence[str], k: int = 5
) -> list[tuple[float, str]]:
    """The ``k`` best ``(cosine, text)`` pairs for one query embedding ``[D]`` over ``corpus [N, D]``.

    Taught in notebook 08, section 8 (Try it: a search box).
    """
    if len(texts) != corpus.shape[0]:
        raise ValueError(f"texts has {len(texts)} entries for a corpus of {corpus.shape[0]} embeddings")
    scores, idx = top_k_neighbours(query_embedding.reshape(1, -1), corpus, k)
    return [(float(s), texts[int(i)]) for s, i in zip(scores[0], idx[0], strict=True)]


def same_label_relevance(query_labels, corpus_labels) -> torch.Tensor:
    """``[Q, N]`` bool: document ``j`` shares query ``i``'s label (same-topic relevance).

    Taught in notebook 08, section 2 (Measuring search quality).
    """
    q, c = torch.as_tensor(query_labels), torch.as_tensor(corpus_labels)
    if q.dim() != 1 or c.dim() != 1:
        raise ValueError(f"labels must be 1-D; got shapes {tuple(q.shape)} and {tuple(c.shape)}")
    return q[:, None] == c[None, :]


def neighbour_relevance(indices: torch.Tensor, n_corpus: int) -> torch.Tensor:
    """``[Q, N]`` bool marking each query's neighbours ``indices [Q, k]`` (e.g. the teacher's top k).

    Taught in notebook 08, section 3 (Two students).
    """
    if indices.dim() != 2 or (indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < n_corpus):
        raise ValueError(f"indices must be [Q, k] row numbers in [0, {n_corpus - 1}]; got shape {tuple(indices.shape)}")
    relevant = torch.zeros(indices.shape[0], n_corpus, dtype=torch.bool)
    return relevant.scatter_(1, indices.long(), True)


def _hits(indices: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """``[Q, k]`` float: 1 where the retrieved document is relevant."""
    if indices.dim() != 2 or relevant.dim() != 2 or indices.shape[0] != relevant.shape[0]:
        raise ValueError(f"indices must be [Q, k] and relevant [Q, N] with the same Q; got {tuple(indices.shape)} "
                         f"and {tuple(relevant.shape)}")
    return relevant.gather(1, indices.long()).float()


def _n_relevant(relevant: torch.Tensor) -> torch.Tensor:
    counts = relevant.sum(1)
    if (counts == 0).any():
        raise ValueError(f"query {int((counts == 0).nonzero()[0])} has no relevant document: recall and nDCG are "
                         "undefined for it; drop such queries")
    return counts.float()


def precision_at_k(indices: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean over queries of the fraction of the ``k`` retrieved documents that are relevant.

    Args:
        indices: ``[Q, k]`` retrieved corpus rows, best first (``k`` is read from the shape).
        relevant: ``[Q, N]`` bool relevance.

    Taught in notebook 08, section 2 (Measuring search quality).
    """
    return _hits(indices, relevant).mean().item()


def recall_at_k(indices: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean over queries of ``|relevant ∩ top k| / |relevant|``.

    With the teacher's own top ``k`` as the relevant set this is the *overlap* of the student's
    and the teacher's result lists. With many relevant documents per query (a topic shared by a
    quarter of the corpus) it cannot exceed ``k / |relevant|``: use precision or nDCG there.

    Taught in notebook 08, section 2 (Measuring search quality).
    """
    return (_hits(indices, relevant).sum(1) / _n_relevant(relevant)).mean().item()


def ndcg_at_k(indices: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean normalised discounted cumulative gain with binary relevance (Järvelin & Kekäläinen, 2002).

    ``DCG = sum_r rel_r / log2(r + 1)`` over ranks ``r = 1..k``; it is divided by the DCG of a
    perfect list, which puts ``min(k, |relevant|)`` relevant documents first. ``1`` means every
    slot that could hold a relevant document does, a hit near the top counting more.

    Taught in notebook 08, section 2 (Measuring search quality).
    """
    hits = _hits(indices, relevant)
    k = hits.shape[1]
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))  # [k]
    dcg = hits @ discount
    ideal = torch.cumsum(discount, 0)[(_n_relevant(relevant).clamp(max=k) - 1).long()]
    return (dcg / ideal).mean().item()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x [n]``, tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # rank of the last member of each group of ties
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x, y) -> float:
    """Spearman's rank correlation of two score vectors ``[n]``: Pearson's r of their ranks.

    Ties get the average of their ranks (as in ``scipy.stats.spearmanr``). ``1`` means the two
    scorings order every pair of items the same way, whatever their scales.

    Taught in notebook 08, section 2 (Measuring search quality).
    """
    a, b = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if a.dim() != 1 or a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2; got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    if denominator == 0:
        raise ValueError("x or y is constant: its ranks carry no order, so the correlation is undefined")
    return (ra @ rb).item() / denominator


# ---------------------------------------------------------------------------------------------
# Cost: index size and embedding throughput

BITS_PER_NUMBER = {"float32": 32, "float16": 16, "int8": 8, "binary": 1}


def index_size_bytes(n: int, dim: int, precision: str = "float32") -> int:
    """Bytes to store ``n`` embeddings of ``dim`` numbers (no index overhead).

    ``precision``: ``"float32"`` (4 bytes a number), ``"float16"`` (2), ``"int8"`` (1; the
    per-dimension ranges, ``2 x dim`` floats, are negligible and not counted) or ``"binary"``
    (one bit a number: the sign, packed into ``ceil(dim / 8)`` bytes per embedding).

    Taught in notebook 08, section 7 (What the students save: throughput, size, index).
    """
    if precision not in BITS_PER_NUMBER:
        raise ValueError(f"precision must be one of {sorted(BITS_PER_NUMBER)}; got {precision!r}")
    for name, value in (("n", n), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0; got {value!r}")
    return n * math.ceil(dim * BITS_PER_NUMBER[precision] / 8)


def measure_embedding_speed(
    encoders: dict[str, Callable[[list[str]], object]],
    texts: Sequence[str],
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, float]:
    """Sentences embedded per second by each encoder, tokenisation and pooling included.

    Each encoder is a function ``texts -> embeddings`` (e.g. ``lambda t: model.encode(t)``).
    Timed by :func:`kd_lib.evaluate.alternating_medians`: after ``warmup`` untimed passes the encoders
    embed ``texts`` in alternation, ``repeats`` rounds, each round starting with the next encoder, so a
    slow moment of the machine hits all of them; the median round is reported.

    Returns:
        ``{name: sentences per second}``.

    Taught in notebook 08, section 7 (What the students save: throughput, size, index).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give the sentences to embed")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1; got {repeats!r}")

    def timed(encode) -> tuple[float]:
        start = time.perf_counter()
        encode(texts)
        return (time.perf_counter() - start,)

    jobs = {name: (lambda encode=encode: timed(encode)) for name, encode in encoders.items()}
    medians = alternating_medians(jobs, repeats=repeats, warmup=warmup)
    return {name: len(texts) / seconds for name, (seconds,) in medians.items()}


# ---------------------------------------------------------------------------------------------
# Students


def layer_subset_encoder(encoder: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of a BERT encoder (``BertModel``) that keeps only the given layers.

    Embeddings, the kept layers and everything else are copied from ``encoder``; this is how
    sentence-transformers' own layer-reduction example builds a student, and how DistilBERT
    was initialised.

    Args:
        encoder: a ``BertModel`` (e.g. ``SentenceTransformer(...)[0].auto_model``).
        layers: strictly increasing layer indices to keep, e.g. ``[0, 2, 4]`` of 6.

    Returns:
        A new ``BertModel`` with ``len(layers)`` layers, in train mode; ``encoder`` is unchanged.

    Taught in notebook 08, section 3 (Two students).
    """
    layers = check_teacher_layers(layers, encoder.config.num_hidden_layers)
    student = copy.deepcopy(encoder)
    student.encoder.layer = nn.ModuleList(student.encoder.layer[i] for i in layers)
    student.config.num_hidden_layers = len(layers)
    return student.train()


@torch.no_grad()
def token_vectors(encoder: nn.Module, tokenizer, batch_size: int = 1024) -> torch.Tensor:
    """What the encoder makes of each vocabulary token alone: ``[V, H]``.

    Row ``t`` is the mean-pooled last hidden state of the three-token input ``[CLS] t [SEP]``
    (the encoder's sentence embedding of a one-token sentence, not normalised). Model2Vec
    (Tulkens & van Dongen, 2024) distils a static embedding table this way.

    Taught in notebook 08, section 3 (Two students).
    """
    vocab = encoder.config.vocab_size
    was_training = encoder.training
    encoder.eval()
    rows = []
    try:
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab))
            cls, sep = torch.full_like(ids, tokenizer.cls_token_id), torch.full_like(ids, tokenizer.sep_token_id)
            batch = torch.stack([cls, ids, sep], dim=1)  # [b, 3]
            mask = torch.ones_like(batch)
            rows.append(mean_pool(encoder(input_ids=batch, attention_mask=mask).last_hidden_state, mask).float())
    finally:
        encoder.train(was_training)
    return torch.cat(rows)


def pca_basis(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[H]`` and the top ``dim`` principal directions ``[dim, H]`` (orthonormal rows) of ``x [n, H]``.

    ``(x - mean) @ components.T`` are the ``dim`` coordinates that keep most of the variance.

    Taught in notebook 08, section 3 (Two students).
    """
    if x.dim() != 2 or isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= min(x.shape):
        raise ValueError(f"x must be [n, H] and dim an int in [1, min(n, H)]; got x {tuple(x.shape)}, dim {dim!r}")
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:dim]


def narrow_encoder(
    teacher: nn.Module,
    vectors: torch.Tensor,
    *,
    num_layers: int = 3,
    hidden_size: int = 256,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[nn.Module, nn.Linear]:
    """A BERT encoder narrower than ``teacher`` that starts out as a static embedding model.

    No teacher weight fits a narrower model, but the teacher's *outputs* do:

    * word embeddings: the teacher's token vectors ``vectors [V, H_t]`` (see :func:`token_vectors`)
      in their top ``hidden_size`` principal coordinates; position and token-type embeddings start
      at zero;
    * every layer's two residual branches (the attention output and the feed-forward output
      projections) start at zero, so each layer passes its input through (a layer computes
      ``LayerNorm(x + branch(x))``, and the input is already layer-normalised). Training grows
      the branches from there (zero-initialised residual branches, as in Fixup or ReZero);
    * the returned ``projection`` maps the student's width back to the teacher's through the
      same principal directions, undoing on average the layer norm's division:
      ``z -> (r * z) @ components + mean``, where ``r`` is the mean over tokens of the standard
      deviation of a token's coordinates.

    At initialisation the student's token outputs are therefore its layer-normalised word
    embeddings (the teacher's token vectors, compressed, centred and rescaled per token), and
    its sentence embedding is their average: a static embedding model, which training turns
    contextual.

    Args:
        teacher: the teacher encoder (``BertModel``); its vocabulary size and maximum length are kept.
        vectors: ``[V, H_t]`` token vectors of the teacher.
        num_layers, hidden_size, num_heads: the student's shape (as in
            :func:`kd_lib.students.narrow_distilbert`); ``hidden_size`` divisible by
            ``num_heads``; feed-forward size ``4 x hidden_size``.
        seed: seeds the randomly initialised weights (queries, keys, values, first FFN layer).

    Returns:
        ``(student BertModel in train mode, projection nn.Linear(hidden_size, H_t))``.

    Taught in notebook 08, section 3 (Two students).
    """
    from transformers import BertConfig, BertModel

    cfg = teacher.config
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if vectors.dim() != 2 or vectors.shape[0] != cfg.vocab_size or hidden_size > vectors.shape[1]:
        raise ValueError(f"vectors must be [V={cfg.vocab_size}, H_t >= hidden_size={hidden_size}]; got "
                         f"{tuple(vectors.shape)}")
    mean, components = pca_basis(vectors.float(), hidden_size)
    coordinates = (vectors.float() - mean) @ components.T  # [V, hidden_size]
    scale = coordinates.std(dim=1, unbiased=False).mean()
    torch.manual_seed(seed)
    student = BertModel(
        BertConfig(vocab_size=cfg.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                   num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                   max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id),
        add_pooling_layer=False,
    )
    projection = nn.Linear(hidden_size, vectors.shape[1])
    with torch.no_grad():
        student.embeddings.word_embeddings.weight.copy_(coordinates)
        student.embeddings.position_embeddings.weight.zero_()
        student.embeddings.token_type_embeddings.weight.zero_()
        for layer in student.encoder.layer:
            for branch in (layer.attention.output.dense, layer.output.dense):
                branch.weight.zero_()
                branch.bias.zero_()
        projection.weight.copy_(scale * components.T)
        projection.bias.copy_(mean)
    return student.train(), projection


def sentence_transformer(encoder: nn.Module, tokenizer, projection: nn.Linear | None = None, max_seq_length: int = 256):
    """Package a trained encoder as a ``SentenceTransformer``: mean pooling, then L2 normalisation.

    The encoder and tokenizer are saved (safetensors) to a temporary folder and loaded back with
    sentence-transformers' own modules (``Transformer``, ``Pooling``, ``Normalize``), so the result
    has ``encode``, ``save`` and every other tool of that library. It holds a copy of the weights.

    With ``projection`` (the ``nn.Linear`` a student was distilled through), a ``Dense`` module
    with the same weights comes between pooling and normalisation: the model then embeds into the
    teacher's space, ``normalize(projection(mean_pool(h)))`` -- as :class:`EmbeddingDistillLoss`
    trained it.

    Taught in notebook 08, section 3 (Two students).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    from kd_lib.utils import quiet_hf

    with tempfile.TemporaryDirectory() as folder, quiet_hf():
        encoder.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        transformer = Transformer(os.fspath(folder), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(encoder.config.hidden_size, "mean")]
    if projection is not None:
        if projection.in_features != encoder.config.hidden_size:
            raise ValueError(f"projection takes {projection.in_features} features but the encoder gives "
                             f"{encoder.config.hidden_size}")
        dense = Dense(projection.in_features, projection.out_features, bias=projection.bias is not None,
                      activation_function=None)
        dense.linear.load_state_dict(projection.state_dict())
        modules.append(dense)
    return SentenceTransformer(modules=[*modules, Normalize()], device="cpu").eval()


# ---------------------------------------------------------------------------------------------
# Distillation loss


class EmbeddingDistillLoss(nn.Module):
    """Regress the student's sentence embeddings onto cached teacher embeddings.

    For a batch of the training set, the student's last hidden states are mean-pooled over the
    real tokens (``kd_lib.embeddings.mean_pool``), mapped by ``projection`` to the teacher's width
    if there is one, L2-normalised (as the teacher's embeddings are), and compared with the
    teacher's embeddings of the same rows (looked up by ``batch["row"]``, so shuffling cannot
    misalign them) by ``kd_lib.losses.hidden_state_loss`` -- by default the MSE over all
    ``B x D`` numbers, the value of sentence-transformers' ``MSELoss`` (Reimers & Gurevych, 2020).
    The projection is applied here, before the normalisation, rather than by ``hidden_state_loss``.

    The ``projection`` lives on the loss, as in sentence-transformers; ``kd_lib.training.fit``
    trains it with the student. Use it as the loss of ``fit`` with a ``BertModel`` student:
    ``fit(student, data, EmbeddingDistillLoss(teacher_embeddings), settings)``.

    Args:
        teacher_embeddings: ``[N, D_t]`` teacher embeddings of the training rows, in dataset order.
        projection: ``nn.Module`` mapping ``D_s -> D_t`` when the widths differ, else ``None``.
        kind: ``"mse"`` or ``"cosine"`` (see ``hidden_state_loss``).
        normalize: L2-normalise the (projected) student embedding before comparing.

    Taught in notebook 08, section 4 (The loss: make the embeddings match).
    """

    needs = ForwardNeeds()  # the last hidden state is in every forward pass's outputs

    def __init__(
        self,
        teacher_embeddings: torch.Tensor,
        projection: nn.Module | None = None,
        kind: str = "mse",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(teacher_embeddings, torch.Tensor) or teacher_embeddings.dim() != 2:
            got = tuple(teacher_embeddings.shape) if isinstance(teacher_embeddings, torch.Tensor) else type(
                teacher_embeddings).__name__
            raise ValueError(f"teacher_embeddings must be a tensor [N, D]; got {got}")
        # a plain copy: sentence-transformers returns inference-mode tensors, which autograd refuses
        self.register_buffer("teacher_embeddings", teacher_embeddings.detach().float().clone(), persistent=False)
        self.projection = projection
        self.kind = kind
        self.normalize = normalize

    def student_embeddings(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, D_t]`` student embeddings (pooled, projected, normalised) from a forward pass's outputs."""
        embeddings = mean_pool(outputs.last_hidden_state, attention_mask.to(outputs.last_hidden_state.device))
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def forward(self, outputs, batch: dict) -> torch.Tensor:
        """The loss of one batch (``outputs`` of the student, ``batch`` with ``row`` and ``attention_mask``)."""
        student = self.student_embeddings(outputs, batch["attention_mask"])
        teacher = self.teacher_embeddings[batch["row"].to(self.teacher_embeddings.device)].to(student.device)
        return hidden_state_loss(student, teacher, kind=self.kind)
