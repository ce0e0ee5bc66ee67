"""Benchmark: the shipped student -- PyTorch and ONNX Runtime, fp32 and int8 -- against the teacher,
accuracy and speed measured side by side in one process on this machine.

    python benchmarks/bench_export.py [--run runs/distill] [--sessions 3] [--output runs/bench_export.json]

Takes a finished run of ``python -m kd_lib distill`` (its fine-tuned teacher and its student), exports
the teacher (fp32: the fairest baseline, the teacher on the same engine) and the student (fp32, int8)
to ONNX Runtime afresh with :func:`kd_lib.export.export_classifier` (each checked against PyTorch on
the validation split), then times all five models -- and, as a sixth row, the int8 student with
subnormal floats kept rather than flushed to zero (``OnnxClassifier(flush_denormal=False)``) -- in
alternation (:func:`kd_lib.evaluate.measure_speed`:
throughput at batch 64, latency at batch 1, median of ``--repeats`` rounds) with the same CPU threads.
With ``--sessions K`` the whole side-by-side timing is repeated K times: the table shows each model's
median over the sessions, and each speed target also its lowest and highest ratio over them -- on a
shared machine the speed varies from minute to minute, and one session can land either side of a target.
Prints a table and the course's targets (met or not, never asserted) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from kd_lib.data import EncodedDataset, eval_split, load_task
from kd_lib.evaluate import measure_speed, size_on_disk_mb
from kd_lib.export import OnnxClassifier, export_classifier, find_model_dir
from kd_lib.training import evaluate_accuracy
from kd_lib.utils import atomic_write_bytes, quiet_hf

TARGETS = (  # (what, row, baseline row, column, at least)
    ("int8 ONNX student vs PyTorch teacher, batch 64", "student, ONNX Runtime int8", "teacher, PyTorch fp32",
     "throughput_per_s", 4.0),
    ("int8 ONNX student vs PyTorch teacher, batch 1", "student, ONNX Runtime int8", "teacher, PyTorch fp32",
     "latency_ms_batch1", 3.0),
    ("int8 ONNX student vs ONNX teacher fp32, batch 64", "student, ONNX Runtime int8", "teacher, ONNX Runtime fp32",
     "throughput_per_s", 2.5),
    ("int8 ONNX student vs ONNX teacher fp32, batch 1", "student, ONNX Runtime int8", "teacher, ONNX Runtime fp32",
     "latency_ms_batch1", 2.5),
    ("PyTorch student vs PyTorch teacher, batch 64", "student, PyTorch fp32", "teacher, PyTorch fp32",
     "throughput_per_s", 2.0),
)


KEPT = "  same, subnormals kept"  # the ablation row: int8 student without flushing subnormals to zero


def load_models(run: Path, workdir: Path) -> tuple[dict, dict, EncodedDataset]:
    """The five models (and the int8 student with subnormals kept) by name, what each costs in accuracy and
    size, and the validation split."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    models, facts = {}, {}
    data = None
    for who in ("teacher", "student"):
        folder, results = find_model_dir(run, who)
        with quiet_hf():
            model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder)
        if data is None:
            task = results["task"]
            data = EncodedDataset(load_task(task)[eval_split(task)], tokenizer, results["config"]["max_length"])
        models[f"{who}, PyTorch fp32"] = model
        facts[f"{who}, PyTorch fp32"] = {"accuracy": evaluate_accuracy(model, data), "size_mb": size_on_disk_mb(model)}
        for int8 in (False, True) if who == "student" else (False,):  # the teacher's fair baseline: fp32
            name = f"{who}, ONNX Runtime {'int8' if int8 else 'fp32'}"
            record = export_classifier(run, workdir / name.replace(", ", "-").replace(" ", "_"), int8=int8,
                                       which=who, check_data=data)
            models[name] = OnnxClassifier(Path(record["output_dir"]) / "model.onnx")
            facts[name] = {"accuracy": record["check"]["onnx_accuracy"], "size_mb": record["size_mb"],
                           "max_abs_logit_diff": record["check"]["max_abs_logit_diff"]}
    # the same int8 file with subnormal floats kept (OnnxClassifier flushes them to zero by default): what that buys
    int8 = "student, ONNX Runtime int8"
    models[KEPT] = OnnxClassifier(models[int8].path, flush_denormal=False)
    facts[KEPT] = {**facts[int8], "accuracy": evaluate_accuracy(models[KEPT], data)}
    return models, facts, data


