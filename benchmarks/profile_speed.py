"""Where the time of a forward pass goes: the teacher and the student of a run, by kind of operation.

    python benchmarks/profile_speed.py [--run runs/distill] [--batches 8] [--batch-size 64]

The student has half the teacher's layers, so if the encoder layers were all the work it would be
2x as fast. This profiles both on the same validation batches (``torch.profiler``, CPU time of the
top-level ATen operators, after a warm-up) and prints the milliseconds per batch spent in matrix
products, attention, LayerNorm, GELU, the embedding lookup and everything else -- what halves with the
layers and what does not. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from kd_lib.data import EncodedDataset, eval_split, load_task
from kd_lib.utils import quiet_hf

KINDS = (  # (kind, substrings of ATen operator names), first match wins
    ("matrix products", ("addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "softmax", "_flash", "baddbmm")),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("embedding lookup", ("embedding",)),
)


def kind_of(name: str) -> str:
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "everything else")


def profile_ms(model, batches: list[dict]) -> dict[str, float]:
    """Milliseconds per batch by kind of operation (top-level operators only: no double counting)."""
    with torch.no_grad():
        for b in batches[:2]:  # warm-up
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    totals = defaultdict(float)
    for event in prof.events():
        if event.cpu_parent is None and event.name.startswith("aten::"):
            totals[kind_of(event.name)] += event.cpu_time_total / 1000 / len(batches)
    return dict(totals)


def parse_run_args(description: str, argv: list[str] | None):
    """``--run``, ``--batches`` and ``--batch-size`` of a profiling script; ``(args, run)`` with the run's
    results.json, or ``(args, None)`` after printing the error when the folder holds no finished run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", default="runs/distill", help="a finished `python -m kd_lib distill` run")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    results_path = Path(args.run) / "results.json"
    if not results_path.is_file():
        print(f"error: {args.run} holds no finished run (no results.json): run `python -m kd_lib distill` first",
              file=sys.stderr)
        return args, None
    return args, json.loads(results_path.read_text())


def validation_batches(args, run: dict) -> tuple[EncodedDataset, list[dict]]:
    """The run's validation split (tokenised by its student's tokenizer) and its first ``args.batches``
    batches of ``args.batch_size`` (dynamic padding, file order)."""
    from transformers import AutoTokenizer

    with quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(Path(args.run) / "student")
    data = EncodedDataset(load_task(run["task"])[eval_split(run["task"])], tokenizer, run["config"]["max_length"])
    loader = iter(data.loader(args.batch_size))
    return data, [next(loader) for _ in range(min(args.batches, len(data) // args.batch_size))]


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForSequenceClassification

    args, run = parse_run_args(__doc__.split("\n\n")[0], argv)
    if run is None:
        return 2
    with quiet_hf():
        models = {"teacher": AutoModelForSequenceClassification.from_pretrained(run["teacher"]["folder"]).eval(),
                  "student": AutoModelForSequenceClassification.from_pretrained(Path(args.run) / "student").eval()}
    _, batches = validation_batches(args, run)
    ms = {name: profile_ms(model, batches) for name, model in models.items()}
    kinds = [kind for kind, _ in KINDS] + ["everything else"]
    print(f"{torch.get_num_threads()} threads, {len(batches)} batches of {args.batch_size}; ms per batch (CPU time)\n")
    print(f"{'':<18}{'teacher':>9}{'student':>9}{'ratio':>7}{'share of the student':>22}")
    student_total = sum(ms["student"].values())
    for kind in [*kinds, "total"]:
        t = sum(ms["teacher"].values()) if kind == "total" else ms["teacher"].get(kind, 0.0)
        s = student_total if kind == "total" else ms["student"].get(kind, 0.0)
        ratio = f"{t / s:.2f}" if s else "-"
        print(f"{kind:<18}{t:>9.1f}{s:>9.1f}{ratio:>7}{s / student_total:>21.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
