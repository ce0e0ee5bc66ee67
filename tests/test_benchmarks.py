"""benchmarks/bench.py runs end to end on a tiny budget and reports what its table says (timings printed,
never asserted: only their presence and consistency are checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_times_the_step_levers_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench.py", "--device", "cpu", "--levers", "--repeats", "1",
                           "--steps", "2", "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    arms = ["online teacher", "cached logits", "online, fused AdamW", "cached, embeddings frozen",
            "cached, fused AdamW", "cached, frozen + fused"]
    assert list(results["train_step_s"]) == arms and all(t > 0 for t in results["train_step_s"].values())
    assert results["cached_vs_online"] == pytest.approx(
        results["train_step_s"]["online teacher"] / results["train_step_s"]["cached logits"])
    for arm in arms:
        assert f"| {arm:<26} |" in proc.stdout
    fused = results["train_step_s"]["online, fused AdamW"] / results["train_step_s"]["cached, fused AdamW"]
    assert f"the same with fused AdamW:    {fused:.2f}×" in proc.stdout  # the main job's optimizer on both sides
    assert results["teacher"]["layers"] == 6 and results["student"]["layers"] == 3
