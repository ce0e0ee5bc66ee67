"""Multi-process training (gloo, CPU): the same result as one process, and only rank 0 writes.

``--batch-size`` counts the examples of one optimizer step, whatever the number of processes: with
two processes each computes half of every batch, and the averaged gradient is the whole batch's.

- On a tiny problem without dropout, ``fit(distributed=True)`` and ``trainer_fit`` under ``torchrun``
  train the one-process student to 1e-6: only the order of float sums differs.
- The main job's ``fast`` preset under ``torchrun`` (loop backend) and ``accelerate launch``
  (trainer backend) completes and matches the one-process run: training losses to 3e-3 (relative)
  -- dropout is on, and each process draws its own masks, so the runs differ like two dropout
  seeds (measured: 3e-4) -- and accuracy to one held-out example in 200. With the tiny teacher the
  student predicts the majority class, so the accuracy check is weak; the exact check above and
  the losses carry the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kd_lib.pipeline import config_from_preset, run
from tests.conftest import save_tiny_bert
from tests.test_pipeline import check_schema

# Installed in every process through PYTHONPATH: logs each file-system write under the watched folders.
AUDIT = '''
import json, os, sys
_watched = tuple(os.environ["KD_AUDIT_WATCH"].split(os.pathsep))
_writes = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
        path, writing = args[0], True
    else:
        return
    if writing and isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_watched):
        _writes.append(f"{event} {os.fspath(path)}")

def _dump():
    rank = os.environ.get("RANK", "launcher")
    with open(os.path.join(os.environ["KD_AUDIT_OUT"], f"writes-{rank}.json"), "w") as f:
        json.dump(_writes, f)

sys.addaudithook(_hook)
import atexit
atexit.register(_dump)
'''


# Run by torchrun in two processes, and imported by the test for the one-process reference.
TINY_PROBLEM = '''
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import kd_from_cache
from kd_lib.training import TrainSettings, fit
from kd_lib.models import packaged_teacher_path
from kd_lib.trainer import trainer_fit
from kd_lib.utils import quiet_hf


def train_both(out: Path, distributed: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    split = load_task("sst2", limit={"train": 64}, seed=3)["train"]
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=16, grad_accum=2)
    for backend, n in (("loop", 60), ("trainer", 64)):  # 60: the loop's last batch is uneven (12 = 3 + 3 + 3 + 3)
        data = EncodedDataset(split.select(range(n)), tokenizer, max_length=32)
        logits = torch.randn(n, 2, generator=torch.Generator().manual_seed(5)) * 3
        torch.manual_seed(0)
        student = DistilBertForSequenceClassification(DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=2, dropout=0.0,
            attention_dropout=0.0, seq_classif_dropout=0.0))
        if backend == "loop":
            fit(student, data, kd_from_cache(logits), settings, seed=1, progress=False, distributed=distributed)
        else:
            with quiet_hf():
                trainer_fit(student, data, settings, output_dir=out / "trainer", teacher_logits=logits, seed=1,
                            progress=False)
        if not distributed or torch.distributed.get_rank() == 0:
            save_file(student.state_dict(), out / f"{backend}.safetensors")


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    train_both(Path(sys.argv[1]), distributed=True)
    torch.distributed.destroy_process_group()
'''


def launcher(name: str) -> list[str]:
    """The venv's ``torchrun`` / ``accelerate launch`` (they sit beside its Python when it is not on PATH)."""
    beside = Path(sys.executable).parent / name
    exe = str(beside) if beside.is_file() else shutil.which(name)
    if name == "torchrun":
        return [exe, "--nproc_per_node", "2", "--standalone"]
    # accelerate's CPU launcher wants MPI; its multi-GPU launcher is torchrun underneath, and the job's
    # --device cpu keeps it on the CPU (gloo)
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"]


