"""The caches: cache-or-train with one completion record, logits with their ids, atomic model folders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DistilBertForSequenceClassification

from kd_lib.cache import (
    RECORD,
    atomic_save_pretrained,
    cached_logits,
    cached_model,
    load_logits,
    save_logits,
    verify_entry,
)
from kd_lib.utils import sha256_file
from tests.conftest import tiny_student


def test_logits_cache_roundtrip_and_mismatch(tmp_path, capsys):
    path = tmp_path / "logits.safetensors"
    logits, idx = torch.randn(5, 3), [10, 11, 15, 20, 21]
    save_logits(path, logits, idx, {"teacher": "a", "task": "sst2"})
    got, got_idx = load_logits(path, expected_idx=idx, expected_meta={"teacher": "a", "task": "sst2"})
    torch.testing.assert_close(got, logits)
    assert got_idx.tolist() == idx
    assert load_logits(path, expected_idx=[10, 11, 15, 20, 22]) is None  # other examples
    assert load_logits(path, expected_meta={"teacher": "b", "task": "sst2"}) is None  # other teacher
    path.write_bytes(b"garbage")
    assert load_logits(path) is None and not path.exists()  # corrupt: removed, recomputed
    assert f"logits cache {path} is damaged" in capsys.readouterr().err
    assert load_logits(tmp_path / "absent.safetensors") is None
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        save_logits(path, torch.randn(4, 3), idx, {})


def test_atomic_save_pretrained_replaces_whole_folder(tmp_path):
    folder = tmp_path / "student"
    atomic_save_pretrained(folder, tiny_student(seed=1))
    first = (folder / "model.safetensors").read_bytes()
    atomic_save_pretrained(folder, tiny_student(seed=2))
    assert (folder / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary folders left
    loaded = DistilBertForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    torch.testing.assert_close(loaded.classifier.weight, tiny_student(seed=2).classifier.weight)


def _load(folder):
    return DistilBertForSequenceClassification.from_pretrained(folder, use_safetensors=True)


def test_cached_model_trains_once_then_loads(tmp_path):
    calls = []

    def train(scratch):
        calls.append(scratch)
        assert scratch.is_dir() and scratch.name == "entry.partial"  # a place for checkpoints
        model = tiny_student(seed=4)
        return model, (model,), {"accuracy": 0.5, "settings": {"lr": 1e-3}}

    folder = tmp_path / "models" / "entry"
    first, info = cached_model(folder, _load, train)
    assert not info["from_cache"] and info["folder"] == str(folder) and info["accuracy"] == 0.5
    record = json.loads((folder / RECORD).read_text())
    assert {k: v for k, v in record.items() if k != "files"} == {"accuracy": 0.5, "settings": {"lr": 1e-3}}
    assert record["files"] == {p.name: sha256_file(p) for p in folder.iterdir() if p.name != RECORD}  # every file
    assert not (tmp_path / "models" / "entry.partial").exists(), "the scratch folder is removed"
    second, info = cached_model(folder, _load, train)
    assert info["from_cache"] and len(calls) == 1
    torch.testing.assert_close(second.classifier.weight, first.classifier.weight)


def test_an_interrupted_training_leaves_no_entry(tmp_path):
    folder = tmp_path / "entry"

    def crash(scratch):
        (scratch / "checkpoint.pt").write_bytes(b"progress so far")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_model(folder, _load, crash)
    assert not folder.exists() and (tmp_path / "entry.partial" / "checkpoint.pt").is_file()  # kept to resume

    def resume(scratch):
        assert (scratch / "checkpoint.pt").read_bytes() == b"progress so far"
        model = tiny_student()
        return model, (model,), {}

    _, info = cached_model(folder, _load, resume)
    assert not info["from_cache"] and (folder / RECORD).is_file()
    (folder / RECORD).unlink()  # a folder without its record is not an entry: trained again
    _, info = cached_model(folder, _load, lambda scratch: (tiny_student(), (tiny_student(),), {"again": True}))
    assert not info["from_cache"] and info["again"]


def test_cached_logits_computes_once_for_the_same_ids_and_meta(small_data, tmp_path):
    model, path = tiny_student(), tmp_path / "logits.safetensors"
    first, from_cache = cached_logits(model, small_data, path, {"teacher": "t"}, batch_size=32)
    assert not from_cache and first.shape == (len(small_data), 2)
    again, from_cache = cached_logits(None, small_data, path, {"teacher": "t"})  # no model needed on a hit
    assert from_cache and torch.equal(again, first)
    _, from_cache = cached_logits(model, small_data, path, {"teacher": "other"})
    assert not from_cache


def _flip_byte(path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def _nan_into_weights(path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    name = next(iter(tensors))
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, path)


@pytest.mark.parametrize("damage", ["header", "truncated", "nan", "record", "missing"])
def test_a_damaged_entry_is_reported_discarded_and_built_again(tmp_path, capsys, damage):
    folder, calls = tmp_path / "entry", []

    def train(scratch):
        calls.append(1)
        model = tiny_student(seed=len(calls))
        return model, (model,), {"run": len(calls)}

    cached_model(folder, _load, train)
    weights = folder / "model.safetensors"
    if damage == "header":
        _flip_byte(weights, 20)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "nan":
        _nan_into_weights(weights)  # a well-formed file with other values: only the recorded hash can tell
    elif damage == "record":
        (folder / RECORD).write_text('{"run": 1, "fi')
    else:
        (folder / "config.json").unlink()
    with pytest.raises(ValueError):
        verify_entry(folder)
    _, info = cached_model(folder, _load, train)
    assert not info["from_cache"] and info["run"] == 2 and len(calls) == 2
    err = capsys.readouterr().err
    assert f"cache entry {folder} is damaged" in err and "building it again" in err
    assert verify_entry(folder)["run"] == 2


LOCK_SCRIPT = """
import sys, time, json
from pathlib import Path
from kd_lib.cache import cached_model
from transformers import DistilBertConfig, DistilBertForSequenceClassification

folder, log = Path(sys.argv[1]), Path(sys.argv[2])

def train(scratch):
    with open(log, "a") as f:
        f.write("train\\n")
    time.sleep(2)  # long enough for the other process to arrive and wait
    model = DistilBertForSequenceClassification(DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    return model, (model,), {"by": sys.argv[3]}

_, info = cached_model(folder, lambda f: DistilBertForSequenceClassification.from_pretrained(f), train)
print(json.dumps({"by": info["by"], "from_cache": info["from_cache"]}))
"""


def test_two_processes_asking_for_one_entry_train_it_once(tmp_path):
    """The second waits on the entry's lock, then loads what the first wrote: no work twice, no shared scratch."""
    import subprocess
    import sys

    script, log = tmp_path / "lock.py", tmp_path / "log.txt"
    script.write_text(LOCK_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "entry"), str(log), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert log.read_text().count("train") == 1
    assert sorted(r["from_cache"] for r in results) == [False, True]
    assert results[0]["by"] == results[1]["by"]
