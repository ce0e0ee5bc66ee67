"""Choose the main job's recipes on the dev split -- never on validation or test.

    python scripts/choose_recipe.py [--output runs/recipe_search.json] [--seeds 0 1 2] [--candidates NAME ...]
    python scripts/choose_recipe.py --what teacher [--task sst2|ag_news] [--seeds 0 1 2]

``--what student`` (the default): the default preset's teacher (cached in $KD_CACHE_DIR, fine-tuned
if missing) labels its 8,000 training sentences once; then the 3-layer student of
``python -m kd_lib distill`` is trained with each candidate recipe exactly as the main job trains
it, and scored on the dev split (``kd_lib.splits.dev_split("sst2")``, 1,000 sentences carved from
the training file, disjoint from the 8,000). About 3 to 7 min per training run on a 2-core CPU.
The candidates vary the temperature and alpha and, with ``+ transfer``, add a *transfer set*: the
rows of the seed-0 draw of 16,000 training rows beyond the 8,000 (7,307 of them once the rows sharing
a phrase of 4+ words with a dev sentence are dropped, so that dev stays unseen), labels withheld,
learned from the teacher's soft targets only (``kd_lib.transfer``); one epoch over both is about the
incumbent's number of steps, two epochs twice that. Other candidates change one thing at the same
wall time -- the student's learning rate, or which teacher layers it copies -- train a third epoch, or
add notebook 06's intermediate-layer terms (``features``: hidden states or attention maps, over the
teacher's features cached in memory once).
``--candidates`` limits round 1 to the named challengers. ``--dev unseen`` scores the students on the
*unseen* training sentences instead (:func:`unseen_rows`: every training row of 8+ words outside the
8,000 that shares no phrase of 4+ words with them, 11,937 sentences; dev is 1,000 of them)
-- twelve times dev's size, so a smaller difference shows beyond the noise; the transfer candidates,
which train on some of those rows, are left out of that search.

``--what teacher``: the teacher's fine-tuning learning rate -- the default preset's SST-2 teacher
(8,000 sentences, 1 epoch) or, with ``--task ag_news``, notebook 04's AG News teacher (2,000
articles, 1 epoch) -- each candidate fine-tuned and scored on that task's dev split. The seed varies
the new classifier head, the batch order and dropout; every seed trains on the *same* training
subset (drawn with seed 0, the only subsets disjoint from dev). Seed 0 is exactly the cached
teacher of ``finetuned_teacher`` (same procedure, same seed), so it is taken from the cache; other
seeds are fine-tuned here and not kept. About 4 min per fine-tune.

Both searches have two rounds:

1. every candidate once, with the first seed;
2. the incumbent (the preset as it stood) on every seed and, if it was ahead of the incumbent in
   round 1, the best challenger too; the paired difference over seeds, with its 95 % t-interval
   (``paired_interval``), decides: the challenger replaces the incumbent only if the whole
   interval is above 0. A challenger behind on the first seed is not run again.

Prints both rounds as tables and stores every (recipe, seed) result in ``--output`` as soon as it
finishes (atomically), so an interrupted search resumes where it stopped. ``--main-job-runs``
(students only) saves the incumbent's runs: the main job trains exactly the incumbent's student
(same teacher, logits, initialisation, batches and dropout), so its saved KD students are scored
on dev instead (a seed the search also trained must agree exactly). The dev search's students train with
plain AdamW (``SEARCH_FUSED_ADAMW``), as the main job did when the search ran, so the main-job runs
it takes are those made with ``--no-fused-adamw``; the unseen search's train with fused AdamW, as the
main job does now. Validation accuracy is
neither computed nor used here.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from kd_lib.cache import cached_logits
from kd_lib.course.digits import paired_interval
from kd_lib.data import TASKS, EncodedDataset, load_task
from kd_lib.distill import CachedTeacherFeatures, FeatureDistillLoss, kd_from_cache
from kd_lib.losses import layer_map
from kd_lib.models import load_teacher
from kd_lib.pipeline import config_from_preset
from kd_lib.splits import DEFAULT_TRAIN_LIMIT, PHRASE_WORDS, check_disjoint, dev_split
from kd_lib.students import choose_student_layers, distilbert_from_bert
from kd_lib.teacher import TeacherRecipe, finetuned_teacher
from kd_lib.training import ce_loss, evaluate_accuracy, fit
from kd_lib.transfer import few_label_dataset, kd_with_transfer
from kd_lib.utils import atomic_write_bytes, quiet_hf, set_seed

INCUMBENT = "T=2, α=0.5, 2 epochs"
# the incumbent's loss and length, which the later challengers keep
PRESET_KD = {"temperature": 2.0, "alpha": 0.5, "epochs": 2}
# Each candidate is the default preset with these settings; a result is stored under the settings it trained
# with (see _key), so one stored under an earlier preset is not taken for the current one.
CANDIDATES: dict[str, dict] = {
    # the preset: its student learning rate 2e-4 since 2026-12-08 (the --dev unseen search), 1e-4 before
    INCUMBENT: {**PRESET_KD, "lr": 2e-4},
    "T=1, α=0.5, 2 epochs": {"temperature": 1.0, "alpha": 0.5, "epochs": 2},
    "T=4, α=0.5, 2 epochs": {"temperature": 4.0, "alpha": 0.5, "epochs": 2},
    "T=2, α=0.9, 2 epochs": {"temperature": 2.0, "alpha": 0.9, "epochs": 2},
    # the same number of steps as the incumbent: one epoch over the 8,000 labelled sentences and about
    # 8,000 more that only the teacher labels (see transfer_set)
    "T=2, α=0.5, 1 epoch, + transfer": {"temperature": 2.0, "alpha": 0.5, "epochs": 1, "transfer": 16000},
    # and twice the steps (over the main job's 15-minute budget: to see whether more data pays at all)
    "T=2, α=0.5, 2 epochs, + transfer": {"temperature": 2.0, "alpha": 0.5, "epochs": 2, "transfer": 16000},
    # the student's learning rate (1e-4, the preset's until 2026-12-08, is the teacher's): the same steps, the
    # same wall time
    "T=2, α=0.5, 2 epochs, lr 1e-4": {**PRESET_KD, "lr": 1e-4},
    "T=2, α=0.5, 2 epochs, lr 3e-4": {**PRESET_KD, "lr": 3e-4},
    "T=2, α=0.5, 2 epochs, lr 5e-4": {**PRESET_KD, "lr": 5e-4},
    # which teacher layers the student copies (the incumbent: every other one, [0, 2, 4]); keeping the last
    # layer, the one the teacher's head reads, as DistilBERT's checkpoint did (notebook 05, section 1)
    "T=2, α=0.5, 2 epochs, layers 0, 2, 5": {**PRESET_KD, "student_layers": (0, 2, 5)},
    "T=2, α=0.5, 2 epochs, layers 0, 3, 5": {**PRESET_KD, "student_layers": (0, 3, 5)},
    "T=2, α=0.5, 2 epochs, layers 1, 3, 5": {**PRESET_KD, "student_layers": (1, 3, 5)},
    # a longer schedule over the same sentences: 1.5 times the steps (about 80 s more per student on 2 cores)
    "T=2, α=0.5, 3 epochs": {**PRESET_KD, "epochs": 3},
    # intermediate-layer terms (notebook 06) with the weights notebook 06 chose on dev for its narrow student;
    # the uniform map (student layer i learns teacher layer 2i), cosine hidden states, the teacher's features
    # cached once (not main-job options yet: one would become an option if it won)
    "T=2, α=0.5, 2 epochs, + hidden states 0.01": {**PRESET_KD, "features": {"hidden": 0.01}},
    "T=2, α=0.5, 2 epochs, + attention 0.1": {**PRESET_KD, "features": {"attention": 0.1}},
}
SEARCH_ONLY = ("transfer", "features")  # candidate settings the main job does not have
TEACHER_INCUMBENT = "lr 1e-4"
TEACHER_CANDIDATES: dict[str, dict] = {
    TEACHER_INCUMBENT: {"lr": 1e-4}, "lr 5e-5": {"lr": 5e-5}, "lr 2e-4": {"lr": 2e-4},
}


# The dev search's students train with plain AdamW, as the main job did when that search ran (2026-12-06/07),
# so that every stored result is comparable; the main job now uses fused AdamW, which left the incumbent's dev
# accuracy unchanged on all three seeds (scripts/measure_levers.py), and so does the unseen search (2026-12-08).
SEARCH_FUSED_ADAMW: dict[str, bool] = {"dev": False, "unseen": True}


def trained_fused(folder: Path) -> bool:
    """Whether the main-job run in ``folder`` trained its students with fused AdamW (runs saved before the
    setting existed did not)."""
    return bool(json.loads((folder / "results.json").read_text())["config"].get("fused_adamw", False))


def _key(name: str, seed: int) -> str:
    """A stored result's key: a student recipe's settings (the preset's learning rate filled in) and the seed;
    a teacher recipe's name and the seed."""
    if name in TEACHER_CANDIDATES:
        return f"{name} | seed {seed}"
    settings = {"lr": config_from_preset("default").lr, **CANDIDATES[name]}
    return f"{json.dumps(settings, sort_keys=True, ensure_ascii=False)} | seed {seed}"


def train_student(name: str, seed: int, teacher, train, logits, folder: Path, fused: bool = False):
    """The default student trained with recipe ``name`` and ``seed`` as the search trains it (``fused``: with
    fused AdamW, see :data:`SEARCH_FUSED_ADAMW`), and the seconds
    its training took (the transfer set's teacher logits, cached in ``folder``, and the teacher's features,
    cached in memory, not included)."""
    recipe = dict(CANDIDATES[name])
    pool, features = recipe.pop("transfer", None), recipe.pop("features", None)
    config = config_from_preset("default", seed=seed, **recipe)
    objective = kd_from_cache(logits, recipe["temperature"], recipe["alpha"])
    if pool is not None:
        train, objective = transfer_set(teacher, logits, pool, folder, recipe)
    layers = choose_student_layers(config.student_layers, teacher.config.num_hidden_layers)
    cached = teacher_features(teacher, train, features, len(layers)) if features is not None else None
    start = time.perf_counter()
    student = distilbert_from_bert(teacher, list(layers), seed=seed)
    if cached is not None:  # notebook 06's loss: logit KD plus the features' terms over the uniform map
        objective = FeatureDistillLoss(cached, student, layers="uniform", temperature=recipe["temperature"],
                                       alpha=recipe["alpha"], weights={"logits": 1.0, **features},
                                       hidden_kind="cosine", seed=seed)
    set_seed(seed)
    settings = replace(config.student_settings(), fused_adamw=fused)
    fit(student, train, objective, settings, seed=seed, progress=False, desc=name)
    return student, time.perf_counter() - start


_CACHED_FEATURES: dict[tuple, CachedTeacherFeatures] = {}  # the teacher's features, once per process


def teacher_features(teacher, train, weights: dict[str, float], student_layers: int) -> CachedTeacherFeatures:
    """The teacher's features on ``train`` that the ``weights``' terms need (``hidden``, ``attention``) at
    the teacher layers of the uniform map from a student of ``student_layers`` layers, computed once per
    process (and per training set)."""
    mapped = [j for _, j in layer_map(student_layers, teacher, "uniform")]
    key = (id(train), tuple(sorted(weights)), tuple(mapped))
    if key not in _CACHED_FEATURES:
        _CACHED_FEATURES[key] = CachedTeacherFeatures(
            teacher, train, hidden_layers=mapped if "hidden" in weights else [],
            attention_layers=mapped if "attention" in weights else [], batch_size=64)
    return _CACHED_FEATURES[key]


def _train_and_score(name: str, seed: int, teacher, train, dev, logits, folder: Path, fused: bool) -> dict:
    """Train the default student with recipe ``name`` and ``seed``; its dev accuracy and wall time."""
    student, wall_s = train_student(name, seed, teacher, train, logits, folder, fused)
    return {"dev_accuracy": evaluate_accuracy(student, dev), "wall_s": wall_s}


def transfer_rows(pool_size: int, dev_texts: list[str]):
    """The rows of the seed-0 draw of ``pool_size`` training rows that are not in the default 8,000, less
    those that share a phrase of ``PHRASE_WORDS``+ words with a dev sentence (a phrase of a dev sentence, or
    a row containing one), so that dev stays unseen: a ``datasets.Dataset``, and how many were dropped."""
    labelled = set(load_task("sst2", limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]["idx"])
    pool = load_task("sst2", limit={"train": pool_size}, seed=0)["train"]
    check_disjoint(pool, "sst2")
    dev_phrases = {" ".join(w[i:j]) for t in dev_texts for w in [t.split()]
                   for i in range(len(w)) for j in range(i + PHRASE_WORDS, len(w) + 1)}
    dev_whole = set(dev_texts)

    def overlaps(text: str) -> bool:
        w = text.split()
        if len(w) >= PHRASE_WORDS and text in dev_phrases:
            return True
        return any(" ".join(w[i:j]) in dev_whole for i in range(len(w)) for j in range(i + 1, len(w) + 1))

    new = [k for k, i in enumerate(pool["idx"]) if i not in labelled]
    keep = [k for k in new if not overlaps(pool[k]["text"])]
    return pool.select(keep), len(new) - len(keep)


@functools.cache
def unseen_rows(min_words: int = 8) -> tuple[int, ...]:
    """Row numbers (``idx``, ascending) of SST-2's training rows that the default preset's 8,000 have not seen:
    outside them, of ``min_words``+ words, containing none of their rows of ``PHRASE_WORDS``+ words and part of
    none of their rows -- the rule dev's sentences follow (``kd_lib.splits``), over the whole training file
    instead of its reserve (11,937 rows, dev's 1,000 among them). A larger seed-0 subset would train on them,
    so they are no dev split of the course; for the default preset's teacher and students they are unseen."""
    texts = load_task("sst2")["train"]["text"]
    used = load_task("sst2", limit={"train": DEFAULT_TRAIN_LIMIT}, seed=0)["train"]
    rows = {t for t in used["text"] if len(t.split()) >= PHRASE_WORDS}
    pieces = {" ".join(w[i:j]) for t in used["text"] for w in [t.split()]
              for i in range(len(w)) for j in range(i + min_words, len(w) + 1)}

    def unseen(text: str) -> bool:
        w = text.split()
        return len(w) >= min_words and text not in pieces and not any(
            " ".join(w[i:j]) in rows for i in range(len(w)) for j in range(i + PHRASE_WORDS, len(w) + 1))

    seen = set(used["idx"])
    return tuple(i for i, text in enumerate(texts) if i not in seen and unseen(text))


def transfer_set(teacher, logits, pool_size: int, folder: Path, recipe: dict):
    """``(dataset, objective)``: the default 8,000 labelled sentences followed by the transfer rows of
    :func:`transfer_rows` with their labels withheld (``few_label_dataset``), and ``kd_with_transfer``
    over the teacher's logits on both (``logits``: the 8,000's; the transfer rows' cached in ``folder``)."""
    from datasets import concatenate_datasets
    from transformers import AutoTokenizer

    config = config_from_preset("default")
    tokenizer = AutoTokenizer.from_pretrained(teacher.name_or_path)  # the cached teacher's folder, not loaded again
    labelled = load_task("sst2", limit={"train": config.train_limit}, seed=config.teacher_seed)["train"]
    rows, dropped = transfer_rows(pool_size, list(dev_split("sst2")["text"]))
    extra_logits, _ = cached_logits(teacher, EncodedDataset(rows, tokenizer, config.max_length),
                                    folder / f"recipe_search_transfer{pool_size}_logits.safetensors",
                                    {"teacher": str(config.teacher_recipe()), "max_length": config.max_length},
                                    batch_size=64, progress=False)
    print(f"  transfer set: {len(rows)} sentences ({dropped} dropped for sharing a phrase with dev)", flush=True)
    both = concatenate_datasets([labelled, rows])
    n = len(labelled)
    data = EncodedDataset(few_label_dataset(both, range(n), range(n, len(both))), tokenizer, config.max_length)
    return data, kd_with_transfer(torch.cat([logits, extra_logits]), recipe["temperature"], recipe["alpha"])


def incumbent_teacher_recipe(task: str) -> TeacherRecipe:
    """The teacher recipe as it stands: the default preset's (SST-2) or notebook 04's (AG News)."""
    if task == "sst2":
        return config_from_preset("default").teacher_recipe()
    return TeacherRecipe(task="ag_news", train_limit=2000, epochs=1, lr=1e-4)


def fine_tune_and_score(recipe: TeacherRecipe, seed: int, dev_rows) -> dict:
    """Fine-tune ``recipe``'s teacher on its seed-0 training subset with ``seed`` (head, batches,
    dropout) and score it on ``dev_rows``; seed ``recipe.seed`` comes from the teacher cache."""
    start = time.perf_counter()
    if seed == recipe.seed:
        model, tokenizer, info = finetuned_teacher(recipe, progress=False)
        cached = {"from_cache": info["from_cache"], "fine_tune_s": info["wall_s"]}
    else:  # the steps of kd_lib.teacher's fine-tuning, with the training subset's seed kept
        set_seed(seed)
        model, tokenizer = load_teacher(recipe.teacher, num_labels=len(TASKS[recipe.task].label_names))
        rows = load_task(recipe.task, limit={"train": recipe.train_limit}, seed=recipe.seed)["train"]
        fit(model, EncodedDataset(rows, tokenizer, recipe.max_length), ce_loss(), recipe.settings(), seed=seed,
            progress=False, desc=f"lr {recipe.lr:g}, seed {seed}")
        cached = {"from_cache": False}
    dev = EncodedDataset(dev_rows, tokenizer, recipe.max_length)
    return {"dev_accuracy": evaluate_accuracy(model.eval(), dev), "wall_s": time.perf_counter() - start, **cached}


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=["student", "teacher"], default="student")
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2", help="the teacher's task (--what teacher)")
    parser.add_argument("--output", help="default: runs/recipe_search.json, runs/teacher_search_<task>.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", nargs="+", metavar="NAME",
                        help="students only: round 1's challengers (default: every one; the incumbent always runs)")
    parser.add_argument("--dev", choices=["dev", "unseen"], default="dev",
                        help="students only: score on the dev split (default) or on the unseen training sentences")
    parser.add_argument("--main-job-runs", nargs="*", default=[], metavar="DIR",
                        help="output folders of `python -m kd_lib distill --seed S` (default preset): their KD "
                             "students are the incumbent's runs, scored on dev instead of trained again")
    args = parser.parse_args(argv)
    if args.what == "teacher" and args.main_job_runs:
        parser.error("--main-job-runs applies to --what student only")
    if args.what == "student" and args.task != "sst2":
        parser.error("--task applies to --what teacher only: the main job's student is distilled on sst2")
    unknown = sorted(set(args.candidates or []) - set(CANDIDATES))
    if args.what == "teacher" and args.candidates:
        parser.error("--candidates applies to --what student only")
    if unknown:
        parser.error(f"--candidates: unknown {unknown}; choose from {list(CANDIDATES)}")
    if args.what == "teacher" and args.dev != "dev":
        parser.error("--dev applies to --what student only")
    trains_on_unseen = sorted(n for n in args.candidates or [] if "transfer" in CANDIDATES[n])
    if args.dev == "unseen" and trains_on_unseen:
        parser.error(f"--dev unseen: {trains_on_unseen} train on unseen sentences; leave them out")
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds needs at least 2 different seeds for the paired interval; got {args.seeds}")
    default = ("runs/recipe_search.json" if args.dev == "dev" else "runs/recipe_search_unseen.json"
               ) if args.what == "student" else f"runs/teacher_search_{args.task}.json"
    out = Path(args.output or default)
    with quiet_hf():
        if args.what == "student":
            search(out, args.seeds, [Path(d) for d in args.main_job_runs], args.candidates, args.dev)
        else:
            search_teacher(out, args.task, args.seeds)