def table(rows: dict) -> str:
    base = rows["teacher, PyTorch fp32"]
    lines = [f"{'model':<30}{'accuracy':>9}{'size MB':>9}{'ex/s b=64':>11}{'ms b=1':>8}{'x teacher b=64':>16}"
             f"{'x teacher b=1':>15}"]
    for name, r in rows.items():
        lines.append(f"{name:<30}{r['accuracy']:>9.4f}{r['size_mb']:>9.1f}{r['throughput_per_s']:>11.0f}"
                     f"{r['latency_ms_batch1']:>8.2f}{r['throughput_per_s'] / base['throughput_per_s']:>16.2f}"
                     f"{base['latency_ms_batch1'] / r['latency_ms_batch1']:>15.2f}")
    return "\n".join(lines)


def targets(rows: dict) -> list[dict]:
    """Each speed target's measured ratio (latency: baseline / model; throughput: model / baseline)."""
    out = []
    for what, row, baseline, column, least in TARGETS:
        a, b = rows[row][column], rows[baseline][column]
        ratio = b / a if column.startswith("latency") else a / b
        out.append({"target": what, "ratio": ratio, "at_least": least, "met": ratio >= least})
    teacher, student, int8 = (rows[n]["accuracy"] for n in ("teacher, PyTorch fp32", "student, PyTorch fp32",
                                                             "student, ONNX Runtime int8"))
    for what, drop in (("int8 ONNX student's accuracy vs the PyTorch student (points)", student - int8),
                       ("int8 ONNX student's accuracy vs the PyTorch teacher (points)", teacher - int8)):
        out.append({"target": what, "ratio": 100 * drop, "at_most": 1.0, "met": 100 * drop <= 1.0})
    return out


def median_speed(sessions: list[dict]) -> dict:
    """Each model's median throughput and latency over the sessions (``measure_speed`` results)."""
    return {name: {key: statistics.median(s[name][key] for s in sessions) for key in sessions[0][name]}
            for name in sessions[0]}


def with_spread(checked: list[dict], facts: dict, sessions: list[dict]) -> list[dict]:
    """``checked`` (the targets on the median speeds), each speed target with its lowest and highest ratio
    over the sessions."""
    per_session = [targets({name: {**facts[name], **s[name]} for name in facts}) for s in sessions]
    return [{**t, "lowest": min(p[i]["ratio"] for p in per_session), "highest": max(p[i]["ratio"] for p in per_session)}
            if "at_least" in t else t for i, t in enumerate(checked)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/distill", help="a finished `python -m kd_lib distill` run")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model (median reported)")
    parser.add_argument("--sessions", type=int, default=1,
                        help="repeat the whole timing this many times (median table; each target's lowest and highest)")
    parser.add_argument("--output", default="runs/bench_export.json")
    args = parser.parse_args(argv)
    for name in ("repeats", "sessions"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be at least 1; got {getattr(args, name)}", file=sys.stderr)
            return 2
    if not (Path(args.run) / "results.json").is_file():
        print(f"error: {args.run} holds no finished run (no results.json): run `python -m kd_lib distill` first, "
              "or pass --run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        models, facts, data = load_models(Path(args.run), Path(tmp))
        sessions = [measure_speed(models, data, repeats=args.repeats) for _ in range(args.sessions)]
    speed = median_speed(sessions)
    rows = {name: {**facts[name], **speed[name]} for name in models}
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; {len(data)} validation "
          f"sentences; run {args.run}; median of {args.sessions} session(s) of {args.repeats} rounds\n")
    print(table(rows))
    print("\ntargets (measured here, side by side; not asserted):")
    checked = with_spread(targets(rows), facts, sessions)
    for t in checked:
        bound = f">= {t['at_least']}x" if "at_least" in t else f"<= {t['at_most']}"
        spread = f"   sessions {t['lowest']:.2f}-{t['highest']:.2f}" if "lowest" in t and args.sessions > 1 else ""
        met = "met" if t["met"] else "NOT met"
        print(f"  {t['target']:<62}{t['ratio']:>7.2f}   target {bound:<8} {met:<8}{spread}")
    atomic_write_bytes(Path(args.output), json.dumps({"run": args.run, "rows": rows, "targets": checked,
                                                      "sessions": sessions, "threads": torch.get_num_threads()},
                                                     indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
