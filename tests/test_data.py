"""kd_lib.data: the offline SST-2 / AG News loaders and their integrity checks."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

from kd_lib.data import DATA_FILES, DataFileError, clean_ag_news_text, data_dir, load_task, verify_data_file


@pytest.fixture(scope="module")
def sst2():
    return load_task("sst2")


@pytest.fixture(scope="module")
def ag_news():
    return load_task("ag_news")


def test_sst2_splits_sizes_and_labels(sst2):
    assert {k: len(v) for k, v in sst2.items()} == {"train": 67_349, "validation": 872}
    assert sst2["train"].features["label"].names == ["negative", "positive"]
    assert sst2["train"].column_names == ["idx", "text", "label"]
    assert Counter(sst2["train"]["label"]) == {0: 29_780, 1: 37_569}
    # the GLUE dev set is roughly balanced: 428 negative, 444 positive
    assert Counter(sst2["validation"]["label"]) == {0: 428, 1: 444}
    assert sst2["train"][0] == {"idx": 0, "text": "when are bears bears and", "label": 1}
    assert sst2["train"]["idx"][:3] == [0, 1, 2]


def test_ag_news_splits_sizes_and_labels(ag_news):
    assert {k: len(v) for k, v in ag_news.items()} == {"train": 10_001, "test": 7_600}
    assert ag_news["test"].features["label"].names == ["World", "Sports", "Business", "Sci/Tech"]
    assert Counter(ag_news["test"]["label"]) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert Counter(ag_news["train"]["label"]) == {0: 2509, 1: 2458, 2: 2496, 3: 2538}


def test_ag_news_escapes_are_cleaned(ag_news):
    for split in ag_news.values():
        for text in split["text"]:
            assert "#39;" not in text and "\\" not in text and "&lt;" not in text and "&gt;" not in text
            assert " quot;" not in text and "amp;" not in text
    assert any("'s " in t for t in ag_news["train"]["text"])


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("It #39;s over. I #39;m leaving", "It's over. I'm leaving"),
        ("for  #36;41.1 billion", "for $41.1 billion"),
        ("Won954.3bn (\\$828m) and", "Won954.3bn ($828m) and"),
        ("the European Union and\\the United States", "the European Union and the United States"),
        ("show up #151;dung", "show up—dung"),
        ("the  quot;new economy quot; and AT amp;T", 'the "new economy" and AT&T'),
        ("Corp. &lt;A HREF=\"http://x\"&gt;KMB.N&lt;/A&gt; said", "Corp. KMB.N said"),
    ],
)
def test_clean_ag_news_text(raw, clean):
    assert clean_ag_news_text(raw) == clean


def test_limit_and_seed_subsample():
    a = load_task("sst2", limit={"train": 500}, seed=1)
    b = load_task("sst2", limit={"train": 500}, seed=1)
    c = load_task("sst2", limit={"train": 500}, seed=2)
    assert len(a["train"]) == 500 and len(a["validation"]) == 872
    assert a["train"]["idx"] == b["train"]["idx"] != c["train"]["idx"]
    assert a["train"]["idx"] == sorted(a["train"]["idx"])  # file order kept
    full = load_task("sst2")["train"]
    row = a["train"][7]
    assert full[row["idx"]]["text"] == row["text"] and full[row["idx"]]["label"] == row["label"]
    both = load_task("ag_news", limit=100)
    assert len(both["train"]) == 100 and len(both["test"]) == 100
    assert len(load_task("sst2", limit=10**9)["validation"]) == 872


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match=r"unknown task 'imdb'; choose one of: ag_news, sst2"):
        load_task("imdb")


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_limit(bad):
    with pytest.raises(ValueError, match="limit"):
        load_task("sst2", limit=bad)
    with pytest.raises(ValueError, match="unknown splits"):
        load_task("sst2", limit={"test": 5})


@pytest.fixture
def data_copy(tmp_path):
    root = tmp_path / "data"
    for rel in DATA_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir() / rel, root / rel)
    return root


def test_missing_file_names_file_and_fix(data_copy, monkeypatch):
    (data_copy / "sst2" / "validation.tsv").unlink()
    monkeypatch.setenv("KD_DATA_DIR", str(data_copy))
    with pytest.raises(DataFileError, match=r"validation\.tsv is missing.*git checkout -- data/sst2/validation\.tsv"):
        load_task("sst2")


def test_altered_file_is_refused(data_copy):
    path = data_copy / "ag_news" / "test.tsv"
    path.write_bytes(path.read_bytes().replace(b"Sports", b"World", 1))
    with pytest.raises(DataFileError, match=r"test\.tsv does not match its recorded sha256.*git checkout"):
        load_task("ag_news", root=data_copy)
    assert verify_data_file("ag_news/train.tsv", data_copy) == data_copy / "ag_news" / "train.tsv"


def test_dynamic_padding(small_data, tokenizer):
    batch = small_data.collate([small_data[0], small_data[1], small_data[2]])
    lengths = [len(small_data.input_ids[i]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert batch["row"].tolist() == [0, 1, 2]
    assert all(len(ids) <= 32 for ids in small_data.input_ids)
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in small_data.input_ids)


def test_cached_logits_stay_aligned_under_shuffling(small_data):
    """Logits that encode each example's label must be found again for every shuffled batch."""
    labels = torch.tensor(small_data.labels)
    cached = torch.nn.functional.one_hot(labels, 2).float() * 10 + torch.arange(len(labels))[:, None] * 1e-3
    seen = []
    for batch in small_data.loader(batch_size=16, shuffle=True, seed=7):
        rows = batch["row"]
        looked_up = cached[rows]
        assert (looked_up.argmax(-1) == batch["labels"]).all()
        torch.testing.assert_close(looked_up[:, 0] % 1, (rows * 1e-3).float() % 1, rtol=0, atol=1e-5)
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(small_data))) and seen != sorted(seen)  # shuffled, complete