def main_job_student(folder: Path, dev) -> tuple[int, float]:
    """``(seed, dev accuracy)`` of the KD student a default main-job run saved in ``folder``."""
    from transformers import DistilBertForSequenceClassification

    results = json.loads((folder / "results.json").read_text())
    config, incumbent = results["config"], {**CANDIDATES[INCUMBENT], "preset": "default", "train_limit": 8000}
    wrong = {k: config.get(k) for k, v in incumbent.items() if config.get(k) != v}
    if wrong or config.get("teacher_seed") != 0 or config.get("backend") != "loop":
        raise SystemExit(f"{folder} is not a run of the incumbent recipe (differs in {wrong or 'seed/backend'})")
    student = DistilBertForSequenceClassification.from_pretrained(folder / "student", use_safetensors=True)
    return results["seed"], evaluate_accuracy(student, dev)


class Results:
    """(recipe, seed) -> result, kept in a JSON file written atomically after every new entry."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, seed: int, run) -> dict:
        """The stored result, or ``run()``'s, stored first."""
        if _key(name, seed) not in self.done:
            self.put(name, seed, run())
            print(f"  {name}, seed {seed}: dev {self.done[_key(name, seed)]['dev_accuracy']:.4f} "
                  f"({self.done[_key(name, seed)]['wall_s']:.0f} s)", flush=True)
        return self.done[_key(name, seed)]

    def put(self, name: str, seed: int, result: dict) -> None:
        self.done[_key(name, seed)] = result
        atomic_write_bytes(self.path, json.dumps(self.done, indent=1).encode())


