"""The course's offline text data: SST-2, AG News and Jane Austen, loaded from ``data/`` with sha256 checks.

``load_task("sst2")`` returns a :class:`datasets.DatasetDict` whose splits have three
columns: ``idx`` (the row's position in the original file, a stable example id), ``text``
and ``label`` (a :class:`datasets.ClassLabel` with the class names).

``load_austen()`` returns Jane Austen's six novels as chapters of plain prose for language
modelling, split deterministically into ``train`` and ``heldout`` chapters.
"""

from __future__ import annotations

import csv
import html
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kd_lib.utils import sha256_file_cached

__all__ = [
    "AUSTEN_FILES",
    "AUSTEN_NOVELS",
    "DATA_FILES",
    "TASKS",
    "DataFileError",
    "EncodedDataset",
    "austen_chapters",
    "clean_ag_news_text",
    "data_dir",
    "eval_split",
    "load_austen",
    "load_task",
    "seeded_loader",
    "set_label_names",
    "verify_data_file",
]

# The recorded sha256 of every data file the course ships (relative to data/).
DATA_FILES: dict[str, str] = {
    "sst2/train.tsv": "8621df47b79e9b3fa010405ef4dd506cbf483319cf851f20f2b6773f61d387b5",
    "sst2/validation.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "ag_news/train.tsv": "7a0811e0006080bf4de17752c5466450ff3db778be71bc5bcf3c4e99b5f0803d",
    "ag_news/test.tsv": "e4217edd939f618f24a42b0988c56ec3cddf656d8dc279b9afa443dd1ab6a1c1",
    # Jane Austen's six completed novels (unlabelled prose for language modelling)
    "austen/emma.txt": "7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe",
    "austen/mansfield_park.txt": "98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9",
    "austen/northanger_abbey.txt": "51f91bbe0517db8e65cff009b097ce0a1836124c4e0532ac19e6c0cad982abed",
    "austen/persuasion.txt": "8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a",
    "austen/pride_and_prejudice.txt": "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d",
    "austen/sense_and_sensibility.txt": "105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09",
}
AUSTEN_FILES: dict[str, str] = {rel: sha for rel, sha in DATA_FILES.items() if rel.startswith("austen/")}
AUSTEN_NOVELS: tuple[str, ...] = tuple(Path(rel).stem for rel in AUSTEN_FILES)


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's splits live and how to read them."""

    splits: dict[str, str]  # split name -> file relative to data/
    label_names: tuple[str, ...]
    has_header: bool
    labels_are_names: bool  # the file stores "Sports", not 1


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        splits={"train": "sst2/train.tsv", "validation": "sst2/validation.tsv"},
        label_names=("negative", "positive"),
        has_header=True,
        labels_are_names=False,
    ),
    "ag_news": TaskSpec(
        splits={"train": "ag_news/train.tsv", "test": "ag_news/test.tsv"},
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        has_header=False,
        labels_are_names=True,
    ),
}


