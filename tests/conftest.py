"""Shared fixtures: small BERT teachers saved to folders, for fast offline tests; scripts/ loaded by name."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from kd_lib.data import EncodedDataset, load_task
from kd_lib.models import packaged_teacher_path

# the session's cache folder, set by the repository's conftest.py before this file is imported (tests that
# monkeypatch KD_CACHE_DIR later do not change it)
SESSION_CACHE = os.environ.get("KD_CACHE_DIR")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """The module ``scripts/<name>.py`` (scripts/ is not a package), executed afresh."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="session")
def smollm2_built(tmp_path_factory):
    """``(root, (model, tokenizer, info))``: SmolLM2 de-quantised into a fresh cache root, once per session
    (about 25 s); tests that run the LLM job in a subprocess point ``KD_CACHE_DIR`` at ``root``.

    The built entry is then copied into the session's ``$KD_CACHE_DIR`` (the repository conftest's
    temporary folder, read here before any test changes it), so the Part IV notebooks of the same session
    load it instead of de-quantising the teacher a second time."""
    from kd_lib.llm_teacher import load_llm_teacher

    root = tmp_path_factory.mktemp("kd-cache-smollm2")
    built = load_llm_teacher(cache_root=root)
    entry = Path(built[2]["folder"])
    if SESSION_CACHE:
        target = Path(SESSION_CACHE) / entry.relative_to(root)
        if not target.exists():  # under xdist another worker may be copying it too: each its own scratch
            scratch = target.with_name(f"{target.name}.copying-{os.getpid()}")
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(entry, scratch)
            try:
                os.replace(scratch, target)
            except OSError:  # the other worker's copy arrived first
                shutil.rmtree(scratch, ignore_errors=True)
    return root, built


@pytest.fixture(scope="module")
def tokenizer():
    """The packaged teacher's WordPiece tokenizer."""
    return AutoTokenizer.from_pretrained(packaged_teacher_path())


@pytest.fixture(scope="module")
def small_data(tokenizer):
    """96 SST-2 training sentences, tokenised to at most 32 tokens."""
    split = load_task("sst2", limit={"train": 96}, seed=3)["train"]
    return EncodedDataset(split, tokenizer, max_length=32)


def tiny_student(seed: int = 0) -> DistilBertForSequenceClassification:
    """A 2-layer, 32-wide random DistilBERT classifier (fast to train on a CPU)."""
    torch.manual_seed(seed)
    cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=2)
    return DistilBertForSequenceClassification(cfg)


class TokenBlocks:
    """Token blocks of unequal length with LMBlocks' interface (``input_ids``, ``loader``)."""

    def __init__(self, vocab_size: int, lengths=(7, 5, 7, 3), seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]
        self.labels = [[*ids[1:], -100] for ids in self.input_ids]

    def collate(self, rows):
        length = max(len(self.input_ids[r]) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(self.input_ids[r])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(self.input_ids[r]), torch.tensor(self.labels[r]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "row": torch.tensor(rows)}

    def loader(self, batch_size):
        rows = list(range(len(self.input_ids)))
        return [self.collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
