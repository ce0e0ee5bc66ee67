"""Shared fixtures: small BERT teachers saved to folders, for fast offline tests."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kd_lib.models import packaged_teacher_path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tiny_bert(folder, num_layers: int = 4, num_labels: int = 2, seed: int = 0, hidden: int = 32):
    """A randomly initialised BERT with the packaged tokenizer, saved as safetensors."""
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, num_labels=num_labels, max_position_embeddings=128)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(packaged_teacher_path() / name, folder / name)
    return model


@pytest.fixture
def tiny_teacher(tmp_path):
    """Folder of a 4-layer, 32-wide random BERT (the stand-in for bert-base-uncased offline)."""
    folder = tmp_path / "tiny-bert"
    save_tiny_bert(folder)
    return folder