def eval_split(task: str) -> str:
    """The labelled held-out split a task is evaluated on (``validation`` or ``test``).

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(sorted(TASKS))}")
    return next(s for s in TASKS[task].splits if s != "train")


def set_label_names(model, task: str):
    """Write ``task``'s class names into ``model.config`` (``id2label``/``label2id``), so a saved model
    reports ``"positive"`` rather than ``LABEL_1``; returns the model.

    Taught in notebook 04, section 3 (Fine-tuning the teacher on SST-2).
    """
    label_names = TASKS[task].label_names
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    return model


class DataFileError(FileNotFoundError):
    """A data file is missing or does not match its recorded sha256. Taught in notebook 04, section 1 (Tokenisation)."""


def data_dir() -> Path:
    """The folder holding the course data: ``$KD_DATA_DIR`` if set, else the repository's ``data/``.

    Taught in notebook 04, section 1 (Tokenisation).
    """
    env = os.environ.get("KD_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def verify_data_file(relpath: str, root: str | os.PathLike | None = None) -> Path:
    """Return the path of ``relpath`` under the data folder after checking its sha256.

    Raises:
        DataFileError: the file is missing or altered; the message names it and the fix.

    Taught in notebook 04, section 1 (Tokenisation).
    """
    recorded = DATA_FILES.get(relpath)
    if recorded is None:
        raise ValueError(f"unknown data file {relpath!r}; known files: {sorted(DATA_FILES)}")
    root = Path(root) if root is not None else data_dir()
    path = root / relpath
    if not path.is_file():
        raise DataFileError(
            f"data file {path} is missing. Restore it from a fresh clone of the course "
            f"repository (git checkout -- data/{relpath}), or set KD_DATA_DIR to the folder "
            "that holds sst2/, ag_news/ and austen/."
        )
    actual = sha256_file_cached(path)
    if actual != recorded:
        raise DataFileError(
            f"data file {path} does not match its recorded sha256 (expected "
            f"{recorded[:12]}…, got {actual[:12]}…): it was altered or "
            f"truncated. Restore it with `git checkout -- data/{relpath}` (or re-copy it "
            "from a fresh clone)."
        )
    return path


_NUMERIC_ENTITY = re.compile(r" ?#(\d{2,4});")
_NAMED_ENTITY = re.compile(r" ?(?<![&\w])(quot|amp|lt|gt);")  # "&" lost, as in " quot;" or "AT amp;T"
_TAG = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")


def _numeric_entity(match: re.Match[str]) -> str:
    code = int(match.group(1))
    if 128 <= code <= 159:  # Windows-1252 code points smuggled in as numbers (#151; = em dash)
        return bytes([code]).decode("cp1252", errors="replace")
    return chr(code)


def clean_ag_news_text(text: str) -> str:
    """Undo AG News' escapes: ``#39;`` for ``'``, ``\\$`` for ``$``, ``\\`` for a line break,
    HTML entities and stray tags.

    >>> clean_ag_news_text("It #39;s \\\\$5 a day.\\\\Reuters &lt;b&gt;")
    "It's $5 a day. Reuters"

    Taught in notebook 04, section 4 (The teacher's soft labels).
    """
    text = _NUMERIC_ENTITY.sub(_numeric_entity, text)
    text = _NAMED_ENTITY.sub(lambda m: f"&{m.group(1)};", text)
    text = text.replace("\\$", "$").replace("\\", " ")
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _read_split(spec: TaskSpec, path: Path, is_ag_news: bool) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    name_to_id = {name: i for i, name in enumerate(spec.label_names)}
    with open(path, encoding="utf-8", newline="") as f:
        # SST-2 is raw TSV (quotes are text); AG News quotes fields that contain quotes.
        quoting = csv.QUOTE_MINIMAL if is_ag_news else csv.QUOTE_NONE
        reader = csv.reader(f, delimiter="\t", quoting=quoting)
        if spec.has_header:
            next(reader)
        for lineno, row in enumerate(reader, start=2 if spec.has_header else 1):
            if len(row) != 2:
                raise DataFileError(f"{path}, row {lineno}: expected 2 tab-separated fields, got {len(row)}")
            text, label = row
            labels.append(name_to_id[label] if spec.labels_are_names else int(label))
            texts.append(clean_ag_news_text(text) if is_ag_news else text.strip())
    return texts, labels


def load_task(
    name: str,
    limit: int | Mapping[str, int] | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
):
    """Load a course task as a :class:`datasets.DatasetDict`.

    Args:
        name: ``"sst2"`` (splits ``train``, ``validation``) or ``"ag_news"`` (``train``, ``test``).
        limit: keep at most this many examples per split (an int for every split, or a
            mapping such as ``{"train": 2000}`` for some splits), drawn at random with ``seed``
            and kept in file order.
        seed: seed of the subsample.
        root: data folder; defaults to :func:`data_dir`.

    Returns:
        ``DatasetDict`` with columns ``idx`` (int64, row in the original file), ``text`` (str)
        and ``label`` (``ClassLabel`` with the task's names).

    Taught in notebook 04, section 1 (Tokenisation).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    spec = TASKS[name]
    if isinstance(limit, Mapping):
        unknown = set(limit) - set(spec.splits)
        if unknown:
            raise ValueError(f"limit names unknown splits {sorted(unknown)} for {name!r}; splits: {list(spec.splits)}")
    features = Features(
        {"idx": Value("int64"), "text": Value("string"), "label": ClassLabel(names=list(spec.label_names))}
    )
    splits = {}
    for split, relpath in spec.splits.items():
        texts, labels = _read_split(spec, verify_data_file(relpath, root), name == "ag_news")
        idx = np.arange(len(texts))
        n = limit.get(split) if isinstance(limit, Mapping) else limit
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ValueError(f"limit must be a positive int (or a mapping of split -> int); got {n!r}")
            if n < len(idx):
                idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=n, replace=False))
        splits[split] = Dataset.from_dict(
            {"idx": idx.tolist(), "text": [texts[i] for i in idx], "label": [labels[i] for i in idx]},
            features=features,
        )
    return DatasetDict(splits)


_CHAPTER = re.compile(r"^(?:CHAPTER|Chapter) (?:[IVXLC]+|\d+)\.?$", re.M)
_VOLUME = re.compile(r"^VOLUME [IVX]+$", re.M)
_END = re.compile(r"^(?:THE END|FINIS|Finis)$|^A NOTE ON THE TEXT$", re.M)
_ITALICS = re.compile(r"_([^_]+)_")


