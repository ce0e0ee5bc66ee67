"""The main job: end to end, resume, results schema, and every bad argument failing early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import kd_lib.training as training
from kd_lib.cache import RECORD
from kd_lib.pipeline import config_from_preset, run, validate
from tests.conftest import load_script, save_tiny_bert

RESULT_KEYS = {"task", "preset", "seed", "teacher", "student", "baselines", "retention", "speedup", "wall_s"}
MODEL_KEYS = {"name", "layers", "params", "accuracy", "throughput_per_s", "latency_ms_batch1"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_config(teacher, **overrides):
    values = {"teacher": str(teacher), "train_limit": 64, "eval_limit": 32, "epochs": 2, "lr": 1e-3,
              "teacher_lr": 1e-3, "batch_size": 16, "max_length": 32, **overrides}
    return config_from_preset("fast", **values)


def check_schema(results: dict) -> None:
    assert set(results) >= RESULT_KEYS
    for who in ("teacher", "student"):
        assert set(results[who]) >= MODEL_KEYS, who
        assert 0 <= results[who]["accuracy"] <= 1 and results[who]["throughput_per_s"] > 0
        assert results[who]["latency_ms_batch1"] > 0 and results[who]["params"] > 0
    assert 0 <= results["baselines"]["ce_only"]["accuracy"] <= 1
    assert results["retention"] == pytest.approx(results["student"]["accuracy"] / results["teacher"]["accuracy"])
    assert results["speedup"] == pytest.approx(
        results["student"]["throughput_per_s"] / results["teacher"]["throughput_per_s"])
    assert {"teacher", "student_kd", "ce_only", "speed"} <= set(results["wall_s"])


def test_twelve_layer_teacher_folder_gives_six_layer_student(tmp_path, cache):
    """The --teacher bert-base-uncased path, offline: a 12-layer BERT folder → 6-layer DistilBERT."""
    folder = tmp_path / "bert12"
    save_tiny_bert(folder, num_layers=12, hidden=16)
    out = tmp_path / "out"
    results = run(tiny_config(folder, epochs=1), out, progress=False, log=lambda *_: None)
    check_schema(results)
    assert results["teacher"]["layers"] == 12 and results["student"]["layers"] == 6
    assert results["student"]["teacher_layers"] == [0, 2, 4, 6, 8, 10]
    saved = json.loads((out / "results.json").read_text())
    assert saved["student"]["accuracy"] == results["student"]["accuracy"]
    for name in ("report.md", "results.png", "student/model.safetensors", "student/config.json",
                 "student/tokenizer.json"):
        assert (out / name).is_file(), name
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(out / "student", use_safetensors=True)
    assert type(student).__name__ == "DistilBertForSequenceClassification" and student.config.n_layers == 6
    assert not list(out.glob("checkpoints/*.pt")), "finished runs leave no checkpoints behind"


def test_killed_run_resumes_to_the_same_result(tiny_teacher, tmp_path, cache, monkeypatch):
    config = tiny_config(tiny_teacher)
    reference = run(config, tmp_path / "uninterrupted", progress=False, log=lambda *_: None)

    out = tmp_path / "interrupted"
    calls = {"n": 0}
    real_epoch = training.train_epoch

    def interrupt_second_student_epoch(*args, **kwargs):
        if kwargs.get("desc", "").startswith("student kd"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupt_second_student_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda *_: None)
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    state = json.loads((out / "state.json").read_text())
    assert set(state["stages"]) == {"teacher", "logits"}
    assert torch.load(out / "checkpoints" / "student_kd.pt", weights_only=True)["epochs_done"] == 1

    epochs_run = []
    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: epochs_run.append(k["desc"]) or real_epoch(*a, **k))
    resumed = run(config, out, progress=False, log=lambda *_: None)
    # only the unfinished work was done: one KD epoch, then the CE baseline's two
    assert epochs_run == ["student kd epoch 2/2", "ce only epoch 1/2", "ce only epoch 2/2"]
    assert resumed["student"]["accuracy"] == reference["student"]["accuracy"]
    assert resumed["baselines"] == reference["baselines"]
    assert resumed["teacher"]["accuracy"] == reference["teacher"]["accuracy"]
    kd_state = json.loads((out / "state.json").read_text())["stages"]["student_kd"]
    ref_state = json.loads((tmp_path / "uninterrupted" / "state.json").read_text())["stages"]["student_kd"]
    assert kd_state["train_losses"] == pytest.approx(ref_state["train_losses"], rel=1e-6)

    # a finished run re-run: nothing is trained again
    epochs_run.clear()
    again = run(config, out, progress=False, log=lambda *_: None)
    assert epochs_run == [] and again["student"]["accuracy"] == reference["student"]["accuracy"]


def test_students_train_with_fused_adamw_unless_told_otherwise(tiny_teacher, tmp_path, cache, monkeypatch, capsys):
    fused_flags, real_adamw = [], training.adamw

    def spy(model, settings):
        fused_flags.append(settings.fused_adamw)
        return real_adamw(model, settings)

    monkeypatch.setattr(training, "adamw", spy)
    config, out = tiny_config(tiny_teacher, epochs=1), tmp_path / "out"
    results = run(config, out, progress=False, log=lambda *_: None)
    assert fused_flags[-2:] == [True, True] and results["config"]["fused_adamw"] is True  # KD and CE-only students
    # a run saved before the setting existed trained with plain AdamW: read so, and refused as other settings
    state = json.loads((out / "state.json").read_text())
    del state["config"]["fused_adamw"]
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"other settings \(fused_adamw differ\)"):
        run(config, out, progress=False, log=lambda *_: None)
    fused_flags.clear()
    run(replace(config, fused_adamw=False), out, progress=False, log=lambda *_: None)
    assert fused_flags == [], "the finished plain-AdamW run was recognised: nothing trained again"

    from kd_lib import cli, pipeline

    def capture(config, *args, **kwargs):
        raise ValueError(f"captured fused_adamw={config.fused_adamw}")

    monkeypatch.setattr(pipeline, "run", capture)
    for argv, fused in (([], True), (["--no-fused-adamw"], False)):
        assert cli.main(["distill", "--preset", "fast", "--output-dir", str(out), "--no-progress", *argv]) == 2
        assert f"captured fused_adamw={fused}" in capsys.readouterr().err


def test_output_dir_with_other_settings_is_refused(tiny_teacher, tmp_path, cache):
    config = tiny_config(tiny_teacher, epochs=1)
    run(config, tmp_path / "out", progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"other settings \(temperature differ\).*--overwrite"):
        run(replace(config, temperature=4.0), tmp_path / "out", progress=False, log=lambda *_: None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task": "imdb"}, r"--task 'imdb' is unknown; choose one of: ag_news, sst2"),
        ({"temperature": 0.0}, r"--temperature must be a finite number > 0"),
        ({"temperature": -1.0}, r"--temperature"),
        ({"alpha": 1.5}, r"--alpha must be in the range \[0, 1\]"),
        ({"student_layers": 5}, r"--student-layers 5: a student needs between 1 and the teacher's 4 layers"),
        ({"student_layers": (0, 4)}, r"--student-layers 0,4: .*indices in 0..3"),
        ({"epochs": 0}, r"--epochs must be a positive integer"),
        ({"max_length": 4}, r"--max-length must be between 8 and 512"),
        ({"lr": 0.0}, r"--lr must be a learning rate between 0 and 1 \(e.g. 2e-4\); got 0.0"),
        ({"lr": float("nan")}, r"--lr must be a learning rate"),
        ({"teacher_lr": 5.0}, r"teacher_lr must be a learning rate between 0 and 1"),
    ],
)
def test_bad_arguments_fail_before_training(tiny_teacher, tmp_path, cache, overrides, message):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        run(tiny_config(tiny_teacher, **overrides), tmp_path / "out", progress=False)
    assert time.perf_counter() - start < 10
    assert not (cache / "teachers").exists(), "nothing was trained"


def test_teacher_with_wrong_label_count_or_tokenizer(tmp_path, cache):
    three = tmp_path / "three-labels"
    save_tiny_bert(three, num_labels=3)
    (three / RECORD).write_text("{}")  # a teacher fine-tuned (by the course) for 3 classes
    with pytest.raises(ValueError, match=r"fine-tuned for 3 labels but --task sst2 has 2"):
        validate(tiny_config(three))
    small_vocab = tmp_path / "small-vocab"
    save_tiny_bert(small_vocab)
    cfg = json.loads((small_vocab / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (small_vocab / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tokenizer has 30522 tokens but the model's vocabulary only 1000"):
        validate(tiny_config(small_vocab))
    with pytest.raises(ValueError, match=r"no config\.json"):
        validate(tiny_config(tmp_path))


def test_unknown_hub_teacher_offline(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="needs a network connection"):
        validate(config_from_preset("fast", teacher="bert-base-uncased"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu(tiny_teacher):
    with pytest.raises(ValueError, match="no CUDA GPU is visible; use --device cpu"):
        validate(tiny_config(tiny_teacher, device="cuda"))


def test_preset_and_layer_resolution(tiny_teacher):
    assert validate(tiny_config(tiny_teacher)).student_layers == (0, 2)
    assert validate(tiny_config(tiny_teacher, student_layers=3)).student_layers == (0, 1, 2)
    assert validate(tiny_config(tiny_teacher, student_layers=(1, 3))).student_layers == (1, 3)
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of: fast, default, full"):
        config_from_preset("huge")


@pytest.mark.slow
def test_cli_fast_preset_end_to_end(tmp_path, capsys):
    """``python -m kd_lib distill --preset fast`` with the packaged teacher, as a user runs it."""
    env = dict(os.environ)  # the session's KD_CACHE_DIR: the notebooks reuse this fast teacher
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kd_lib", "distill", "--preset", "fast", "--output-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| teacher |" in proc.stdout and "retention" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    assert results["preset"] == "fast" and results["task"] == "sst2"
    assert results["teacher"]["layers"] == 6 and results["student"]["layers"] == 3
    assert results["teacher"]["params"] > results["student"]["params"]
    # bad arguments through the command line (in this process: the same parser and error path): exit code 2
    # and a message naming the option
    from kd_lib.cli import main

    assert main([*cmd[3:-1], "--alpha", "2"]) == 2
    assert "--alpha must be in the range [0, 1]" in capsys.readouterr().err


def test_ag_news_task(tiny_teacher, tmp_path, cache):
    results = run(tiny_config(tiny_teacher, task="ag_news", epochs=1), tmp_path / "out", progress=False,
                  log=lambda *_: None)
    check_schema(results)
    assert results["task"] == "ag_news" and results["eval_split"] == "test"
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(tmp_path / "out" / "student")
    assert saved.num_labels == 4 and saved.id2label[2] == "Business"


def test_killed_mid_epoch_resumes_from_the_step_checkpoint(tiny_teacher, tmp_path, cache, monkeypatch):
    """Killed right after the step-6 checkpoint (epoch 2, step 2 of 4), resumed with --resume: the same
    student as an uninterrupted run without step checkpoints -- weights to 1e-6, losses to 1e-6 (relative)."""
    from safetensors.torch import load_file

    config = tiny_config(tiny_teacher)  # 64 sentences, batches of 16: 4 steps per epoch, 2 epochs
    reference = run(config, tmp_path / "uninterrupted", progress=False, log=lambda *_: None)

    out = tmp_path / "interrupted"
    real_save = training._Run.save  # the loop's checkpoint writer
    saved_at = []

    def save_then_die(self, path, epochs_done, steps_done=0, *args):
        real_save(self, path, epochs_done, steps_done, *args)
        saved_at.append((epochs_done, steps_done))
        if (epochs_done, steps_done) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(training._Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda *_: None, checkpoint_every=3)
    assert saved_at == [(0, 3), (1, 0), (1, 2)]  # (epochs done, steps into the next): steps 3, 4 (epoch end), 6
    monkeypatch.setattr(training._Run, "save", real_save)
    torch.manual_seed(1234)  # a new process: another random state, which the checkpoint must replace
    resumed = run(config, out, resume=True, progress=False, log=lambda *_: None, checkpoint_every=3)

    assert resumed["student"]["accuracy"] == reference["student"]["accuracy"]
    assert resumed["baselines"] == reference["baselines"]
    losses = [json.loads((d / "state.json").read_text())["stages"]["student_kd"]["train_losses"]
              for d in (out, tmp_path / "uninterrupted")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    weights = [load_file(d / "student" / "model.safetensors") for d in (out, tmp_path / "uninterrupted")]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[1]) < 1e-6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bf16"], r"--bf16 \(mixed precision\) needs a CUDA GPU and --device cuda"),
        (["--fp16"], r"--fp16 \(mixed precision\) needs a CUDA GPU and --device cuda"),
        (["--grad-accum", "0"], r"--grad-accum must be a positive integer"),
        (["--batch-size", "30", "--grad-accum", "4"], r"--batch-size 30 must be a multiple of --grad-accum 4 x 1"),
        (["--resume", "--overwrite"], r"--resume and --overwrite contradict each other"),
        (["--resume"], r"--resume: .* holds no run to resume \(no state.json\); drop --resume"),
        (["--checkpoint-every", "0"], r"--checkpoint-every must be a positive integer"),
        (["--lr", "-1"], r"--lr must be a learning rate between 0 and 1"),
        (["--backend", "trainer", "--device", "mps"], r"with --backend trainer, --device must be cpu or cuda"),
    ],
)
def test_bad_flag_combinations_fail_early(tmp_path, cache, capsys, argv, message):
    from kd_lib.cli import main

    start = time.perf_counter()
    code = main(["distill", "--preset", "fast", "--output-dir", str(tmp_path / "out"), "--no-progress", *argv])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert time.perf_counter() - start < 10 and not (cache / "teachers").exists(), "nothing was trained"


def test_bf16_and_fp16_together_are_refused(capsys):
    from kd_lib.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["distill", "--bf16", "--fp16"])
    assert exc.value.code == 2 and "argument --fp16: not allowed with argument --bf16" in capsys.readouterr().err


def test_two_process_validation_and_trainer_results(tiny_teacher, tmp_path, cache, monkeypatch):
    # 32 examples per step cannot be cut into 3 processes x 1 micro-batch
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"--batch-size 16 must be a multiple of --grad-accum 1 x 3 process"):
        validate(tiny_config(tiny_teacher))
    with pytest.raises(ValueError, match=r"with 3 processes, --device must be cpu or cuda"):
        validate(tiny_config(tiny_teacher, batch_size=12, device="mps"))
    monkeypatch.delenv("WORLD_SIZE")
    # the trainer backend writes the same results as the loop
    results = run(tiny_config(tiny_teacher, backend="trainer", epochs=1), tmp_path / "out", progress=False,
                  log=lambda *_: None)
    check_schema(results)
    assert results["backend"] == "trainer" and results["processes"] == 1
    assert not list((tmp_path / "out" / "checkpoints").iterdir()), "finished runs leave no checkpoints behind"


def test_gpu_check_script_without_cuda(monkeypatch, capsys):
    """scripts/gpu_check.py stops at once, exit code 2, saying why -- for a CPU-only torch and for no GPU."""
    gpu_check = load_script("gpu_check")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_check.main([]) == 2 and "is a CPU-only build: install a CUDA build" in capsys.readouterr().err
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2 and "no CUDA GPU is visible" in capsys.readouterr().err
    cmds = gpu_check.commands(Path("out"))
    assert cmds["distill"][1:9] == ["-m", "kd_lib", "distill", "--preset", "default", "--bf16", "--device", "cuda"]
    assert cmds["bench"][2:] == ["--device", "cuda", "--dtype", "bfloat16", "--output", str(Path("out") / "bench.json")]


# ------------------------------------------------------------------ damaged files and extreme inputs (issue 14)
def _cli(tmp_path, capsys, *argv):
    from kd_lib.cli import main

    code = main(["distill", "--preset", "fast", "--output-dir", str(tmp_path / "out"), "--no-progress", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "./no-such-folder"], r"--teacher ./no-such-folder: teacher folder no-such-folder does not exist"),
    (["--seed", "-1"], r"--seed must be an integer from 0 to 2\*\*32 - 1"),
    (["--teacher-seed", "-1"], r"--teacher-seed must be an integer from 0 to 2\*\*32 - 1"),
    (["--temperature", "1e200"], r"--temperature 1e\+200 is too high for a KD loss.*rounding"),
    (["--temperature", "1e-200"], r"--temperature 1e-200 is too low for a KD loss.*alpha = 0"),
])
def test_bad_values_end_in_one_error_line_and_leave_nothing_behind(tmp_path, cache, capsys, argv, message):
    code, err = _cli(tmp_path, capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), err
    assert not (tmp_path / "out").exists() and not (cache / "teachers").exists()


def test_a_damaged_teacher_folder_ends_in_one_error_line(tmp_path, cache, capsys):
    folder = tmp_path / "teacher"
    save_tiny_bert(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    capsys.readouterr()  # saving the fixture printed a progress bar
    code, err = _cli(tmp_path, capsys, "--teacher", str(folder))
    assert code == 2 and err.count("\n") == 1 and "model.safetensors is damaged and cannot be read" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, message", [('{"config": {"preset": "fa', "Unterminated string"),
                                              ("{}", "it lacks the 'config' and 'stages'")])
def test_a_damaged_state_file_names_the_file_and_the_way_out(tiny_teacher, tmp_path, cache, content, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.json").write_text(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(out / 'state.json'))} is damaged \({message}.*--overwrite"):
        run(tiny_config(tiny_teacher), out, progress=False, log=lambda *_: None)


def test_an_interrupted_overwrite_leaves_no_old_results_behind(tiny_teacher, tmp_path, cache, monkeypatch):
    out = tmp_path / "out"
    run(tiny_config(tiny_teacher, epochs=1), out, progress=False, log=lambda *_: None)
    assert all((out / name).exists() for name in ("results.json", "report.md", "results.png", "student"))
    (out / "onnx-int8").mkdir()  # what --export adds to a finished run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_teacher, epochs=1, seed=5), out, overwrite=True, progress=False, log=lambda *_: None)
    assert not any((out / name).exists()
                   for name in ("results.json", "report.md", "results.png", "student", "onnx-int8"))
    assert json.loads((out / "state.json").read_text())["config"]["seed"] == 5


def test_a_damaged_step_checkpoint_does_not_block_the_run(tiny_teacher, tmp_path, cache, monkeypatch, capsys):
    config, out = tiny_config(tiny_teacher), tmp_path / "out"
    reference = run(config, tmp_path / "reference", progress=False, log=lambda *_: None)
    calls = {"n": 0}
    real_epoch = training.train_epoch

    def interrupt_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda *_: None)
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    ckpt = out / "checkpoints" / "student_kd.pt"
    ckpt.write_bytes(b"\x00" * 100)
    resumed = run(config, out, resume=True, progress=False, log=lambda *_: None)
    assert "student_kd.pt is damaged" in capsys.readouterr().err
    assert resumed["student"]["accuracy"] == reference["student"]["accuracy"]


def test_unexpected_errors_are_one_line_with_where_to_report_and_debug_shows_the_traceback(monkeypatch, capsys):
    from kd_lib import cli, pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(pipeline, "run", broken)
    assert cli.main(["distill", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: unexpected RuntimeError: something nobody foresaw" in err
    assert "--debug" in err and "github.com/kd-course/kd-course/issues" in err
    assert cli.main(["distill", "--no-progress", "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("KD_DEBUG", "1")
    assert cli.main(["distill", "--no-progress"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_the_students_learning_rate_is_the_presets_unless_given(monkeypatch, capsys, tmp_path):
    """--lr reaches the run's config; without it, each preset's (default: 2e-4, chosen by the unseen search)."""
    from kd_lib import cli, pipeline

    def capture(config, *args, **kwargs):
        raise ValueError(f"captured lr={config.lr:g}")

    monkeypatch.setattr(pipeline, "run", capture)
    for argv, lr in ((["--preset", "default"], "0.0002"), (["--preset", "full"], "5e-05"),
                     (["--preset", "fast", "--lr", "3e-4"], "0.0003")):
        assert cli.main(["distill", "--output-dir", str(tmp_path / "out"), "--no-progress", *argv]) == 2
        assert f"captured lr={lr}" in capsys.readouterr().err
