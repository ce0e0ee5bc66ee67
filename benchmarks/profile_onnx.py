"""Where the int8 ONNX Runtime student's time goes, by operator -- with subnormal floats flushed to zero and kept.

    python benchmarks/profile_onnx.py [--run runs/distill] [--batches 8] [--batch-size 64]

Exports the run's student to ONNX Runtime int8 afresh (:func:`kd_lib.export.export_classifier`, checked
against PyTorch on the validation split), then runs the same validation batches through two sessions
set up as :class:`kd_lib.export.OnnxClassifier` sets them up -- one flushing subnormal floats to zero
(the default), one keeping them -- with ONNX Runtime's profiler on, and prints the kernel time per
batch of each operator type (``QAttention``, ``DynamicQuantizeMatMul``, ``SkipLayerNormalization``,
``BiasGelu``, ...): what int8 made cheap, what stays in float32, and what the flushing changes.
Printed, not asserted.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from kd_lib.export import ONNX_FILE, export_classifier
from kd_lib.utils import quiet_hf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_speed import parse_run_args, validation_batches

WARMUP = 2  # untimed runs before the profiled ones


def profile_ms(path: Path, batches: list[dict], flush: bool, workdir: Path) -> dict[str, float]:
    """Milliseconds of kernel time per batch by operator type, in a session like ``OnnxClassifier``'s."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1" if flush else "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"profile-{'flushed' if flush else 'kept'}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = [{k: b[k].numpy().astype("int64") for k in ("input_ids", "attention_mask")} for b in batches]
    for feed in feeds[:WARMUP] + feeds:
        torch.set_flush_denormal(flush)  # as OnnxClassifier.forward does on the calling thread
        try:
            session.run(["logits"], feed)
        finally:
            torch.set_flush_denormal(False)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = runs[WARMUP]
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= timed_from:
            totals[e["args"]["op_name"]] += e["dur"] / 1000 / len(batches)
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    args, run = parse_run_args(__doc__.split("\n\n")[0], argv)
    if run is None:
        return 2
    data, batches = validation_batches(args, run)
    with tempfile.TemporaryDirectory() as tmp, quiet_hf():
        record = export_classifier(Path(args.run), Path(tmp) / "int8", int8=True, check_data=data)
        path = Path(record["output_dir"]) / ONNX_FILE
        ms = {name: profile_ms(path, batches, name == "flushed", Path(tmp)) for name in ("flushed", "kept")}
    totals = {name: sum(v.values()) for name, v in ms.items()}
    ops = sorted(set(ms["flushed"]) | set(ms["kept"]), key=lambda op: -ms["kept"].get(op, 0.0))
    print(f"int8 student of {args.run}, {torch.get_num_threads()} threads, {len(batches)} batches of "
          f"{args.batch_size}; kernel ms per batch (ONNX Runtime's profiler)\n")
    print(f"{'operator':<28}{'subnormals kept':>16}{'flushed':>9}{'kept / flushed':>16}{'share (kept)':>14}")
    for op in [*ops, "total"]:
        kept = totals["kept"] if op == "total" else ms["kept"].get(op, 0.0)
        flushed = totals["flushed"] if op == "total" else ms["flushed"].get(op, 0.0)
        ratio = f"{kept / flushed:.2f}" if flushed else "-"
        print(f"{op:<28}{kept:>16.2f}{flushed:>9.2f}{ratio:>16}{kept / totals['kept']:>14.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
