"""``python -m kd_lib check``: green when all is well, red with a fix when something is not."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kd_lib import check, models
from kd_lib.data import DATA_FILES, data_dir


def test_check_passes_here(capsys):
    assert check.main() == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for name in ("python", "torch", "transformers", "datasets", "nbval", "onnx", "onnxruntime", "cpu threads", "gpu",
                 "teacher"):
        assert f"] {name}" in out
    for rel in DATA_FILES:
        assert f"data {rel}" in out
    assert "sha256 matches" in out
    for task in ("sst2", "ag_news"):
        assert re.search(rf"\[ok  \] dev split {task} +1000 rows of the training file, sha256 matches", out)


def test_check_warns_without_onnxruntime(monkeypatch, capsys):
    # export/predict's ONNX Runtime is optional for the course: missing, it is a warning with the fix, not a failure
    real = check._version
    monkeypatch.setattr(check, "_version", lambda dist: None if dist == "onnxruntime" else real(dist))
    assert check.main() == 0
    out = capsys.readouterr().out
    assert re.search(r"\[warn\] onnxruntime +missing \(only needed by `export`", out)
    assert "pip install -e ." in out and re.search(r"\[ok  \] onnx +\d", out)


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for rel in DATA_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir() / rel, root / rel)
    monkeypatch.setenv("KD_DATA_DIR", str(root))
    return root


def test_check_reports_altered_and_missing_data(data_copy, capsys):
    with open(data_copy / "sst2" / "train.tsv", "a") as f:
        f.write("an extra line\t1\n")
    (data_copy / "ag_news" / "test.tsv").unlink()
    assert check.main() == 1
    out = capsys.readouterr().out
    assert "[FAIL] data sst2/train.tsv" in out and "does not match its recorded sha256" in out
    assert "[FAIL] data ag_news/test.tsv" in out and "is missing" in out
    assert "fix:" in out and "2 of 25 checks failed" in out
    for task in ("sst2", "ag_news"):  # a task's data files failed: its dev split is not checked, not a failure
        assert re.search(rf"\[warn\] dev split {task} +not checked", out)


def test_check_reports_a_moved_dev_split(data_copy, monkeypatch, capsys):
    # another data folder (data_copy): the split is computed afresh, not taken from this process's memory
    from kd_lib import splits

    monkeypatch.setitem(splits.DEV_SHA256, "ag_news", "0" * 64)
    assert check.main() == 1
    out = capsys.readouterr().out
    assert "[FAIL] dev split ag_news" in out and "is not the recorded one" in out and "fix:" in out
    assert re.search(r"\[ok  \] dev split sst2 +1000 rows", out)


def test_check_reports_tampered_teacher(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "teacher"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(models, "packaged_teacher_path", lambda: copy)
    assert check.main() == 1
    out = capsys.readouterr().out
    assert "[FAIL] teacher" in out and "force-reinstall" in out


def test_check_command_line():
    proc = subprocess.run([sys.executable, "-m", "kd_lib", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All " in proc.stdout and "checks passed" in proc.stdout
    assert proc.stderr == ""
    scripts = Path(sys.executable).parent
    for script in ("kd-check", "kd-distill", "kd-distill-lm"):
        assert (scripts / script).is_file(), f"console script {script} installed"
