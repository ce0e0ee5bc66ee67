"""What a cheaper distillation step costs in accuracy, on the dev split -- never on validation.

    python scripts/measure_levers.py [--seeds 0 1 2] [--output runs/levers.json] [--main-job-runs runs/distill]

`benchmarks/bench.py --levers` times the levers that make a cached-logit step cheaper; this measures what
they cost in accuracy: **freezing the student's token embeddings** (kept as copied from the teacher,
left out of AdamW), which changes what is learned, and **PyTorch's fused AdamW kernel**
(``TrainSettings(fused_adamw=True)``: the same parameter groups, rates and decay in one kernel), which
should change only rounding. This measurement is why the main job now trains its students with fused
AdamW (``--no-fused-adamw`` turns it off). For each seed the default student of
``python -m kd_lib distill`` is trained exactly as the main job trains it -- same teacher, cached
logits, initialisation, batches and dropout -- with PyTorch's plain AdamW (one tensor at a time, the
main job's optimizer until fused AdamW was adopted) and with each lever, and scored on
``kd_lib.splits.dev_split("sst2")``; the paired difference to the plain student over the seeds, with
its 95 % t-interval, is printed. A main-job run given with ``--main-job-runs`` stands in for the arm it
was trained as (fused or plain AdamW: it is the same student). Every result is stored in ``--output``
as soon as it finishes, so an interrupted run resumes. About 3 min per student on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from choose_recipe import main_job_student, student_search_setup, trained_fused

from kd_lib.course.digits import paired_interval
from kd_lib.distill import kd_from_cache
from kd_lib.pipeline import config_from_preset
from kd_lib.students import choose_student_layers, distilbert_from_bert
from kd_lib.training import evaluate_accuracy, fit
from kd_lib.utils import atomic_write_bytes, quiet_hf, set_seed

PLAIN, FROZEN, FUSED = "plain AdamW", "token embeddings frozen", "fused AdamW"
ARMS = (PLAIN, FROZEN, FUSED)  # FROZEN: with plain AdamW, so that each lever is measured alone
RENAMED = {"as in the main job": PLAIN}  # results stored before the main job adopted fused AdamW


def _renamed(key: str) -> str:
    """A stored result's key (``"arm | seed N"``) with the arm's current name."""
    arm, seed = key.split(" | ", 1)
    return f"{RENAMED.get(arm, arm)} | {seed}"


def train_and_score(arm: str, seed: int, teacher, train, dev, logits) -> dict:
    """The default student with ``seed``, trained as the main job does but with ``arm``'s optimizer and embeddings."""
    config = config_from_preset("default", seed=seed)
    start = time.perf_counter()
    layers = choose_student_layers(config.student_layers, teacher.config.num_hidden_layers)
    student = distilbert_from_bert(teacher, list(layers), seed=seed)
    if arm == FROZEN:
        student.get_input_embeddings().weight.requires_grad_(False)
    set_seed(seed)
    settings = replace(config.student_settings(), fused_adamw=arm == FUSED)
    fit(student, train, kd_from_cache(logits, config.temperature, config.alpha), settings,
        seed=seed, progress=False, desc=arm)
    return {"dev_accuracy": evaluate_accuracy(student, dev), "wall_s": time.perf_counter() - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="runs/levers.json")
    parser.add_argument("--main-job-runs", nargs="*", default=[], metavar="DIR")
    args = parser.parse_args(argv)
    out = Path(args.output)
    stored = json.loads(out.read_text()) if out.is_file() else {}
    done = {_renamed(key): value for key, value in stored.items()}
    with quiet_hf():  # transformers' load report
        teacher, train, dev, logits = student_search_setup(out.parent)
    for folder in args.main_job_runs:
        seed, acc = main_job_student(Path(folder), dev)
        arm = FUSED if trained_fused(Path(folder)) else PLAIN
        done.setdefault(f"{arm} | seed {seed}", {"dev_accuracy": acc, "from": str(folder)})
    for seed in args.seeds:
        for arm in ARMS:
            key = f"{arm} | seed {seed}"
            if key not in done:
                done[key] = train_and_score(arm, seed, teacher, train, dev, logits)
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(out, json.dumps(done, indent=1).encode())
            print(f"{key}: dev {done[key]['dev_accuracy']:.4f}", flush=True)
    accs = {arm: [done[f"{arm} | seed {s}"]["dev_accuracy"] for s in args.seeds] for arm in ARMS}
    print(f"\ndev accuracy over seeds {args.seeds} ({len(dev)} sentences):")
    for arm, values in accs.items():
        print(f"  {arm:<26}" + "  ".join(f"{v:.4f}" for v in values) + f"   mean {sum(values) / len(values):.4f}")
    for arm in ARMS[1:] if len(args.seeds) > 1 else ():
        diff, low, high = paired_interval(accs[arm], accs[ARMS[0]])
        print(f"  {arm} - {ARMS[0]}: {100 * diff:+.2f} points [{100 * low:+.2f}, {100 * high:+.2f}] "
              "(paired 95 % t-interval)")


if __name__ == "__main__":
    main()
