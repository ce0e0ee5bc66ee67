"""Real-value tests of kd_lib.embeddings on the packaged all-MiniLM-L6-v2 teacher."""

from __future__ import annotations

import pytest
import torch

from kd_lib.embeddings import cosine_matrix, encode, load_encoder, mean_pool
from kd_lib.models import packaged_teacher_path
from kd_lib.utils import quiet_hf

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The central bank raised interest rates again.",
    "Cats sleep for most of the day.",
]
LONG = (
    "This is a deliberately long sentence, written so that every other sentence in the same "
    "batch gets many padding tokens appended, which must not change their embeddings at all "
    "when the pooling correctly ignores the padded positions of the attention mask."
)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def test_shape_dtype_and_unit_norm(encoder):
    emb = encode(*encoder, SENTENCES)
    assert emb.shape == (len(SENTENCES), 384)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-6, rtol=0)


def test_unnormalized_is_not_unit_norm(encoder):
    raw = encode(*encoder, SENTENCES, normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-3)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), encode(*encoder, SENTENCES))


def test_padding_does_not_change_an_embedding(encoder):
    alone = encode(*encoder, SENTENCES[:1])
    model, tokenizer = encoder
    n_tokens = [len(tokenizer(s)["input_ids"]) for s in (SENTENCES[0], LONG)]
    assert n_tokens[1] > 3 * n_tokens[0]  # the short sentence really is padded a lot
    batched = encode(model, tokenizer, [SENTENCES[0], LONG])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_batch_size_does_not_matter(encoder):
    texts = [*SENTENCES, LONG]
    torch.testing.assert_close(
        encode(*encoder, texts, batch_size=2), encode(*encoder, texts, batch_size=32), atol=1e-5, rtol=0
    )


def test_paraphrase_is_closer_than_unrelated(encoder):
    emb = encode(*encoder, SENTENCES)
    sims = cosine_matrix(emb, emb)
    assert sims[0, 1] > 0.5
    assert sims[0, 1] > sims[0, 2] + 0.3
    assert sims[0, 1] > sims[0, 3] + 0.3


def test_matches_independent_mean_pooling(encoder):
    """Each sentence on its own (no padding at all): the plain mean over all its tokens."""
    model, tokenizer = encoder
    expected = []
    with torch.no_grad():
        for s in SENTENCES:
            ids = tokenizer(s, return_tensors="pt")
            hidden = model(**ids).last_hidden_state[0]  # [L, 384], every token is real
            expected.append(hidden.mean(dim=0))
    expected = torch.stack(expected)
    torch.testing.assert_close(encode(model, tokenizer, SENTENCES, normalize=False), expected, atol=1e-5, rtol=0)


def test_mean_pool_excludes_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden, torch.ones(1, 2))


def test_encode_rejects_a_bare_string(encoder):
    with pytest.raises(ValueError, match="single string"):
        encode(*encoder, "just one sentence")


def test_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    with quiet_hf():
        reference = st.SentenceTransformer(str(packaged_teacher_path()), device="cpu")
    expected = reference.encode([*SENTENCES, LONG], convert_to_tensor=True)
    torch.testing.assert_close(encode(*encoder, [*SENTENCES, LONG]), expected.cpu(), atol=1e-5, rtol=0)
