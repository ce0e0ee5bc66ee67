"""BERT → DistilBERT: the weight mapping is exact, layer choices are validated."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertForSequenceClassification

from kd_lib.models import load_teacher
from kd_lib.students import LAYER_MAP, default_student_layers, distilbert_from_bert, narrow_distilbert

SENTENCES = ["a gripping , funny and moving film that never lets up", "dull", "it 's not a bad movie , just long"]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(num_labels=2)


def test_full_depth_student_reproduces_teacher_hidden_states(teacher):
    model, tokenizer = teacher
    student = distilbert_from_bert(model, layers=range(6)).eval()
    assert isinstance(student, DistilBertForSequenceClassification)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        t_hidden = model.bert(**enc, output_hidden_states=True).hidden_states
        s_hidden = student.distilbert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      output_hidden_states=True).hidden_states
    assert len(t_hidden) == len(s_hidden) == 7  # embeddings + 6 layers
    mask = enc["attention_mask"].bool()
    for t_h, s_h in zip(t_hidden, s_hidden, strict=True):
        torch.testing.assert_close(s_h[mask], t_h[mask], atol=1e-5, rtol=0)


def test_half_depth_student_copies_every_other_layer(teacher):
    model, _ = teacher
    student = distilbert_from_bert(model)
    assert student.config.n_layers == 3 and student.config.teacher_layers == [0, 2, 4]
    assert (student.config.dim, student.config.n_heads, student.config.hidden_dim) == (384, 12, 1536)
    for j, i in enumerate([0, 2, 4]):
        s_layer, t_layer = student.distilbert.transformer.layer[j], model.bert.encoder.layer[i]
        for bert_name, distil_name in LAYER_MAP.items():
            s_w, t_w = s_layer.get_submodule(distil_name).weight, t_layer.get_submodule(bert_name).weight
            torch.testing.assert_close(s_w, t_w)
    emb_s, emb_t = student.distilbert.embeddings, model.bert.embeddings
    torch.testing.assert_close(emb_s.word_embeddings.weight, emb_t.word_embeddings.weight)
    torch.testing.assert_close(emb_s.position_embeddings.weight,
                               emb_t.position_embeddings.weight + emb_t.token_type_embeddings.weight[0])
    torch.testing.assert_close(student.pre_classifier.weight, model.bert.pooler.dense.weight)
    torch.testing.assert_close(student.classifier.weight, model.classifier.weight)
    # the student owns its weights: training it must not touch the teacher
    assert student.distilbert.embeddings.word_embeddings.weight.data_ptr() != emb_t.word_embeddings.weight.data_ptr()


def test_random_init_student_has_same_shape_other_weights(teacher):
    model, _ = teacher
    a = distilbert_from_bert(model, init="random", seed=1)
    b = distilbert_from_bert(model, init="random", seed=1)
    t = distilbert_from_bert(model)
    assert a.config.n_layers == 3
    def lin1(m):
        return m.distilbert.transformer.layer[0].ffn.lin1.weight

    torch.testing.assert_close(lin1(a), lin1(b))
    assert not torch.allclose(lin1(a), lin1(t))


def test_default_layers():
    assert default_student_layers(6) == [0, 2, 4]
    assert default_student_layers(12) == [0, 2, 4, 6, 8, 10]
    assert default_student_layers(12, 4) == [0, 3, 6, 9]
    assert default_student_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert default_student_layers(1) == [0]
    with pytest.raises(ValueError, match="between 1 and the teacher's 6"):
        default_student_layers(6, 7)


def test_twelve_layer_teacher_gives_six_layer_student():
    """The bert-base-uncased path, on a small random 12-layer BERT."""
    cfg = BertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(cfg).eval()
    student = distilbert_from_bert(teacher, layers=[0, 2, 4, 7, 9, 11]).eval()
    assert student.config.n_layers == 6
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert student(input_ids=ids).logits.shape == (1, 2)
    full = distilbert_from_bert(teacher, layers=range(12)).eval()
    with torch.no_grad():
        torch.testing.assert_close(full.distilbert(input_ids=ids).last_hidden_state,
                                   teacher.bert(input_ids=ids).last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "layers, message",
    [([0, 6], r"layers \[6\] do not exist in a 6-layer teacher"), ([2, 1], "strictly increasing"),
     ([0, 0, 1], "strictly increasing"), ([], "at least one"), ([-1], "do not exist")],
)
def test_bad_layers(teacher, layers, message):
    with pytest.raises(ValueError, match=message):
        distilbert_from_bert(teacher[0], layers=layers)


def test_non_bert_teacher_is_rejected(teacher):
    student = distilbert_from_bert(teacher[0])
    with pytest.raises(ValueError, match="teacher must be a BERT model"):
        distilbert_from_bert(student)
    with pytest.raises(ValueError, match="init must be"):
        distilbert_from_bert(teacher[0], init="zeros")


def test_narrow_student_shapes_and_parameter_count(teacher):
    teacher, _ = teacher
    student = narrow_distilbert(teacher, num_layers=3, hidden_size=256, num_heads=4, seed=0)
    cfg = student.config
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.hidden_dim) == (3, 256, 4, 1024)
    assert cfg.vocab_size == teacher.config.vocab_size and cfg.num_labels == teacher.config.num_labels
    v, p, d, f = cfg.vocab_size, cfg.max_position_embeddings, 256, 1024
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attention, FFN, 2 LayerNorms
    expected = v * d + p * d + 2 * d + 3 * layer + (d * d + d) + (d * 2 + 2)
    assert sum(x.numel() for x in student.parameters()) == expected
    again = narrow_distilbert(teacher, num_layers=3, hidden_size=256, num_heads=4, seed=0)
    assert torch.equal(student.distilbert.embeddings.word_embeddings.weight,
                       again.distilbert.embeddings.word_embeddings.weight)
    ids = torch.tensor([[101, 2023, 2003, 102]])
    assert student(input_ids=ids).logits.shape == (1, teacher.config.num_labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hidden_size": 250, "num_heads": 4}, "divisible by num_heads"),
     ({"num_layers": 0}, "num_layers must be a positive int")],
)
def test_narrow_student_bad_arguments(teacher, kwargs, message):
    teacher, _ = teacher
    with pytest.raises(ValueError, match=message):
        narrow_distilbert(teacher, **kwargs)