def two_rounds(names: list[str], incumbent: str, seeds: list[int], score, reference: float | None = None) -> str:
    """Round 1 (every name, first seed) and round 2 (see the module docstring); print both and
    return the chosen name. ``score(name, seed)`` is a dev accuracy; with ``reference`` (the
    teacher's dev accuracy, for students) the tables add the retention, accuracy / reference."""
    first = seeds[0]
    round1 = {name: score(name, first) for name in names}
    ratio = "retention" if reference is not None else None
    print(f"\nRound 1 (seed {first}), dev accuracy{' and retention (student / teacher on dev)' if ratio else ''}:\n")
    print(_table([(n, [f"{a:.4f}"] + ([f"{a / reference:.3f}"] if ratio else [])) for n, a in round1.items()],
                 ["recipe", "dev accuracy"] + ([ratio] if ratio else [])))
    challenger = max((n for n in names if n != incumbent), key=round1.get)
    finalists = [incumbent] + ([challenger] if round1[challenger] > round1[incumbent] else [])
    finals = {n: [score(n, s) for s in seeds] for n in finalists}
    print(f"\nRound 2 (seeds {', '.join(map(str, seeds))}), dev accuracy:\n")
    print(_table([(n, [*(f"{a:.4f}" for a in accs)] + ([f"{min(accs) / reference:.3f}"] if ratio else []))
                  for n, accs in finals.items()],
                 ["recipe", *(f"seed {s}" for s in seeds)] + (["lowest retention"] if ratio else [])))
    if challenger not in finals:
        print(f"\nno challenger was ahead of the incumbent on seed {first} (best: {challenger}, "
              f"{100 * (round1[challenger] - round1[incumbent]):+.2f} points): chosen: {incumbent}")
        return incumbent
    mean, low, high = paired_interval(finals[challenger], finals[incumbent])
    chosen = challenger if low > 0 else incumbent
    print(f"\n{challenger} − {incumbent}: {100 * mean:+.2f} points, 95 % interval "
          f"[{100 * low:+.2f}, {100 * high:+.2f}] over {len(seeds)} seeds")
    rivals = len(names) - 1  # the best of round 1's challengers went on: widen for having picked among them
    _, low_b, high_b = paired_interval(finals[challenger], finals[incumbent], 1 - 0.05 / rivals)
    print(f"(with a Bonferroni correction for the {rivals} challengers of round 1: "
          f"[{100 * low_b:+.2f}, {100 * high_b:+.2f}]; the rule reads the uncorrected interval)")
    print(f"chosen: {chosen}" + ("" if chosen == challenger else " (the challenger's interval is not above 0)"))
    return chosen


