"""Choose the main job's default student recipe on SST-2's dev split -- never on validation.

    python scripts/choose_recipe.py [--output runs/recipe_search.json] [--seeds 0 1 2]

The default preset's teacher (cached in $KD_CACHE_DIR, fine-tuned if missing) labels its 8,000
training sentences once; then the 3-layer student of ``python -m kd_lib distill`` is trained with
each candidate recipe exactly as the main job trains it, and scored on the dev split
(``kd_lib.splits.dev_split("sst2")``, 1,000 sentences carved from the training file, disjoint from
the 8,000). Two rounds:

1. every candidate once, with the first seed;
2. the incumbent (the preset as it stood) on every seed and, if it was ahead of the incumbent in
   round 1, the best challenger too; the paired difference over seeds, with its 95 % t-interval
   (``paired_interval``), decides: the challenger replaces the incumbent only if the whole
   interval is above 0. A challenger behind on the first seed is not run again.

Prints both rounds as tables and stores every (recipe, seed) result in ``--output`` as soon as it
finishes (atomically), so an interrupted search resumes where it stopped. About 7 min per
training run on a 2-core CPU. ``--main-job-runs`` saves the incumbent's runs: the main job trains
exactly the incumbent's student (same teacher, logits, initialisation, batches and dropout), so
its saved KD students are scored on dev instead (a seed the search also trained must agree
exactly). Validation accuracy is neither computed nor used here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kd_lib.cache import cached_logits
from kd_lib.course.digits import paired_interval
from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import kd_from_cache
from kd_lib.pipeline import config_from_preset
from kd_lib.splits import check_disjoint, dev_split
from kd_lib.students import choose_student_layers, distilbert_from_bert
from kd_lib.teacher import finetuned_teacher
from kd_lib.training import evaluate_accuracy, fit
from kd_lib.utils import atomic_write_bytes, quiet_hf, set_seed

INCUMBENT = "T=2, α=0.5, 2 epochs"
CANDIDATES: dict[str, dict] = {
    INCUMBENT: {"temperature": 2.0, "alpha": 0.5, "epochs": 2},
    "T=1, α=0.5, 2 epochs": {"temperature": 1.0, "alpha": 0.5, "epochs": 2},
    "T=4, α=0.5, 2 epochs": {"temperature": 4.0, "alpha": 0.5, "epochs": 2},
    "T=2, α=0.9, 2 epochs": {"temperature": 2.0, "alpha": 0.9, "epochs": 2},
}


def _key(name: str, seed: int) -> str:
    return f"{name} | seed {seed}"


def _train_and_score(name: str, seed: int, teacher, train, dev, logits) -> dict:
    """Train the default student with recipe ``name`` and ``seed``; its dev accuracy and wall time."""
    recipe = CANDIDATES[name]
    config = config_from_preset("default", seed=seed, **recipe)
    start = time.perf_counter()
    layers = choose_student_layers(config.student_layers, teacher.config.num_hidden_layers)
    student = distilbert_from_bert(teacher, list(layers), seed=seed)
    set_seed(seed)
    objective = kd_from_cache(logits, recipe["temperature"], recipe["alpha"])
    fit(student, train, objective, config.student_settings(), seed=seed, progress=False, desc=name)
    return {"dev_accuracy": evaluate_accuracy(student, dev), "wall_s": time.perf_counter() - start}


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/recipe_search.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--main-job-runs", nargs="*", default=[], metavar="DIR",
                        help="output folders of `python -m kd_lib distill --seed S` (default preset): their KD "
                             "students are the incumbent's runs, scored on dev instead of trained again")
    args = parser.parse_args(argv)
    with quiet_hf():
        search(Path(args.output), args.seeds, [Path(d) for d in args.main_job_runs])


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


def search(out: Path, seeds: list[int], main_job_runs: list[Path]) -> None:
    """Both rounds of the search, results stored in ``out`` (see the module docstring)."""
    done = json.loads(out.read_text()) if out.is_file() else {}

    def record(name: str, seed: int, teacher, train, dev, logits) -> dict:
        if _key(name, seed) not in done:
            done[_key(name, seed)] = _train_and_score(name, seed, teacher, train, dev, logits)
            atomic_write_bytes(out, json.dumps(done, indent=1).encode())
            print(f"  {name}, seed {seed}: dev {done[_key(name, seed)]['dev_accuracy']:.4f} "
                  f"({done[_key(name, seed)]['wall_s']:.0f} s)", flush=True)
        return done[_key(name, seed)]

    config = config_from_preset("default")
    teacher, tokenizer, _ = finetuned_teacher(config.teacher_recipe(), progress=False)
    teacher.eval()
    train_rows = load_task("sst2", limit={"train": config.train_limit}, seed=config.teacher_seed)["train"]
    check_disjoint(train_rows, "sst2")
    train = EncodedDataset(train_rows, tokenizer, config.max_length)
    dev = EncodedDataset(dev_split("sst2"), tokenizer, config.max_length)
    out.parent.mkdir(parents=True, exist_ok=True)
    logits, _ = cached_logits(teacher, train, out.parent / "recipe_search_logits.safetensors",
                              {"teacher": str(config.teacher_recipe()), "max_length": config.max_length},
                              batch_size=64, progress=False)
    teacher_dev = evaluate_accuracy(teacher, dev)
    print(f"teacher on dev ({len(dev)} sentences): {teacher_dev:.4f}", flush=True)
    for folder in main_job_runs:  # the incumbent's runs, trained by the main job itself
        seed, acc = main_job_student(folder, dev)
        known = done.get(_key(INCUMBENT, seed))
        if known is not None and known["dev_accuracy"] != acc:
            raise SystemExit(f"{folder}: dev {acc:.4f}, but the search trained {known['dev_accuracy']:.4f} "
                             f"with seed {seed}: the two runs should be identical")
        print(f"  {INCUMBENT}, seed {seed}: dev {acc:.4f} from the main job's student in {folder}"
              + (" (identical to the search's own run)" if known is not None else ""), flush=True)
        done[_key(INCUMBENT, seed)] = {"dev_accuracy": acc, "from": str(folder), **(known or {})}
        atomic_write_bytes(out, json.dumps(done, indent=1).encode())

    first = seeds[0]
    round1 = {name: record(name, first, teacher, train, dev, logits)["dev_accuracy"] for name in CANDIDATES}
    print(f"\nRound 1 (seed {first}), dev accuracy and retention (student / teacher on dev):\n")
    print(_table([(n, [f"{a:.4f}", f"{a / teacher_dev:.3f}"]) for n, a in round1.items()],
                 ["recipe", "dev accuracy", "retention"]))

    challenger = max((n for n in CANDIDATES if n != INCUMBENT), key=round1.get)
    finalists = [INCUMBENT] + ([challenger] if round1[challenger] > round1[INCUMBENT] else [])
    finals = {n: [record(n, s, teacher, train, dev, logits)["dev_accuracy"] for s in seeds] for n in finalists}
    print(f"\nRound 2 (seeds {', '.join(map(str, seeds))}):\n")
    print(_table([(n, [*(f"{a:.4f}" for a in accs), f"{min(accs) / teacher_dev:.3f}"]) for n, accs in finals.items()],
                 ["recipe", *(f"seed {s}" for s in seeds), "lowest retention"]))
    if challenger not in finals:
        print(f"\nno challenger was ahead of the incumbent on seed {first} (best: {challenger}, "
              f"{100 * (round1[challenger] - round1[INCUMBENT]):+.2f} points): chosen: {INCUMBENT}")
        return
    mean, low, high = paired_interval(finals[challenger], finals[INCUMBENT])
    chosen = challenger if low > 0 else INCUMBENT
    print(f"\n{challenger} − {INCUMBENT}: {100 * mean:+.2f} points, 95 % interval "
          f"[{100 * low:+.2f}, {100 * high:+.2f}] over {len(seeds)} seeds")
    print(f"chosen: {chosen}" + ("" if chosen == challenger else " (the challenger's interval is not above 0)"))

if __name__ == "__main__":
    main()