@pytest.mark.slow
def test_ddp_is_exact_on_a_tiny_problem(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    script = tmp_path / "tiny_problem.py"
    script.write_text(TINY_PROBLEM)
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher("torchrun"), str(script), str(two)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_problem

    tiny_problem.train_both(one, distributed=False)
    for backend in ("loop", "trainer"):
        a, b = load_file(one / f"{backend}.safetensors"), load_file(two / f"{backend}.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, backend


@pytest.mark.slow
@pytest.mark.parametrize("how, backend", [("torchrun", "loop"), ("accelerate", "trainer")])
def test_two_processes_match_one_and_only_rank0_writes(tmp_path, monkeypatch, how, backend):
    teacher = tmp_path / "tiny-bert"
    save_tiny_bert(teacher)
    cache, audit = tmp_path / "cache", tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    two = tmp_path / "two"
    args = ["--preset", "fast", "--teacher", str(teacher), "--backend", backend, "--checkpoint-every", "5",
            "--no-progress"]
    env = {**os.environ, "KD_CACHE_DIR": str(cache), "PYTHONPATH": str(audit),
           "KD_AUDIT_WATCH": os.pathsep.join([str(two), str(cache)]), "KD_AUDIT_OUT": str(audit),
           "OMP_NUM_THREADS": "1"}
    cmd = [*launcher(how), "-m", "kd_lib", "distill", *args, "--output-dir", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("| teacher |") == 1, "one results table, printed by rank 0"

    # rank 0 fine-tuned and cached the teacher, computed the logits, wrote every output; rank 1 nothing
    rank0, rank1 = (json.loads((audit / f"writes-{r}.json").read_text()) for r in (0, 1))
    assert rank1 == [], rank1
    for written in ("results.json", "state.json", "teacher_logits.safetensors", "report.md", str(cache / "teachers")):
        assert any(written in w for w in rank0), written

    # the same job in one process, with the teacher rank 0 cached
    monkeypatch.setenv("KD_CACHE_DIR", str(cache))
    config = config_from_preset("fast", teacher=str(teacher), backend=backend)
    one = run(config, tmp_path / "one", progress=False, log=lambda *_: None)
    both = json.loads((two / "results.json").read_text())
    check_schema(both)
    assert both["processes"] == 2 and one["processes"] == 1 and both["backend"] == backend
    assert both["teacher"]["accuracy"] == one["teacher"]["accuracy"]
    assert both["student"]["accuracy"] == pytest.approx(one["student"]["accuracy"], abs=0.005)
    assert both["baselines"]["ce_only"]["accuracy"] == pytest.approx(one["baselines"]["ce_only"]["accuracy"],
                                                                     abs=0.005)
    for stage in ("student_kd", "ce_only"):
        losses = {name: json.loads((out / "state.json").read_text())["stages"][stage]["train_losses"]
                  for name, out in (("one", tmp_path / "one"), ("two", two))}
        assert losses["two"] == pytest.approx(losses["one"], rel=3e-3), stage
    assert not list((two / "checkpoints").iterdir()), "finished runs leave no checkpoints behind"


# Run by torchrun in two gloo processes: every helper of kd_lib.distributed, checked in each process.
HELPERS = '''
import json, sys
import torch.distributed as dist
from kd_lib import distributed as d

dist.init_process_group("gloo")
p = d.current()
assert p == d.launched() and p.world == 2
order = []
made = d.rank0_first(lambda: order.append(p.rank) or f"made by {p.rank}")
got = {
    "from_rank0": d.from_rank0({"rank": p.rank}),
    "all_gather": d.all_gather(p.rank * 10, p),
    "alone": d.all_gather(p.rank, d.SINGLE),  # a process training alone exchanges nothing
    "sum": d.sum_over_processes([1.5, p.rank], p),
    "made": made,
}
d.barrier()
with open(f"{sys.argv[1]}/rank{p.rank}.json", "w") as f:
    json.dump(got, f)
dist.destroy_process_group()
'''


def test_processes_in_one_process(monkeypatch):
    from kd_lib import distributed as d

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert d.current() == d.launched() == d.SINGLE and d.SINGLE.main
    assert d.from_rank0([1, 2]) == [1, 2] and d.all_gather("x", d.SINGLE) == ["x"]
    assert d.sum_over_processes([1.0, 2], d.SINGLE) == [1.0, 2] and d.rank0_first(lambda: 7) == 7
    assert d.start("cpu") == ("cpu", False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert d.launched() == d.Processes(1, 2) and not d.launched().main
    with pytest.raises(ValueError, match="0 <= rank < world"):
        d.Processes(rank=3, world=2)


@pytest.mark.slow
def test_helpers_in_two_processes(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher("torchrun"), str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["from_rank0"] == {"rank": 0} and got["all_gather"] == [0, 10] and got["alone"] == [rank]
        assert got["sum"] == [3.0, 1.0] and got["made"] == f"made by {rank}"
