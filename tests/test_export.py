"""Shipping the student: ONNX export (fp32 and int8) checked against PyTorch, `predict` on either format,
the main job's `--export`, and every bad input ending in one clear error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_lib.cli import main
from kd_lib.data import EncodedDataset, load_task, set_label_names
from kd_lib.export import (
    FP32_LOGIT_ATOL,
    INT8_MAX_DROP,
    ONNX_FILE,
    ExportCheckError,
    OnnxClassifier,
    check_against_pytorch,
    export_classifier,
    export_onnx,
    find_model_dir,
    load_classifier,
    predict_texts,
)
from kd_lib.training import predict_logits
from tests.conftest import save_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés from start to finish,"]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory) -> Path:
    """``python -m kd_lib distill --preset fast --export``, as a user runs it (the session's course cache:
    the fast teacher is shared with the other tests and notebooks)."""
    out = tmp_path_factory.mktemp("export") / "run"
    cmd = [sys.executable, "-m", "kd_lib", "distill", "--preset", "fast", "--export", "--output-dir", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "int8 ONNX student" in proc.stdout
    return out


@pytest.fixture
def tiny_classifier(tmp_path) -> Path:
    """A 2-layer, 32-wide random BERT with SST-2's class names, saved as a model folder."""
    folder = tmp_path / "tiny"
    model = save_tiny_bert(folder, num_layers=2)
    set_label_names(model, "sst2").config.save_pretrained(folder)
    return folder


