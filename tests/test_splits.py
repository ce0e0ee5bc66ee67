"""kd_lib.splits: the dev split carved from training data, disjoint from the training subsets."""

from __future__ import annotations

import numpy as np
import pytest

from kd_lib.data import load_task
from kd_lib.splits import (
    DEFAULT_TRAIN_LIMIT,
    DEV_RESERVE,
    DEV_SHA256,
    PHRASE_WORDS,
    check_disjoint,
    dev_split,
    largest_train_limit,
    split_digest,
)

TASKS = ("sst2", "ag_news")


@pytest.fixture(scope="module", params=TASKS)
def task_dev(request):
    return request.param, dev_split(request.param)


def test_dev_split_is_the_recorded_one(task_dev):
    task, dev = task_dev
    assert len(dev) == 1000
    assert split_digest(dev) == DEV_SHA256[task]
    assert dev["idx"] == sorted(dev["idx"]) and len(set(dev["idx"])) == 1000
    train = load_task(task)["train"]
    for i in (0, 500, 999):  # every dev row is its training-file row, unchanged
        assert train[dev["idx"][i]] == dev[i]
    labels = np.bincount(dev["label"])
    assert labels.min() >= 0.2 * 1000 if task == "ag_news" else labels.min() >= 0.4 * 1000


@pytest.mark.parametrize("task", TASKS)
def test_seed0_training_subsets_are_nested_and_clear_of_dev(task):
    """load_task's seed-0 subsets from N // 50 + 1 rows up to largest_train_limit lie inside the largest one,
    so none of them shares a row with dev; a subset drawn with another seed does."""
    n_train = len(load_task(task)["train"])
    largest = largest_train_limit(task)
    assert largest == n_train - DEV_RESERVE[task]
    dev = set(dev_split(task)["idx"])
    biggest = set(load_task(task, limit={"train": largest}, seed=0)["train"]["idx"])
    assert not biggest & dev
    for n in (n_train // 50 + 1, 2000, DEFAULT_TRAIN_LIMIT, largest - 1):
        rows = load_task(task, limit={"train": n}, seed=0)["train"]
        assert set(rows["idx"]) <= biggest
        check_disjoint(rows, task)  # does not raise
    other = load_task(task, limit={"train": largest}, seed=1)["train"]
    with pytest.raises(ValueError, match=r"training rows are in .*dev split.*seed=0 and at most"):
        check_disjoint(other, task)


def test_sst2_dev_has_sentences_sharing_no_phrase_with_the_default_subset():
    """Checked by plain substring search, independently of the n-gram sets dev_split uses."""
    dev = dev_split("sst2")["text"]
    used = load_task("sst2", limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]["text"]
    long_rows = [t for t in used if len(t.split()) >= PHRASE_WORDS]
    assert min(len(t.split()) for t in dev) >= 8
    assert not [s for s in dev if any(p in s for p in long_rows)]
    corpus = "\n".join(used)
    assert not [s for s in dev if s in corpus]


def test_dev_split_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        dev_split("imdb")