def austen_chapters(text: str) -> list[str]:
    """Split a novel as printed into its chapters, as plain prose.

    Stripped: the front matter before the first chapter heading (title, author, Northanger
    Abbey's advertisement), the chapter and volume headings, everything from the closing
    ``THE END``/``FINIS`` line or Northanger Abbey's editorial "A NOTE ON THE TEXT" on, and the
    underscores that mark italics (``_them_`` becomes ``them``). The printed line breaks inside a
    paragraph become spaces; paragraphs are separated by one ``"\\n"``.

    Returns:
        The chapters in reading order (Emma's three volumes run on: 18 + 18 + 19 chapters).

    Taught in notebook 09, section 1 (The text: Jane Austen's six novels).
    """
    end = _END.search(text)
    body = text[: end.start()] if end else text
    headings = list(_CHAPTER.finditer(body))
    if not headings:
        raise ValueError("text has no chapter heading ('CHAPTER I' or 'Chapter 1' on a line of its own)")
    chapters = []
    for here, after in zip(headings, [*headings[1:], None], strict=True):
        raw = _VOLUME.sub("", body[here.end() : after.start() if after else len(body)])
        paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", raw))
        chapters.append(_ITALICS.sub(r"\1", "\n".join(p for p in paragraphs if p)))
    return chapters


def load_austen(heldout_every: int = 10, root: str | os.PathLike | None = None):
    """Jane Austen's six novels as chapters, split into ``train`` and ``heldout`` chapters.

    The split is deterministic and spread over every novel: chapter ``k`` (1-based within its
    novel) is held out when ``k`` is a multiple of ``heldout_every`` -- with the default 10,
    25 of the 269 chapters (9 %): chapters 10, 20, … of each novel.

    Args:
        heldout_every: hold out every ``heldout_every``-th chapter of each novel; an int >= 2.
        root: data folder; defaults to :func:`data_dir`. Every file is sha256-checked.

    Returns:
        ``DatasetDict`` with splits ``train`` and ``heldout`` and columns ``idx`` (int64, the
        chapter's position among all 269 in :data:`AUSTEN_NOVELS` order), ``novel`` (file stem,
        e.g. ``"emma"``), ``chapter`` (1-based number within the novel) and ``text``.

    Taught in notebook 09, section 1 (The text: Jane Austen's six novels).
    """
    from datasets import Dataset, DatasetDict, Features, Value

    if isinstance(heldout_every, bool) or not isinstance(heldout_every, int) or heldout_every < 2:
        raise ValueError(f"heldout_every must be an int >= 2 (hold out every k-th chapter); got {heldout_every!r}")
    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    idx = 0
    for relpath in AUSTEN_FILES:
        novel = Path(relpath).stem
        chapters = austen_chapters(verify_data_file(relpath, root).read_text(encoding="utf-8"))
        for number, text in enumerate(chapters, start=1):
            split = "heldout" if number % heldout_every == 0 else "train"
            rows[split].append({"idx": idx, "novel": novel, "chapter": number, "text": text})
            idx += 1
    features = Features(
        {"idx": Value("int64"), "novel": Value("string"), "chapter": Value("int64"), "text": Value("string")}
    )
    return DatasetDict({name: Dataset.from_list(items, features=features) for name, items in rows.items()})


def seeded_loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` batched by its own ``collate``; shuffled by a generator seeded by ``seed``.

    Taught in notebook 04, section 1 (Tokenisation).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=dataset.collate
    )


class EncodedDataset:
    """A tokenised split for PyTorch: item ``i`` is ``{"input_ids", "label", "row"}``.

    ``row`` is the item's position in this dataset: cached teacher logits are stored in the
    same order, so ``cached[batch["row"]]`` stays aligned however the loader shuffles.
    Sequences are truncated to ``max_length`` but not padded: :func:`collate` pads each batch
    only to its own longest sequence (dynamic padding).

    Taught in notebook 04, section 1 (Tokenisation).
    """

    def __init__(self, split, tokenizer, max_length: int = 64) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
            raise ValueError(f"max_length must be an int >= 8 (tokens); got {max_length!r}")
        enc = tokenizer(list(split["text"]), truncation=True, max_length=max_length)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.labels: list[int] = list(split["label"])
        self.idx: list[int] = list(split["idx"]) if "idx" in split.column_names else list(range(len(self.labels)))
        self.pad_token_id: int = tokenizer.pad_token_id
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict:
        return {"input_ids": self.input_ids[row], "label": self.labels[row], "row": row}

    def collate(self, items: list[dict]) -> dict:
        """Pad a list of items to the longest one: ``input_ids``/``attention_mask`` ``[B, L]``,
        ``labels`` and ``row`` ``[B]``."""
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([it["label"] for it in items]),
            "row": torch.tensor([it["row"] for it in items]),
        }

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader with dynamic padding; shuffled with a generator seeded by ``seed``."""
        return seeded_loader(self, batch_size, shuffle, seed)
