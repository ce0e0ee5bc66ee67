"""Benchmark: teacher vs student inference, and distillation steps with an online teacher vs
cached logits -- measured side by side in one process on this machine.

    python benchmarks/bench.py [--device cpu] [--student-layers 3] [--output runs/bench.json]

Speed does not depend on the weights' values, so the teacher is the packaged all-MiniLM-L6-v2
with a fresh head and the student is built from it; nothing is trained first. Prints a table
and writes JSON; the targets of the course (student ≥ 2× the teacher's throughput, cached-logit
steps ≥ 1.5× faster than online-teacher steps) are checked in the table, not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import kd_from_cache, kd_online
from kd_lib.evaluate import count_params, measure_speed
from kd_lib.models import load_teacher
from kd_lib.students import default_student_layers, distilbert_from_bert
from kd_lib.training import TrainSettings, forward, make_optimizer, needs_of, predict_logits
from kd_lib.utils import quiet_hf, set_seed


def time_training_steps(arms: dict, data: EncodedDataset, batch_size: int, steps: int, repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Median seconds per optimizer step for each arm, alternating between them.

    ``arms`` maps a name to ``(student_factory, loss_fn, fused)``: a fresh student, its loss, and whether
    its AdamW uses PyTorch's fused implementation (one kernel for all parameters; the main job's) instead
    of the default.
    """
    batches = []
    for batch in data.loader(batch_size, shuffle=True, seed=0):
        batches.append(batch)
        if len(batches) == steps:
            break
    students = {name: factory().to(device).train() for name, (factory, _, _) in arms.items()}
    optims = {name: make_optimizer(students[name], TrainSettings(lr=1e-5, fused_adamw=fused), steps * (repeats + 1))
              for name, (_, _, fused) in arms.items()}

    def run(name: str, inputs: list[dict]) -> float:
        model, (opt, sched), loss_fn = students[name], optims[name], arms[name][1]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in inputs:
            out = forward(model, b, device, needs_of(loss_fn))
            loss = loss_fn(out, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(inputs)

    for name in arms:  # warm-up
        run(name, batches[:2])
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name in arms:
            times[name].append(run(name, batches))
    return {name: statistics.median(t) for name, t in times.items()}


def frozen_embeddings(factory):
    """A student factory whose token-embedding table (copied from the teacher) is not trained."""
    def make():
        student = factory()
        student.get_input_embeddings().weight.requires_grad_(False)
        return student
    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student-layers", type=int, default=None, help="default: half the teacher's layers")
    parser.add_argument("--teacher", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size (default 64)")
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed round")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="inference dtype (bfloat16 for GPUs)")
    parser.add_argument("--levers", action="store_true",
                        help="also time cached-logit steps with frozen token embeddings and with fused AdamW")
    parser.add_argument("--output", default="runs/bench.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    set_seed(0)

    with quiet_hf():
        teacher, tokenizer = load_teacher(args.teacher, num_labels=2)
    layers = default_student_layers(teacher.config.num_hidden_layers, args.student_layers)
    student = distilbert_from_bert(teacher, layers).eval()
    data = load_task("sst2", limit={"train": 512}, seed=0)
    held_out = EncodedDataset(data["validation"], tokenizer, args.max_length)
    train = EncodedDataset(data["train"], tokenizer, args.max_length)

    dtype = getattr(torch, args.dtype)
    speed = measure_speed({"teacher": teacher.to(dtype), "student": student.to(dtype)}, held_out,
                          batch_size=args.batch_size, repeats=args.repeats, device=device)
    teacher.float()
    cached = predict_logits(teacher, train, device=device)
    def factory():
        return distilbert_from_bert(teacher, layers)

    arms = {"online teacher": (factory, kd_online(teacher), False),
            "cached logits": (factory, kd_from_cache(cached), False)}
    if args.levers:  # what a practitioner would try to make the cached step cheaper (speed only; see the README)
        arms.update({
            "online, fused AdamW": (factory, kd_online(teacher), True),
            "cached, embeddings frozen": (frozen_embeddings(factory), kd_from_cache(cached), False),
            "cached, fused AdamW": (factory, kd_from_cache(cached), True),
            "cached, frozen + fused": (frozen_embeddings(factory), kd_from_cache(cached), True),
        })
    steps = time_training_steps(arms, train, args.train_batch_size, args.steps, args.repeats, device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "date": time.strftime("%Y-%m-%d"),
        "teacher": {"layers": teacher.config.num_hidden_layers, "params": count_params(teacher), **speed["teacher"]},
        "student": {"layers": len(layers), "params": count_params(student), **speed["student"]},
        "speedup": speed["student"]["throughput_per_s"] / speed["teacher"]["throughput_per_s"],
        "train_step_s": steps,
        "cached_vs_online": steps["online teacher"] / steps["cached logits"],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))

    t, s = results["teacher"], results["student"]
    print(f"device: {results['device']} ({results['threads']} threads), dtype {args.dtype}, torch {results['torch']}")
    print(f"| {'model':<22} | layers | params (M) | examples/s (b={args.batch_size}) | latency ms (b=1) |")
    print("|---|---|---|---|---|")
    for name, m in (("teacher", t), ("student", s)):
        print(f"| {name:<22} | {m['layers']} | {m['params'] / 1e6:.1f} | {m['throughput_per_s']:.0f} | "
              f"{m['latency_ms_batch1']:.1f} |")
    print(f"\n| distillation step (b={args.train_batch_size}) | ms / step | |\n|---|---|---|")
    for name, sec in steps.items():
        print(f"| {name:<26} | {1000 * sec:.0f} | {steps['online teacher'] / sec:.2f}× the online step's speed |")
    ok = {True: "met", False: "MISSED"}
    print(f"\nstudent / teacher throughput: {results['speedup']:.2f}× (target ≥ 2.0×: {ok[results['speedup'] >= 2]})")
    print(f"cached / online step speed:   {results['cached_vs_online']:.2f}× "
          f"(target ≥ 1.5×: {ok[results['cached_vs_online'] >= 1.5]})")
    if "online, fused AdamW" in steps:  # the main job's optimizer, on both sides
        fused = steps["online, fused AdamW"] / steps["cached, fused AdamW"]
        print(f"the same with fused AdamW:    {fused:.2f}× (target ≥ 1.5×: {ok[fused >= 1.5]}; the main job's)")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
