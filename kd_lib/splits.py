"""The dev split: labelled examples carved from a task's *training* file, for making choices.

Every choice a run makes -- learning rate, temperature, alpha, epochs, a recipe -- is made on
``dev``; the task's own held-out split (SST-2 ``validation``, AG News ``test``) is reported once,
at the end. ``dev`` is disjoint from every training subset the course draws with seed 0:

* ``load_task(task, limit={"train": n}, seed=0)`` draws ``n`` rows with NumPy's partial
  Fisher-Yates shuffle, so for ``n`` from ``N // 50`` to ``N - DEV_RESERVE[task]`` the subsets are
  nested: each lies inside the subset of ``N - DEV_RESERVE[task]`` rows (checked by the tests).
* The rows outside that largest subset are the *reserve*; ``dev`` is a seeded sample of the
  reserve, and its rows are recorded by a sha256 (:data:`DEV_SHA256`), so a change in NumPy or
  in the data cannot silently move it.

SST-2's training file mixes whole sentences with the phrases parsed out of them, while its
validation split has whole sentences only; ``dev`` keeps reserve rows of at least
``DEV_MIN_WORDS`` words so that it looks like validation. The treebank parsed every training
sentence into phrases that sit elsewhere in the training file, so dev also drops the sentences
that share a phrase of ``PHRASE_WORDS`` or more words with the default training subset (they would
be partly seen). ``python -m kd_lib.splits`` prints the sizes, lengths and the (zero) overlap.

The main job's ``full`` preset trains on every training row, dev included: the choices are made
by then, and the final model gets all the data.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from kd_lib.data import TASKS, data_dir, eval_split, load_task

__all__ = [
    "DEFAULT_TRAIN_LIMIT",
    "DEV_MIN_WORDS",
    "DEV_RESERVE",
    "DEV_SEED",
    "DEV_SHA256",
    "DEV_SIZE",
    "PHRASE_WORDS",
    "check_disjoint",
    "dev_split",
    "largest_train_limit",
    "reserve_rows",
    "split_digest",
]

DEV_RESERVE: dict[str, int] = {"sst2": 5000, "ag_news": 1500}  # training rows no seed-0 subset uses
DEV_SIZE: dict[str, int] = {"sst2": 1000, "ag_news": 1000}
DEV_MIN_WORDS: dict[str, int] = {"sst2": 8, "ag_news": 1}
DEV_SEED = 0  # the sample of the reserve
DEFAULT_TRAIN_LIMIT = 8000  # the main job's default training subset, which dev shares no phrase with
PHRASE_WORDS = 4  # shortest shared phrase that disqualifies a dev candidate
# sha256 of the dev rows, one "idx<TAB>label<TAB>text" line each (see split_digest)
DEV_SHA256: dict[str, str] = {
    "sst2": "0f18e9c746381761d679b0e67211d29f2b50eafcc5377eec0776ecc35c9b0b11",
    "ag_news": "96ab2ea6a250a26c42643f916b081261916e132e500437a0654c64520cbcdee1",
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(sorted(TASKS))}")


def largest_train_limit(task: str) -> int:
    """The largest ``limit={"train": n}`` (with seed 0) whose rows stay clear of ``dev`` (from ``n = N // 50`` up).

    Course infrastructure (the split every choice is made on; see ``data/README.md``), not taught in a notebook.
    """
    _check_task(task)
    return len(load_task(task)["train"]) - DEV_RESERVE[task]


def reserve_rows(task: str) -> np.ndarray:
    """Row numbers (``idx``, sorted) of the training rows that no seed-0 subset of ``N // 50`` to
    :func:`largest_train_limit` rows draws (smaller subsets come from another sampler).

    Course infrastructure (the split every choice is made on; see ``data/README.md``), not taught in a notebook.
    """
    _check_task(task)
    n_train = len(load_task(task)["train"])
    used = load_task(task, limit={"train": n_train - DEV_RESERVE[task]}, seed=0)["train"]["idx"]
    return np.setdiff1d(np.arange(n_train), np.asarray(used))


def split_digest(dataset) -> str:
    """sha256 (hex) of a split's rows, one ``idx<TAB>label<TAB>text`` line each, in order.

    Course infrastructure (the split every choice is made on; see ``data/README.md``), not taught in a notebook.
    """
    h = hashlib.sha256()
    for i, y, text in zip(dataset["idx"], dataset["label"], dataset["text"], strict=True):
        h.update(f"{i}\t{y}\t{text}\n".encode())
    return h.hexdigest()


def _ngrams(words: list[str], shortest: int) -> set[str]:
    """Every run of at least ``shortest`` consecutive words, joined by spaces."""
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + shortest, len(words) + 1)}


def _shares_phrase(text: str, train_rows: set[str], train_ngrams: set[str]) -> bool:
    """Whether ``text`` contains a training row of 4+ words, or is itself part of a training row."""
    return bool(_ngrams(text.split(), PHRASE_WORDS) & train_rows) or text in train_ngrams


def _candidates(task: str, texts: list[str]) -> dict[str, list[int]]:
    """Reserve rows long enough for dev (``"long"``), and those of them sharing no phrase (``"clean"``)."""
    used = load_task(task, limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]["text"]
    rows = {t for t in used if len(t.split()) >= PHRASE_WORDS}
    ngrams = set().union(*(_ngrams(t.split(), DEV_MIN_WORDS[task]) for t in used))
    long = [int(i) for i in reserve_rows(task) if len(texts[i].split()) >= DEV_MIN_WORDS[task]]
    return {"long": long, "clean": [i for i in long if not _shares_phrase(texts[i], rows, ngrams)]}


def dev_split(task: str, verify: bool = True):
    """The task's dev split: a :class:`datasets.Dataset` with ``idx`` (row of the training file),
    ``text`` and ``label``, in file order (SST-2: 1,000 sentences; AG News: 1,000 articles).

    Candidates are the reserve rows of at least ``DEV_MIN_WORDS`` words that share no phrase of
    ``PHRASE_WORDS`` or more words with the default preset's training subset (they contain none of
    its rows and are part of none); ``DEV_SIZE`` of them are drawn with ``DEV_SEED``.

    Raises:
        RuntimeError: with ``verify``, if the rows differ from the recorded :data:`DEV_SHA256`.

    Computed once per process and data folder (a few seconds), then returned from memory.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    _check_task(task)
    return _dev_split(task, verify, str(data_dir()))


