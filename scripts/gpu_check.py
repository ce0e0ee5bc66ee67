"""GPU check: the main job's ``default`` preset in bfloat16, then the benchmark, on one CUDA GPU.

    .venv/bin/python scripts/gpu_check.py [--output-dir runs/gpu-check] [--budget-s 280]

Run it from the repository root, in the project's environment with a CUDA build of PyTorch
(``make setup`` on a Linux GPU machine installs one: PyPI's default ``torch`` wheel is built for
CUDA). It runs, each in a subprocess with a time limit that keeps the whole check under 5 minutes:

1. ``python -m kd_lib distill --preset default --bf16 --device cuda`` (fine-tunes the teacher
   unless cached, distils the 3-layer student, measures both);
2. ``python benchmarks/bench.py --device cuda --dtype bfloat16``;

then prints the GPU, the date, teacher/student throughput, the benchmark's step times and every
stage's wall time, and writes them to ``OUTPUT_DIR/gpu_check.json`` -- the figures for the README.
Without a CUDA GPU it stops at once with exit code 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands(output_dir: Path) -> dict[str, list[str]]:
    """The two runs of the check, as argument lists for ``subprocess``."""
    return {
        "distill": [sys.executable, "-m", "kd_lib", "distill", "--preset", "default", "--bf16", "--device", "cuda",
                    "--output-dir", str(output_dir / "distill"), "--overwrite", "--no-progress"],
        "bench": [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", "cuda", "--dtype", "bfloat16",
                  "--output", str(output_dir / "bench.json")],
    }


def cuda_problem() -> str | None:
    """Why this Python cannot run the check on a GPU, or ``None`` if it can."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build: install a CUDA build (on Linux, PyPI's default "
                "torch wheel) and run this again")
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False): run this on a machine with an NVIDIA GPU"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "gpu-check"))
    parser.add_argument("--budget-s", type=float, default=280.0,
                        help="time limit of the whole check in seconds (the distillation gets 75 %% of it)")
    args = parser.parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import torch

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    limits = {"distill": 0.75 * args.budget_s, "bench": 0.25 * args.budget_s}
    walls = {}
    for name, cmd in commands(out).items():
        print(f"$ {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=limits[name], capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            print(f"error: {name} did not finish within {limits[name]:.0f} s", file=sys.stderr)
            return 1
        walls[name] = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print(f"error: {name} failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
    results = json.loads((out / "distill" / "results.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    t, s = results["teacher"], results["student"]
    figures = {
        "gpu": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "main_job": {
            "preset": results["preset"], "precision": results["config"]["precision"],
            "teacher_accuracy": t["accuracy"], "student_accuracy": s["accuracy"],
            "ce_only_accuracy": results["baselines"]["ce_only"]["accuracy"],
            "teacher_throughput_per_s": t["throughput_per_s"], "student_throughput_per_s": s["throughput_per_s"],
            "speedup": results["speedup"], "stage_wall_s": results["wall_s"],
        },
        "bench": {
            "dtype": bench["dtype"], "teacher_throughput_per_s": bench["teacher"]["throughput_per_s"],
            "student_throughput_per_s": bench["student"]["throughput_per_s"],
            "teacher_latency_ms_batch1": bench["teacher"]["latency_ms_batch1"],
            "student_latency_ms_batch1": bench["student"]["latency_ms_batch1"],
            "train_step_ms": {k: 1000 * v for k, v in bench["train_step_s"].items()},
        },
        "wall_s": {**walls, "total": sum(walls.values())},
    }
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    m, b = figures["main_job"], figures["bench"]
    print(f"\nGPU check on {figures['gpu']}, {figures['date']} (torch {figures['torch']}, CUDA {figures['cuda']})\n")
    print("| | teacher | student |\n|---|---|---|")
    print(f"| accuracy, default preset in bf16 | {m['teacher_accuracy']:.4f} | {m['student_accuracy']:.4f} |")
    print(f"| throughput, main job (examples/s) | {m['teacher_throughput_per_s']:.0f} | "
          f"{m['student_throughput_per_s']:.0f} ({m['speedup']:.2f}×) |")
    print(f"| throughput, bench.py {b['dtype']} (examples/s) | {b['teacher_throughput_per_s']:.0f} | "
          f"{b['student_throughput_per_s']:.0f} |")
    print(f"| latency, batch 1 (ms) | {b['teacher_latency_ms_batch1']:.1f} | {b['student_latency_ms_batch1']:.1f} |")
    steps = ", ".join(f"{k} {v:.1f} ms" for k, v in b["train_step_ms"].items())
    print(f"\ndistillation step (bench.py): {steps}")
    print("stage wall times (main job): " + ", ".join(f"{k} {v:.1f} s" for k, v in m["stage_wall_s"].items()))
    print("wall times (this check): " + ", ".join(f"{k} {v:.0f} s" for k, v in figures["wall_s"].items()))
    print(f"written to {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