def test_fp32_export_gives_pytorch_logits(tiny_classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    path = export_onnx(model, tmp_path / ONNX_FILE)
    onnx = OnnxClassifier(path)
    data = EncodedDataset(load_task("sst2", limit=40)["validation"], tokenizer, 32)  # batches of many lengths
    ours, reference = predict_logits(onnx, data, batch_size=16), predict_logits(model, data, batch_size=16)
    assert ours.shape == reference.shape == (40, 2)
    assert (ours - reference).abs().max() < 1e-4


def test_export_writes_a_checked_folder_and_refuses_to_overwrite(tiny_classifier, tmp_path):
    record = export_classifier(tiny_classifier, tmp_path / "out")
    folder = Path(record["output_dir"])
    assert {ONNX_FILE, "config.json", "export.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    check = record["check"]
    assert record["task"] == "sst2" and check["examples"] == 872  # SST-2's whole validation split
    assert check["max_abs_logit_diff"] <= FP32_LOGIT_ATOL and check["same_prediction"] > 0.99
    assert check["onnx_accuracy"] == pytest.approx(check["pytorch_accuracy"], abs=2 / 872)
    assert json.loads((folder / "export.json").read_text())["check"] == check
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left
    with pytest.raises(ValueError, match="already exists: pass --overwrite"):
        export_classifier(tiny_classifier, folder)


def test_a_failed_check_writes_nothing(tiny_classifier, tmp_path, monkeypatch):
    import kd_lib.export as export

    monkeypatch.setattr(export, "FP32_LOGIT_ATOL", -1.0)  # no difference is small enough now
    with pytest.raises(ExportCheckError, match=r"logits differ from PyTorch's by up to .* nothing was written"):
        export_classifier(tiny_classifier, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no output folder, no temporary folder


def test_int8_check_compares_accuracy_against_the_stated_drop():
    labels = torch.tensor([0, 1] * 100)
    right = torch.nn.functional.one_hot(labels, 2).float()
    one_wrong = right.clone()
    one_wrong[0] = one_wrong[0].flip(0)  # 1 of 200: 0.5 point, accepted
    assert check_against_pytorch(right, one_wrong, labels, int8=True)["onnx_accuracy"] == pytest.approx(0.995)
    two_wrong = one_wrong.clone()
    two_wrong[1] = two_wrong[1].flip(0)  # 2 of 200: 1 point, refused
    with pytest.raises(ExportCheckError, match=r"1\.00 points below PyTorch's 1\.0000 \(at most 0\.5 accepted\)"):
        check_against_pytorch(right, two_wrong, labels, int8=True)
    assert INT8_MAX_DROP == 0.005


def test_flushing_subnormals_changes_no_logit_and_restores_pytorch(tiny_classifier, tmp_path):
    exported = Path(export_classifier(tiny_classifier, tmp_path / "onnx", int8=True)["output_dir"])
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones_like(ids)
    flushed = OnnxClassifier(exported / ONNX_FILE)(ids, mask).logits
    kept = OnnxClassifier(exported / ONNX_FILE, flush_denormal=False)(ids, mask).logits
    assert torch.allclose(flushed, kept, atol=1e-6)
    # after the call this thread keeps subnormals again (PyTorch's default): 1e-40 survives a multiplication
    assert (torch.tensor([1e-40]) * torch.tensor([1.0])).item() > 0


def test_predict_labels_sentences_with_pytorch_and_onnx_alike(tiny_classifier, tmp_path):
    exported = Path(export_classifier(tiny_classifier, tmp_path / "onnx")["output_dir"])
    results = {}
    for folder in (tiny_classifier, exported):
        model, tokenizer, kind = load_classifier(folder)
        results[kind] = predict_texts(model, tokenizer, SENTENCES * 3, batch_size=4)
    assert set(results) == {"pytorch", "onnx"}
    for a, b in zip(results["pytorch"], results["onnx"], strict=True):
        assert a.label == b.label and a.label in ("negative", "positive") and a.text == b.text
        assert a.probability == pytest.approx(b.probability, abs=1e-4) and 0.5 <= a.probability <= 1


@pytest.mark.parametrize("argv, message", [
    (["predict", "{missing}", "hello"], "does not exist: give a model folder"),
    (["predict", "{empty_dir}", "hello"], "holds no model (no config.json)"),
    (["predict", "{lm}", "hello"], "not a sentence classifier"),
    (["predict", "{tiny}", "  "], "sentence 1 is empty"),
    (["predict", "{tiny}", "hello", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["predict", "{tiny}", "--file", "{missing}"], "no such file"),
    (["export", "{missing}"], "does not exist"),
    (["export", "{tiny}", "--teacher"], "--teacher needs a run folder"),
    (["export", "{tiny}", "--task", "imdb"], "--task 'imdb' is not a course task"),
    (["predict", "{bad_run}", "hello"], "results.json is damaged (Expecting value"),
    (["export", "{bad_run}"], "re-run `python -m kd_lib distill` with --overwrite"),
    (["predict", "{bad_config}", "hello"], "config.json is damaged (a JSON list, not an object)"),
])
def test_bad_input_ends_in_one_error_line(argv, message, tiny_classifier, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "bad_run").mkdir()
    (tmp_path / "bad_run" / "results.json").write_text("")  # e.g. a disk that filled up
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "config.json").write_text("[1, 2]")
    names = {"missing": tmp_path / "nothing-here", "empty_dir": tmp_path / "empty", "lm": tmp_path / "lm",
             "tiny": tiny_classifier, "bad_run": tmp_path / "bad_run", "bad_config": tmp_path / "bad_config"}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_predict_reads_stdin_and_files(tiny_classifier, tmp_path):
    listing = tmp_path / "sentences.txt"
    listing.write_text("\n".join(SENTENCES) + "\n\n")  # a blank line is skipped
    base = [sys.executable, "-m", "kd_lib", "predict", str(tiny_classifier)]
    by_file = subprocess.run([*base, "--file", str(listing), "--json"], capture_output=True, text=True, timeout=300)
    by_stdin = subprocess.run([*base, "--json"], input="\n".join(SENTENCES), capture_output=True, text=True,
                              timeout=300)
    for proc in (by_file, by_stdin):
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["text"] for r in rows] == SENTENCES and all(r["label"] in ("negative", "positive") for r in rows)
    empty = subprocess.run(base, input="\n \n", capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no sentences")


def test_main_job_export_reports_the_int8_student(fast_run):
    results = json.loads((fast_run / "results.json").read_text())
    onnx = results["student_int8_onnx"]
    assert (fast_run / "onnx-int8" / ONNX_FILE).is_file()
    assert onnx["pytorch_accuracy"] - onnx["accuracy"] <= INT8_MAX_DROP + 1e-6
    assert onnx["pytorch_accuracy"] == pytest.approx(results["student"]["accuracy"])  # the same 200 sentences
    assert onnx["size_mb"] < 0.3 * results["student"]["size_mb"]  # int8 weights and embeddings: about a quarter
    assert onnx["speedup"] == pytest.approx(
        onnx["throughput_per_s"] / onnx["measured_beside"]["teacher"]["throughput_per_s"])
    report = (fast_run / "report.md").read_text()
    assert "| student (KD), ONNX Runtime int8 |" in report and "## Shipped: the student on ONNX Runtime, int8" in report


def test_export_and_predict_a_run_folder_from_the_command_line(fast_run, capsys):
    assert main(["export", str(fast_run)]) == 0
    out = capsys.readouterr().out
    assert f"fp32 ONNX model: {fast_run / 'onnx'}" in out and "largest logit difference" in out
    record = json.loads((fast_run / "onnx" / "export.json").read_text())
    assert record["check"]["max_abs_logit_diff"] <= FP32_LOGIT_ATOL
    labels = {}
    for folder in ("student", "onnx", "onnx-int8"):
        assert main(["predict", str(fast_run / folder), *SENTENCES, "--json"]) == 0
        labels[folder] = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels["student"] == labels["onnx"] == labels["onnx-int8"]
    model_dir, run = find_model_dir(fast_run, "teacher")
    assert run["task"] == "sst2" and (model_dir / "model.safetensors").is_file()


def test_run_folder_accuracy_of_the_exported_teacher(fast_run, tmp_path):
    record = export_classifier(fast_run, tmp_path / "teacher-int8", int8=True, which="teacher")
    check = record["check"]
    assert record["source"] == json.loads((fast_run / "results.json").read_text())["teacher"]["folder"]
    assert check["pytorch_accuracy"] - check["onnx_accuracy"] <= INT8_MAX_DROP + 1e-6 and check["examples"] == 872


def test_benchmark_measures_the_five_models_side_by_side(fast_run, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_export.py", "--run", str(fast_run), "--repeats", "1",
                           "--sessions", "2", "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads(out.read_text())
    names = ["teacher, PyTorch fp32", "teacher, ONNX Runtime fp32", "student, PyTorch fp32",
             "student, ONNX Runtime fp32", "student, ONNX Runtime int8", "  same, subnormals kept"]
    assert list(bench["rows"]) == names and all(name in proc.stdout for name in names)
    kept = bench["rows"]["  same, subnormals kept"]  # the same file: flushing subnormals moves no prediction here
    assert kept["accuracy"] == bench["rows"]["student, ONNX Runtime int8"]["accuracy"]
    rows = bench["rows"]
    for who in ("teacher", "student"):  # fp32 ONNX: PyTorch's predictions
        pytorch = rows[f"{who}, PyTorch fp32"]["accuracy"]
        assert rows[f"{who}, ONNX Runtime fp32"]["accuracy"] == pytest.approx(pytorch, abs=1 / 872)
    int8 = rows["student, ONNX Runtime int8"]["accuracy"]
    assert rows["student, PyTorch fp32"]["accuracy"] - int8 <= INT8_MAX_DROP + 1e-6
    first = bench["targets"][0]
    assert first["ratio"] == pytest.approx(rows["student, ONNX Runtime int8"]["throughput_per_s"]
                                           / rows["teacher, PyTorch fp32"]["throughput_per_s"])
    sessions = bench["sessions"]  # two sessions: the table holds their medians (= means), the target their spread
    int8s = [s["student, ONNX Runtime int8"]["throughput_per_s"] for s in sessions]
    assert len(sessions) == 2
    assert rows["student, ONNX Runtime int8"]["throughput_per_s"] == pytest.approx(sum(int8s) / 2)
    ratios = [i / s["teacher, PyTorch fp32"]["throughput_per_s"] for i, s in zip(int8s, sessions, strict=True)]
    assert (first["lowest"], first["highest"]) == (pytest.approx(min(ratios)), pytest.approx(max(ratios)))
    assert min(ratios) - 1e-9 <= first["ratio"] <= max(ratios) + 1e-9  # a ratio of sums lies between the ratios
    assert f"sessions {min(ratios):.2f}-{max(ratios):.2f}" in proc.stdout
    assert "targets (measured here, side by side; not asserted):" in proc.stdout
    missing = subprocess.run([sys.executable, "benchmarks/bench_export.py", "--run", str(tmp_path / "none")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "holds no finished run" in missing.stderr
    none = subprocess.run([sys.executable, "benchmarks/bench_export.py", "--run", str(fast_run), "--sessions", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert none.returncode == 2 and "--sessions must be at least 1; got 0" in none.stderr


def test_profile_splits_the_forward_time_by_kind_of_operation(fast_run):
    proc = subprocess.run([sys.executable, "benchmarks/profile_speed.py", "--run", str(fast_run), "--batches", "2",
                           "--batch-size", "16"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line[:18].strip(): line[18:].split() for line in proc.stdout.splitlines() if line[:18].strip()}
    teacher, student = float(rows["total"][0]), float(rows["total"][1])
    assert teacher > student > 0 and rows["total"][3] == "100%"
    assert float(rows["matrix products"][1]) > 0.3 * student  # the bulk of an encoder's work
    assert abs(sum(float(rows[k][1]) for k in rows if k not in ("total",) and len(rows[k]) == 4) - student) < 0.5


def test_onnx_profile_splits_the_int8_time_by_operator(fast_run):
    proc = subprocess.run([sys.executable, "benchmarks/profile_onnx.py", "--run", str(fast_run), "--batches", "2",
                           "--batch-size", "16"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line[:28].strip(): line[28:].split() for line in proc.stdout.splitlines()[3:] if line[:28].strip()}
    assert {"QAttention", "DynamicQuantizeMatMul", "SkipLayerNormalization", "total"} <= set(rows)
    kept, flushed = (sum(float(r[i]) for op, r in rows.items() if op != "total") for i in (0, 1))
    assert abs(kept - float(rows["total"][0])) < 0.05 and abs(flushed - float(rows["total"][1])) < 0.05
    assert rows["total"][3] == "100%" and float(rows["QAttention"][0]) > 0
    missing = subprocess.run([sys.executable, "benchmarks/profile_onnx.py", "--run", str(fast_run / "nothing")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "holds no finished run" in missing.stderr


def test_a_rerun_without_export_names_the_stale_onnx_folder(fast_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(fast_run, copy)  # finished: the re-run only rewrites results.json, without the export's entry
    assert main(["distill", "--preset", "fast", "--output-dir", str(copy), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"note: {copy / 'onnx-int8'} is left from an earlier --export" in out
    assert "student_int8_onnx" not in json.loads((copy / "results.json").read_text())
    shutil.rmtree(copy / "onnx-int8")
    assert main(["distill", "--preset", "fast", "--output-dir", str(copy), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().out