@functools.cache
def _dev_split(task: str, verify: bool, root: str):
    train = load_task(task, root=root)["train"]
    eligible = _candidates(task, train["text"])["clean"]
    if len(eligible) < DEV_SIZE[task]:
        raise RuntimeError(f"only {len(eligible)} reserve rows qualify for {task}'s dev split; "
                           f"lower DEV_MIN_WORDS[{task!r}] or raise DEV_RESERVE[{task!r}]")
    chosen = np.sort(np.random.default_rng(DEV_SEED).choice(eligible, size=DEV_SIZE[task], replace=False))
    dev = train.select(chosen.tolist())
    if verify and split_digest(dev) != DEV_SHA256[task]:
        raise RuntimeError(f"{task}'s dev split is not the recorded one (sha256 {split_digest(dev)[:12]}…, "
                           f"expected {DEV_SHA256[task][:12]}…): the data or NumPy's sampling changed; "
                           "check data/ with `python -m kd_lib check` and NumPy's version")
    return dev


def check_disjoint(dataset, task: str) -> None:
    """Raise ``ValueError`` if a training ``dataset`` (with an ``idx`` column) shares rows with ``task``'s dev.

    Taught in notebook 05, section 3 (Task-specific distillation, step by step).
    """
    shared = np.intersect1d(np.asarray(dataset["idx"]), np.asarray(dev_split(task)["idx"]))
    if len(shared):
        raise ValueError(f"{len(shared)} training rows are in {task}'s dev split (e.g. idx {shared[:3].tolist()}); "
                         f"draw the training subset with seed=0 and at most {largest_train_limit(task)} rows")


def _summary() -> None:
    """Print each task's dev split: size, labels, words per example, and SST-2's phrase overlap."""
    for task in TASKS:
        data, dev = load_task(task), dev_split(task)
        held = data[eval_split(task)]
        words = {name: np.mean([len(t.split()) for t in s["text"]]) for name, s in (("dev", dev), ("held", held))}
        counts = np.bincount(dev["label"], minlength=len(TASKS[task].label_names)).tolist()
        print(f"{task}: dev {len(dev)} rows of training file (labels {counts}), {words['dev']:.1f} words on average; "
              f"{eval_split(task)} {len(held)} rows, {words['held']:.1f} words; sha256 {split_digest(dev)}")
        found = _candidates(task, data["train"]["text"])
        print(f"  reserve {DEV_RESERVE[task]:,} rows, {len(found['long']):,} of {DEV_MIN_WORDS[task]}+ words, "
              f"{len(found['clean']):,} of them sharing no phrase of {PHRASE_WORDS}+ words with the default "
              f"{DEFAULT_TRAIN_LIMIT:,}-row training subset")
        if task == "sst2":
            used = load_task(task, limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]["text"]
            phrases = [t for t in used if len(t.split()) >= PHRASE_WORDS]
            hit = sum(any(p in s for p in phrases) for s in dev["text"])
            corpus = "\n".join(used)
            inside = sum(s in corpus for s in dev["text"])
            print(f"  against the default {DEFAULT_TRAIN_LIMIT:,}-row training subset, by plain substring search: "
                  f"{hit} of {len(dev)} dev rows contain one of its rows of {PHRASE_WORDS}+ words, {inside} are "
                  "part of one of its rows")


if __name__ == "__main__":
    _summary()
