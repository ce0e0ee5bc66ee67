"""kd_lib.models.load_teacher: packaged teacher, local folders, hub names offline, integrity."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kd_lib import models
from kd_lib.models import PACKAGED_TEACHER_SHA256, TeacherIntegrityError, load_teacher, packaged_teacher_path
from kd_lib.utils import sha256_file


@pytest.fixture(scope="module")
def packaged():
    return load_teacher(num_labels=2)


def test_packaged_teacher_architecture(packaged):
    model, tokenizer = packaged
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_labels) == ("bert", 6, 384, 2)
    encoder_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
    assert encoder_params == 22_713_216  # all-MiniLM-L6-v2: 22.7M parameters
    assert not model.training, "load_teacher returns the model in eval mode"
    enc = tokenizer(["a gripping , funny film", "dull"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tokenizer.cls_token_id == 101
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_packaged_teacher_encoder_is_the_real_pretrained_model(packaged):
    """Similar sentences must be closer than unrelated ones: random weights would not do that."""
    model, tokenizer = packaged
    sents = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    enc = tokenizer(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.7 > 0.2 > sim[0, 2]


def test_num_labels(packaged):
    model, _ = load_teacher(num_labels=4)
    assert model.classifier.out_features == 4
    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        load_teacher(num_labels=1)


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / "teacher"
    shutil.copytree(packaged_teacher_path(), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0xFF  # flip one byte deep inside a tensor
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(models, "packaged_teacher_path", lambda: copy)
    with pytest.raises(TeacherIntegrityError, match=r"refusing to load .*model\.safetensors.*force-reinstall"):
        load_teacher()
    # an explicit hash for a local folder is checked too
    with pytest.raises(TeacherIntegrityError):
        load_teacher(copy, sha256=PACKAGED_TEACHER_SHA256)


def test_recorded_hash_is_the_real_file():
    assert sha256_file(packaged_teacher_path() / "model.safetensors") == PACKAGED_TEACHER_SHA256


@pytest.fixture
def tiny_bert_folder(tmp_path):
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged_teacher_path() / name, folder / name)
    return folder, model


def test_local_folder_loads_same_weights(tiny_bert_folder):
    folder, original = tiny_bert_folder
    model, tokenizer = load_teacher(folder, num_labels=3)
    assert model.config.num_hidden_layers == 2
    enc = tokenizer(["hello world"], return_tensors="pt")
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, original(**enc).logits)
    assert load_teacher(str(folder), num_labels=3, sha256=sha256_file(folder / "model.safetensors"))


def test_folder_without_safetensors_is_refused(tiny_bert_folder):
    folder, _ = tiny_bert_folder
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors weights"):
        load_teacher(folder, num_labels=3)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_teacher(tmp_path / "nope" / "teacher")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_teacher(tmp_path)


def test_hub_name_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"'bert-base-uncased'.*needs a network connection.*pass the folder"):
        load_teacher("bert-base-uncased")
    assert time.perf_counter() - start < 5


def test_hub_name_unreachable_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OSError, match="Hub cannot be reached"):
        load_teacher("google/bert_uncased_L-2_H-128_A-2")


def test_classifier_for_other_label_count_gets_a_new_head(tiny_bert_folder):
    folder, original = tiny_bert_folder  # saved with 3 labels
    model, _ = load_teacher(folder, num_labels=2)
    assert model.classifier.out_features == 2
    torch.testing.assert_close(model.bert.encoder.layer[0].output.dense.weight,
                               original.bert.encoder.layer[0].output.dense.weight)


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_a_damaged_teacher_folder_is_refused_with_the_fix(tiny_bert_folder, damage):
    folder, _ = tiny_bert_folder
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "header":
        data[10:40] = b"\xff" * 30  # bytes overwritten in the JSON header
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))
    with pytest.raises(TeacherIntegrityError, match=r"model\.safetensors is damaged and cannot be read.*save the"):
        load_teacher(folder, num_labels=3)


def test_a_teacher_with_nan_weights_is_refused(tiny_bert_folder):
    from safetensors.torch import load_file, save_file

    folder, _ = tiny_bert_folder
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name].view(-1)[3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TeacherIntegrityError, match="NaN or infinite values"):
        load_teacher(folder, num_labels=3)