def student_search_setup(folder: Path, dev_kind: str = "dev"):
    """``(teacher, train, dev, logits)`` of a student search: the default preset's teacher (cached, in eval
    mode), its 8,000 training sentences (checked disjoint from dev), SST-2's dev split (``dev_kind``
    ``"dev"``) or its unseen training sentences (``"unseen"``), and the teacher's logits on the training
    sentences (cached in ``folder``)."""
    config = config_from_preset("default")
    teacher, tokenizer, _ = finetuned_teacher(config.teacher_recipe(), progress=False)
    teacher.eval()
    train_rows = load_task("sst2", limit={"train": config.train_limit}, seed=config.teacher_seed)["train"]
    check_disjoint(train_rows, "sst2")
    train = EncodedDataset(train_rows, tokenizer, config.max_length)
    rows = (dev_split("sst2") if dev_kind == "dev"
            else load_task("sst2")["train"].select(list(unseen_rows())))
    dev = EncodedDataset(rows, tokenizer, config.max_length)
    logits, _ = cached_logits(teacher, train, folder / "recipe_search_logits.safetensors",
                              {"teacher": str(config.teacher_recipe()), "max_length": config.max_length},
                              batch_size=64, progress=False)
    return teacher, train, dev, logits


def search(out: Path, seeds: list[int], main_job_runs: list[Path], candidates: list[str] | None = None,
           dev_kind: str = "dev") -> str:
    """The student search, results stored in ``out`` (see the module docstring), scored on ``dev_kind``
    (``"dev"`` or ``"unseen"``); the chosen recipe."""
    results, fused = Results(out), SEARCH_FUSED_ADAMW[dev_kind]
    teacher, train, dev, logits = student_search_setup(out.parent, dev_kind)
    teacher_dev = evaluate_accuracy(teacher, dev)
    print(f"teacher on {dev_kind} ({len(dev)} sentences): {teacher_dev:.4f}", flush=True)
    for folder in main_job_runs:  # the incumbent's runs, trained by the main job itself
        if trained_fused(folder) != fused:
            said = {True: "fused AdamW", False: "plain AdamW"}
            raise SystemExit(f"{folder} trained its students with {said[not fused]}, the {dev_kind} search with "
                             f"{said[fused]} (SEARCH_FUSED_ADAMW): give runs made "
                             + ("without" if fused else "with") + " --no-fused-adamw")
        seed, acc = main_job_student(folder, dev)
        known = results.done.get(_key(INCUMBENT, seed))
        if known is not None and known["dev_accuracy"] != acc:
            raise SystemExit(f"{folder}: dev {acc:.4f}, but the search trained {known['dev_accuracy']:.4f} "
                             f"with seed {seed}: the two runs should be identical")
        print(f"  {INCUMBENT}, seed {seed}: dev {acc:.4f} from the main job's student in {folder}"
              + (" (identical to the search's own run)" if known is not None else ""), flush=True)
        results.put(INCUMBENT, seed, {"dev_accuracy": acc, "from": str(folder), **(known or {})})

    def score(name: str, seed: int) -> float:
        run = lambda: _train_and_score(name, seed, teacher, train, dev, logits, out.parent, fused)  # noqa: E731
        return results.get(name, seed, run)["dev_accuracy"]

    names = [INCUMBENT] + [n for n in CANDIDATES if n != INCUMBENT and (candidates is None or n in candidates)
                           and (dev_kind == "dev" or "transfer" not in CANDIDATES[n])]
    return two_rounds(names, INCUMBENT, seeds, score, teacher_dev)


def search_teacher(out: Path, task: str, seeds: list[int]) -> str:
    """The teacher search for ``task``, results stored in ``out`` (see the module docstring)."""
    results = Results(out)
    incumbent = incumbent_teacher_recipe(task)
    if seeds[0] != incumbent.seed:
        raise SystemExit(f"the first seed must be the incumbent's ({incumbent.seed}): round 1 is the cached teachers")
    check_disjoint(load_task(task, limit={"train": incumbent.train_limit}, seed=incumbent.seed)["train"], task)
    dev_rows = dev_split(task)
    print(f"{task} teacher: {incumbent}; dev {len(dev_rows)} rows", flush=True)

    def score(name: str, seed: int) -> float:
        recipe = replace(incumbent, **TEACHER_CANDIDATES[name])
        return results.get(name, seed, lambda: fine_tune_and_score(recipe, seed, dev_rows))["dev_accuracy"]

    return two_rounds(list(TEACHER_CANDIDATES), TEACHER_INCUMBENT, seeds, score)


if __name__ == "__main__":
    main()
