"""distill-lm, the language-model main job: results, resume, bad input, two processes, the real teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import kd_lib.llm_pipeline as llm_pipeline
from kd_lib.cli import main
from kd_lib.data import load_austen
from kd_lib.llm_pipeline import LM_OUTPUTS, lm_config_from_preset, run_lm
from kd_lib.llm_students import small_llama
from kd_lib.llm_topk import bytes_per_token, load_topk
from kd_lib.lm import perplexity, train_bpe_tokenizer

V = 384


@pytest.fixture(scope="module", autouse=True)
def kd_cache(tmp_path_factory):
    """A fresh $KD_CACHE_DIR for this module: the top-k caches and layer importances go there."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("kd-cache")
        mp.setenv("KD_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A folder with a random 6-layer, 32-wide Llama and a 384-token BPE tokenizer (a stand-in for SmolLM2)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_bpe_tokenizer(load_austen()["train"]["text"][:4], V)
    small_llama(V, layers=6, width=32, heads=4, kv_heads=2, seed=0, max_positions=256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny(teacher, **overrides):
    values = {"teacher": str(teacher), "keep_layers": 3, "importance": "drop_loss", "topk": 8, "steps": 6,
              "batch_size": 4, "block_size": 32, "lr": 1e-3, "calibration_tokens": 64, "dev_tokens": 128,
              "heldout_tokens": 256, "samples": 1, "sample_tokens": 8, "speed_batches": 1,
              **overrides}
    return lm_config_from_preset("fast", **values)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def reference(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, run_lm(tiny(tiny_lm), out, progress=False, log=quiet)


def test_results_agree_with_the_saved_student_and_cache(tiny_lm, reference, kd_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, results = reference
    s, t = results["student"], results["teacher"]
    assert t["layers"] == 6 and s["layers"] == 3 and len(s["teacher_layers"]) == 3
    assert s["teacher_layers"][0] == 0 and s["teacher_layers"][-1] == 5, "the first and last layers stay"
    assert results["perplexity_ratio"] == pytest.approx(s["perplexity"]["heldout"] / t["perplexity"]["heldout"])
    assert results["speedup"] == pytest.approx(s["tokens_per_s"] / t["tokens_per_s"])
    assert results["cache"]["bytes_per_token"] == 8 * 6 + 4 == bytes_per_token(8)
    assert results["cache"]["fraction_of_dense"] == pytest.approx(52 / (4 * V))
    assert results["tokens"]["train"] == 6 * 4 * 32 and results["tokens"]["heldout"] == 256
    assert {"teacher", "layers", "topk_cache", "student", "evaluate", "speed", "samples"} <= set(results["wall_s"])
    assert len(results["samples"]) == 1 and all(sample["student"] for sample in results["samples"])
    for name in ("results.json", "report.md", "results.png", "samples.md"):
        assert (out / name).is_file(), name
    assert Path(results["cache"]["path"]).parent == kd_cache / "llm-topk"
    assert not (out / "checkpoints").exists(), "a finished run leaves no checkpoints"
    assert json.loads((out / "results.json").read_text())["student"] == s

    # the saved student is the evaluated one: its held-out perplexity, recomputed
    student = AutoModelForCausalLM.from_pretrained(out / "student", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    blocks = llm_pipeline.austen_blocks(tokenizer, tiny(tiny_lm))
    assert perplexity(student, blocks["heldout"], batch_size=8) == pytest.approx(s["perplexity"]["heldout"], rel=1e-6)
    assert sum(p.numel() for p in student.parameters()) == s["params"]
    cache = load_topk(results["cache"]["path"])
    assert cache.ids.shape == (24, 32, 8) and cache.kept_mass().mean().item() == pytest.approx(
        results["cache"]["kept_mass"], rel=1e-6)


def test_the_blocks_are_full_and_the_splits_disjoint(tiny_lm):
    from transformers import AutoTokenizer

    blocks = llm_pipeline.austen_blocks(AutoTokenizer.from_pretrained(tiny_lm), tiny(tiny_lm))
    assert len(blocks["train"]) == 24 and len(blocks["calibration"]) == 2 and len(blocks["dev"]) == 4
    for name, b in blocks.items():
        pairs = zip(b.input_ids, b.labels, strict=True)
        assert all(len(ids) == 32 and -100 not in labels for ids, labels in pairs), name
    seen = {name: {tuple(ids) for ids in b.input_ids} for name, b in blocks.items()}
    assert not seen["train"] & seen["calibration"] and not seen["train"] & seen["dev"]
    assert not seen["train"] & seen["heldout"] and not seen["dev"] & seen["heldout"]


def test_a_killed_run_resumes_to_the_same_student(tiny_lm, reference, tmp_path, monkeypatch):
    out, real_fit, calls = tmp_path / "interrupted", llm_pipeline.fit, {"steps": 0}

    def objective_that_is_interrupted(config, teacher, cache):
        inner = real_objective(config, teacher, cache)

        def loss(outputs, batch):
            calls["steps"] += 1
            if calls["steps"] == 5:
                raise KeyboardInterrupt
            return inner(outputs, batch)

        return type(inner)(loss)

    real_objective = llm_pipeline._objective
    monkeypatch.setattr(llm_pipeline, "_objective", objective_that_is_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_lm(tiny(tiny_lm), out, checkpoint_every=2, progress=False, log=quiet)
    state = json.loads((out / "state.json").read_text())
    assert set(state["stages"]) == {"teacher", "layers", "topk_cache"}
    assert (out / "checkpoints" / "student.pt").is_file(), "steps 1-4 were checkpointed"
    monkeypatch.setattr(llm_pipeline, "_objective", real_objective)
    fitted = []
    monkeypatch.setattr(llm_pipeline, "fit", lambda *a, **k: fitted.append(1) or real_fit(*a, **k))
    resumed = run_lm(tiny(tiny_lm), out, checkpoint_every=2, progress=False, log=quiet)
    assert resumed["student"]["perplexity"] == reference[1]["student"]["perplexity"]
    assert resumed["teacher"]["perplexity"] == reference[1]["teacher"]["perplexity"]
    fitted.clear()
    again = run_lm(tiny(tiny_lm), out, resume=True, progress=False, log=quiet)
    assert fitted == [] and again["student"]["perplexity"] == resumed["student"]["perplexity"]


def test_other_settings_in_the_same_folder_are_refused(tiny_lm, reference):
    with pytest.raises(ValueError, match=r"other settings \(lr, topk differ\).*--overwrite"):
        run_lm(tiny(tiny_lm, topk=4, lr=2e-3), reference[0], progress=False, log=quiet)


def test_cross_entropy_and_live_teacher_students(tiny_lm, reference, tmp_path):
    ce = run_lm(tiny(tiny_lm, alpha=0.0), tmp_path / "ce", progress=False, log=quiet)
    assert ce["cache"] is None and "topk_cache" not in ce["wall_s"]
    assert ce["student"]["objective"] == "cross-entropy only"
    live = run_lm(tiny(tiny_lm, topk=0), tmp_path / "live", progress=False, log=quiet)
    assert live["cache"] is None and "live teacher" in live["student"]["objective"]
    # three objectives, three different students from the same start and the same batches
    ppl = {ce["student"]["perplexity"]["heldout"], live["student"]["perplexity"]["heldout"],
           reference[1]["student"]["perplexity"]["heldout"]}
    assert len(ppl) == 3


@pytest.mark.parametrize("overrides, message", [
    ({"keep_layers": 6}, r"--keep-layers 6: keep from 2 to 5"),
    ({"keep_layers": (0, 2, 2)}, r"increasing teacher layers from 0 to 5"),
    ({"keep_layers": (0, 9)}, r"increasing teacher layers"),
    ({"topk": V + 1}, r"--topk 385 is larger than the teacher's vocabulary \(384\)"),
    ({"topk": -1}, r"--topk must be an integer >= 0"),
    ({"mode": "clip"}, r"--mode 'clip' is unknown"),
    ({"importance": "random"}, r"--importance 'random' is unknown"),
    ({"block_size": 512, "calibration_tokens": 512, "dev_tokens": 512, "heldout_tokens": 512},
     r"--block-size 512 is longer than the teacher's 256 positions"),
    ({"steps": 100_000}, r"--steps 100000 x --batch-size 4 .* use fewer steps"),
    ({"alpha": 1.5}, r"--alpha"),
    ({"lr": 0}, r"--lr must be a number in \(0, 1\)"),
    ({"dev_tokens": 8}, r"dev_tokens must be an integer >= 32"),
    ({"batch_size": 3, "grad_accum": 2}, r"batch"),
])
def test_bad_settings_fail_before_any_work(tiny_lm, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_lm(tiny(tiny_lm, **overrides), tmp_path / "bad", progress=False, log=quiet)
    assert not (tmp_path / "bad" / "state.json").exists()


def test_a_teacher_that_is_not_a_language_model_is_refused(tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match=r"without a causal-LM head .*decoder language model"):
        run_lm(tiny(tiny_teacher), tmp_path / "bert", progress=False, log=quiet)
    with pytest.raises(ValueError, match=r"no model config found"):
        run_lm(tiny(tmp_path / "nowhere"), tmp_path / "none", progress=False, log=quiet)


def test_a_damaged_cache_is_recomputed_and_a_damaged_state_named(tiny_lm, reference, tmp_path, kd_cache):
    out, cache_file = tmp_path / "again", Path(reference[1]["cache"]["path"])
    cache_file.write_bytes(b"not a cache")
    again = run_lm(tiny(tiny_lm), out, progress=False, log=quiet)
    assert again["cache"] == reference[1]["cache"], "computed again, the same"
    assert json.loads((out / "state.json").read_text())["stages"]["topk_cache"]["computed"] is True
    importance = next((kd_cache / "llm-importance").glob("*.json"))
    importance.write_text("{")
    (out / "state.json").write_text('{"config": {"preset"')
    with pytest.raises(ValueError, match=r"state.json is damaged .*--overwrite"):
        run_lm(tiny(tiny_lm), out, progress=False, log=quiet)
    fresh = run_lm(tiny(tiny_lm), out, overwrite=True, progress=False, log=quiet)
    assert fresh["student"]["perplexity"] == reference[1]["student"]["perplexity"]
    assert json.loads(importance.read_text())["importance"] == json.loads((reference[0] / "state.json").read_text())[
        "stages"]["layers"]["importance"], "the damaged importances were measured again"
    assert set(LM_OUTPUTS) - {"checkpoints"} <= {p.name for p in out.iterdir()}


def test_keep_layers_by_index_and_every_other(tiny_lm, tmp_path):
    listed = llm_pipeline.validate_lm(tiny(tiny_lm, keep_layers=[0, 3, 5]))
    assert listed.keep_layers == (0, 3, 5)
    even = run_lm(tiny(tiny_lm, importance="every_other", steps=2), tmp_path / "even", progress=False, log=quiet)
    assert even["student"]["teacher_layers"] == [0, 2, 5] or even["student"]["teacher_layers"] == [0, 3, 5]


TWO_PROCESSES = """
import json, sys
from kd_lib.llm_pipeline import LMDistillConfig, run_lm
run_lm(LMDistillConfig(**json.loads(sys.argv[1])), sys.argv[2], checkpoint_every=2, progress=False, log=lambda *_: None)
"""


@pytest.mark.slow
def test_two_processes_match_one(tiny_lm, reference, tmp_path):
    from tests.test_distributed import launcher

    script, two = tmp_path / "two_processes.py", tmp_path / "two"
    script.write_text(TWO_PROCESSES)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher("torchrun"), str(script), json.dumps(asdict(tiny(tiny_lm))), str(two)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    both, one = json.loads((two / "results.json").read_text()), reference[1]
    assert both["processes"] == 2 and one["processes"] == 1
    assert both["teacher"]["perplexity"] == one["teacher"]["perplexity"]
    assert both["student"]["teacher_layers"] == one["student"]["teacher_layers"]
    for split in ("dev", "heldout"):
        assert both["student"]["perplexity"][split] == pytest.approx(one["student"]["perplexity"][split], rel=1e-4)
    losses = [json.loads((out / "state.json").read_text())["stages"]["student"]["train_loss"]
              for out in (two, reference[0])]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.slow
def test_the_fast_preset_with_the_real_teacher_from_the_command_line(tmp_path, smollm2_built, capsys, monkeypatch):
    out, env = tmp_path / "fast", {**os.environ, "KD_CACHE_DIR": str(smollm2_built[0])}
    cmd = [sys.executable, "-m", "kd_lib", "distill-lm", "--preset", "fast", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    t, s = results["teacher"], results["student"]
    assert t["params"] == 134_515_008 and t["layers"] == 30 and s["layers"] == 4
    assert "Q4_1" in t["quantization"]
    # SmolLM2 predicts Austen; four of its layers, after a few steps, far less well
    assert t["perplexity"]["heldout"] < 90
    assert s["perplexity"]["heldout"] < s["perplexity_before_training"]["heldout"], "training helped"
    assert results["speedup"] > 0  # a measurement (benchmarks/bench_lm.py reports it), not a timed test
    assert "| teacher | 30 |" in proc.stdout
    # a bad setting through the command line (in this process: the same parser and error path, no start-up cost)
    monkeypatch.setenv("KD_CACHE_DIR", str(smollm2_built[0]))
    assert main([*cmd[3:], "--topk", "100000"]) == 2
    assert capsys.readouterr().err.startswith("error: --topk 100000 is larger")
