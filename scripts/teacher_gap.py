"""How far each run's student is from its teacher, in sentences, and whether that is beyond the noise.

    python scripts/teacher_gap.py runs/distill runs/seed1 runs/seed2

For each finished ``python -m kd_lib distill`` run, on the run's held-out split (SST-2 validation for the
default preset): the teacher's, the student's and -- where ``--export`` made one -- the int8 ONNX student's
accuracy; the sentences only the teacher gets right and only the student does; the gap teacher minus
model in points with a 95 % paired-bootstrap interval (the sentences resampled with replacement,
:data:`DRAWS` times, seeded: the noise of the evaluation set, as in notebook 10); and how many more
sentences the model would have to get right to meet the course's targets -- a student keeping 98.5 % of
the teacher's accuracy, an int8 student within 1 point of the teacher. Prints; changes nothing.

    python scripts/teacher_gap.py --unseen runs/distill runs/seed1 runs/seed2

also scores the same models on the *unseen* training sentences (``choose_recipe.unseen_rows``: the
training-file rows of 8+ words outside the default preset's 8,000 that share no phrase of 4+ words with
them -- unseen by teacher and student alike, many times the size of validation), overall and by length, for
runs of the default training subset: is the gap on validation the students' gap on such sentences?

Given two runs or more (seeds of one recipe), it ends with their table from ``results.json``: the teacher's,
the KD student's and the CE-only student's accuracy per seed with mean and standard deviation, the
retention, and KD minus CE with its 95 % paired t-interval over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from kd_lib.course.digits import paired_interval
from kd_lib.data import EncodedDataset, eval_split, load_task
from kd_lib.export import find_model_dir, load_classifier
from kd_lib.splits import DEFAULT_TRAIN_LIMIT
from kd_lib.training import predict_logits
from kd_lib.utils import quiet_hf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from choose_recipe import unseen_rows  # a script beside this one

DRAWS = 10_000
RETENTION = 0.985  # the student keeps at least this share of the teacher's accuracy
INT8_POINTS = 1.0  # the int8 student is at most this many points below the teacher
LENGTHS = ((8, 11), (12, 19), (20, None))  # word-count bins of --unseen (validation: median 19 words)


def paired_gap(a_right: np.ndarray, b_right: np.ndarray, draws: int = DRAWS,
               seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same sentences, in points, with a 95 % paired-bootstrap
    interval: ``(mean, low, high)``. ``a_right``, ``b_right``: ``[N]`` booleans, one per sentence."""
    a_right, b_right = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if a_right.shape != b_right.shape or a_right.ndim != 1 or len(a_right) == 0:
        raise ValueError(f"a_right and b_right must be equal-length, non-empty 1-d arrays; got {a_right.shape} "
                         f"and {b_right.shape}")
    diff = a_right.astype(float) - b_right
    resampled = diff[np.random.default_rng(seed).integers(0, len(diff), (draws, len(diff)))].mean(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return 100 * diff.mean(), 100 * low, 100 * high


def sentences_short(model_right: int, teacher_right: int, n: int, *, share: float | None = None,
                    points: float | None = None) -> int:
    """How many more of ``n`` sentences the model must get right to keep ``share`` of the teacher's accuracy, or
    to be at most ``points`` below it (0: the target is met)."""
    needed = teacher_right * share if share is not None else teacher_right - points * n / 100
    return max(0, math.ceil(needed - 1e-9) - model_right)


def held_out(run: dict, tokenizer) -> EncodedDataset:
    """The run's held-out split, with its subset and length (as ``python -m kd_lib distill`` evaluated it)."""
    config, task = run["config"], run["task"]
    split = eval_split(task)
    limit = {split: config["eval_limit"]} if config.get("eval_limit") else None
    return EncodedDataset(load_task(task, limit=limit, seed=config["teacher_seed"])[split], tokenizer,
                          config["max_length"])


def unseen_data(run: dict, tokenizer) -> tuple[EncodedDataset, np.ndarray]:
    """The unseen training sentences of ``choose_recipe.unseen_rows`` (tokenized as the run did) and their
    word counts; only for runs trained on the default preset's subset (SST-2, 8,000 rows, seed 0)."""
    config = run["config"]
    if (run["task"], config["train_limit"], config["teacher_seed"]) != ("sst2", DEFAULT_TRAIN_LIMIT, 0):
        raise ValueError("--unseen needs runs trained on the default preset's subset (SST-2, --train-limit "
                         f"{DEFAULT_TRAIN_LIMIT}, teacher seed 0); this run used task {run['task']}, train_limit "
                         f"{config['train_limit']}, teacher seed {config['teacher_seed']}: drop --unseen")
    rows = load_task("sst2")["train"].select(list(unseen_rows()))
    words = np.array([len(t.split()) for t in rows["text"]])
    return EncodedDataset(rows, tokenizer, config["max_length"]), words


def gap_rows(right: dict[str, np.ndarray], labels: np.ndarray, title: str) -> list[str]:
    """Printed rows: the teacher's accuracy on ``labels``' sentences, then each other model against it."""
    n, t = len(labels), right["teacher"]
    rows = [f"{title} ({n} sentences): teacher {t.mean():.4f} ({t.sum()} right)"]
    for name in list(right)[1:]:
        m = right[name]
        mean, low, high = paired_gap(t, m)
        short = (sentences_short(m.sum(), t.sum(), n, share=RETENTION) if name == "student"
                 else sentences_short(m.sum(), t.sum(), n, points=INT8_POINTS))
        target = f"{RETENTION:.1%} of the teacher" if name == "student" else f"within {INT8_POINTS:g} point"
        rows.append(f"  {name:<18} {m.mean():.4f}  only the teacher right {(t & ~m).sum():>3}, "
                    f"only it {(m & ~t).sum():>3}   teacher - it {mean:+.2f} points [{low:+.2f}, {high:+.2f}]"
                    f"   {target}: " + (f"{short} sentence(s) short" if short else "met")
                    + (f" (kept {m.mean() / t.mean():.1%})" if name == "student" else ""))
    return rows


def run_rows(folder: Path, unseen: bool = False) -> list[str]:
    """The printed rows of one run: its models against its teacher, on its held-out split (and with ``unseen``
    on the unseen training sentences, overall and by length)."""
    student_dir, run = find_model_dir(folder, "student")
    if not run:
        raise ValueError(f"{folder} holds no finished run (no results.json): give the output folder of "
                         "`python -m kd_lib distill`")
    models = {"teacher": run["teacher"]["folder"], "student": student_dir}
    int8 = folder / "onnx-int8"
    if (int8 / "model.onnx").is_file():
        models["int8 ONNX student"] = int8
    with quiet_hf():
        loaded = {name: load_classifier(path) for name, path in models.items()}
    tokenizer = loaded["student"][1]
    data = held_out(run, tokenizer)
    labels = np.asarray(data.labels)
    right = {name: predict_logits(model, data).argmax(-1).numpy() == labels for name, (model, _, _) in loaded.items()}
    rows = gap_rows(right, labels, f"{folder} (seed {run['seed']}, {eval_split(run['task'])})")
    if unseen:
        data, words = unseen_data(run, tokenizer)
        labels = np.asarray(data.labels)
        right = {name: predict_logits(model, data, batch_size=64).argmax(-1).numpy() == labels
                 for name, (model, _, _) in loaded.items()}
        rows += gap_rows(right, labels, "  unseen training sentences, 8+ words")
        for low, high in LENGTHS:
            keep = (words >= low) & (words <= (high or words.max()))
            name = f"{low}-{high} words" if high else f"{low}+ words"
            rows += gap_rows({k: v[keep] for k, v in right.items()}, labels[keep], f"    {name}")
    return rows


def seeds_rows(results: list[dict]) -> list[str]:
    """The seeds' table (``results``: each run's ``results.json``) and KD - CE with its paired t-interval."""
    rows = {"teacher": [r["teacher"]["accuracy"] for r in results],
            "student, KD": [r["student"]["accuracy"] for r in results],
            "student, CE only": [r["baselines"]["ce_only"]["accuracy"] for r in results],
            "retention": [r["retention"] for r in results]}
    out = ["seeds " + ", ".join(str(r["seed"]) for r in results) + ":"]
    for name, values in rows.items():
        digits = 3 if name == "retention" else 4
        out.append(f"  {name:<17} " + "  ".join(f"{v:.{digits}f}" for v in values)
                   + f"   mean {np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}")
    mean, low, high = paired_interval(rows["student, KD"], rows["student, CE only"])
    out.append("  KD - CE per seed " + ", ".join(f"{100 * (a - b):+.2f}" for a, b in
                                                zip(rows["student, KD"], rows["student, CE only"], strict=True))
               + f" points; mean {100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] (95 % paired t-interval)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished `python -m kd_lib distill` run folders")
    parser.add_argument("--unseen", action="store_true",
                        help="also score the models on the training sentences the default subset has not seen")
    args = parser.parse_args(argv)
    try:
        for folder in args.runs:
            print("\n".join(run_rows(Path(folder), args.unseen)))
        if len(args.runs) > 1:
            print("\n".join(seeds_rows([json.loads((Path(f) / "results.json").read_text()) for f in args.runs])))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n(95 % paired-bootstrap intervals over the sentences, {DRAWS:,} draws, seed 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
