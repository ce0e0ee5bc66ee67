"""The main job for language models: prune a pretrained LLM, cache its top-k logits, distil, report -- resumably.

``run(LMDistillConfig(...), output_dir)`` (``python -m kd_lib distill-lm``) runs the stages below, one
function each. Each finished stage is recorded in ``output_dir/state.json`` (:class:`kd_lib.jobs.RunState`)
and skipped on a re-run; the student's training checkpoints every ``checkpoint_every`` steps.

1. ``teacher``    load the teacher (the packaged SmolLM2-135M-Instruct is de-quantised once and cached);
                  its perplexity on the dev and held-out blocks.
2. ``layers``     which teacher layers the student keeps: the most important ones on calibration blocks
                  (drop-one-layer loss or cosine), or spread evenly; the pruned model's perplexity before training.
3. ``topk_cache`` the teacher's top-``k`` next-token log-probabilities over the training blocks, computed
                  once and kept in ``$KD_CACHE_DIR/llm-topk`` (``topk = 0``: no cache, the live teacher's
                  full distribution every step). Layer importances are kept there too.
4. ``student``    the pruned teacher trained with ``alpha`` KD + ``(1 - alpha)`` cross-entropy (``alpha = 0.5``,
                  chosen on the dev chapters over 1 and 0; ``alpha = 0``: cross-entropy only, the baseline).
5. ``evaluate``   the student's dev and held-out perplexity.
6. ``speed``      teacher vs student tokens/s (batch 8) and batch-1 time per block, timed alternately.
7. ``samples``    continuations of held-out openings by teacher and student, side by side (``samples.md``).
8. report         ``results.json``, ``report.md``, ``results.png``; ``student/`` loads with ``from_pretrained``.

Text: Jane Austen's novels (:func:`kd_lib.data.load_austen`). Training blocks come from the training
chapters except every 30th, which are the dev chapters (every choice of a preset was made on them);
perplexity is reported on the held-out chapters. Only full blocks are used, so a token mean equals a
block mean and a batch split over processes gives the same steps. Under ``torchrun`` rank 0 loads the
teacher, measures the layers and writes the cache while the others wait; every process trains its share
of each batch; rank 0 evaluates and writes.

Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from kd_lib import distributed
from kd_lib.cache import atomic_save_pretrained, cache_dir, config_key
from kd_lib.data import load_austen
from kd_lib.distributed import Processes
from kd_lib.evaluate import count_params, measure_speed
from kd_lib.jobs import RunState, check_run_options, prepare_output
from kd_lib.llm_losses import kd_from_teacher
from kd_lib.llm_students import choose_layers, every_other_layer, layer_importance, prune_layers
from kd_lib.llm_teacher import SMOLLM2_GGUF, SMOLLM2_SHA256, load_llm_teacher, text_tokenizer
from kd_lib.llm_topk import MODES, bytes_per_token, kd_from_topk, load_topk, save_topk, teacher_topk
from kd_lib.lm import LMBlocks, perplexity
from kd_lib.losses import check_alpha, check_temperature
from kd_lib.training import TrainSettings, ce_loss, check_batch_split, check_precision, fit, freeze
from kd_lib.utils import atomic_write_bytes, set_seed, sha256_file_cached

__all__ = ["IMPORTANCE", "LM_OUTPUTS", "LM_PRESETS", "LMDistillConfig", "austen_blocks", "lm_config_from_preset",
           "lm_results_table", "run_lm", "validate_lm"]

IMPORTANCE = ("drop_loss", "cosine", "every_other")  # how the kept layers are chosen
DEV_EVERY = 30  # every 30th training chapter (9 of 244) is a dev chapter, never trained on


@dataclass(frozen=True)
class LMDistillConfig:
    """Every setting of one run of ``distill-lm`` (serialised into ``results.json``).

    Taught in notebook 12, section 1 (The teacher, offline).
    """

    preset: str = "default"
    teacher: str | None = None  # None: the packaged SmolLM2-135M-Instruct; or a folder / Hub name
    keep_layers: int | tuple[int, ...] = 10  # a count (chosen by `importance`) or the teacher layers to keep
    importance: str = "drop_loss"
    topk: int = 64  # teacher log-probabilities kept per token; 0: the live teacher's full distribution
    mode: str = "bucket"  # the left-out mass: "bucket" or "renormalize" (k and mode chosen on dev, bench_lm)
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the KD term (1: soft targets only, 0: cross-entropy only); chosen on dev
    steps: int = 200  # optimizer steps (one pass over steps * batch_size blocks)
    batch_size: int = 4  # blocks per step
    block_size: int = 128  # tokens per block
    lr: float = 5e-4
    warmup_ratio: float = 0.05
    calibration_tokens: int = 2048  # text on which the layers' importance is measured
    dev_tokens: int = 8192
    heldout_tokens: int = 16384
    samples: int = 3  # held-out openings continued by teacher and student
    sample_tokens: int = 40  # tokens each continuation adds
    speed_batches: int = 2  # batches of 8 blocks timed per model and round (3 rounds, alternating)
    seed: int = 0  # the order of the training blocks (the student starts from the teacher's weights)
    device: str = "cpu"
    grad_accum: int = 1
    precision: str = "fp32"

    def settings(self) -> TrainSettings:
        """How the student trains: AdamW, linear warm-up and decay, no weight decay, one pass."""
        return TrainSettings(epochs=1, lr=self.lr, batch_size=self.batch_size, warmup_ratio=self.warmup_ratio,
                             weight_decay=0.0, grad_accum=self.grad_accum, precision=self.precision)


LM_PRESETS: dict[str, dict] = {
    # for tests: checks the plumbing, not the science (about a minute on 2 cores with the teacher cached)
    "fast": {"keep_layers": 4, "importance": "cosine", "topk": 16, "steps": 8, "batch_size": 4, "block_size": 64,
             "lr": 1e-3, "calibration_tokens": 512, "dev_tokens": 512, "heldout_tokens": 1024, "samples": 2,
             "sample_tokens": 16, "speed_batches": 1},
    # meaningful results on a laptop CPU: the LMDistillConfig defaults
    "default": {},
    # a GPU: a longer, wider run
    "full": {"keep_layers": 15, "topk": 64, "steps": 4000, "batch_size": 16, "block_size": 512, "lr": 3e-4,
             "calibration_tokens": 16384, "dev_tokens": 65536, "heldout_tokens": 262144},
}


def lm_config_from_preset(preset: str = "default", **overrides) -> LMDistillConfig:
    """An :class:`LMDistillConfig` from a preset, with ``overrides`` (``None`` values ignored).

    Taught in notebook 12, section 1 (The teacher, offline).
    """
    if preset not in LM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(LM_PRESETS)}")
    values = {**LM_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return LMDistillConfig(preset=preset, **values)


# ---------------------------------------------------------------------------------------------
# Checking every setting before any work
# ---------------------------------------------------------------------------------------------


def _int_at_least(value, least: int, option: str, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{option} must be an integer >= {least}{what}; got {value!r}")


def _check_options(config: LMDistillConfig, world: int) -> None:
    if config.importance not in IMPORTANCE:
        raise ValueError(f"--importance {config.importance!r} is unknown; choose one of: {', '.join(IMPORTANCE)}")
    _int_at_least(config.topk, 0, "--topk", " (0: the live teacher's full distribution)")
    if config.mode not in MODES:
        raise ValueError(f"--mode {config.mode!r} is unknown; choose one of: {', '.join(MODES)}")
    check_temperature(config.temperature, "--temperature", kd=True)
    check_alpha(config.alpha, "--alpha")
    _int_at_least(config.samples, 0, "samples")
    for name in ("steps", "batch_size", "grad_accum", "sample_tokens", "speed_batches"):
        _int_at_least(getattr(config, name), 1, f"--{name.replace('_', '-')}")
    _int_at_least(config.block_size, 8, "--block-size", " (tokens per block)")
    for name in ("calibration_tokens", "dev_tokens", "heldout_tokens"):
        _int_at_least(getattr(config, name), config.block_size, name, f" (at least one block of {config.block_size})")
    if isinstance(config.lr, bool) or not isinstance(config.lr, (int, float)) or not 0 < config.lr < 1:
        raise ValueError(f"--lr must be a number in (0, 1), e.g. 5e-4; got {config.lr!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
        raise ValueError(f"--seed must be an integer from 0 to 2**32 - 1; got {config.seed!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if config.device != "cpu" and not config.device.startswith(("cuda", "mps")):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps; got {config.device!r}")
    if world > 1 and config.device not in {"cpu", "cuda"}:
        raise ValueError(f"with {world} processes, --device must be cpu or cuda (each process takes its own GPU); "
                         f"got {config.device!r}")
    check_precision(config.precision, config.device)
    check_batch_split(config.batch_size, config.grad_accum, world)


def _teacher_config(teacher: str | None):
    """The teacher's config, read without its weights (the packaged SmolLM2's from its known shape)."""
    if teacher is None:
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(teacher)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--teacher {teacher}: no model config found ({exc.__class__.__name__}); pass a folder "
                         "written by save_pretrained, a Hub name (online), or leave --teacher out for the "
                         f"packaged {SMOLLM2_GGUF}") from None
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        raise ValueError(f"--teacher {teacher}: a {config.model_type!r} model without a causal-LM head "
                         f"({config.architectures}); distill-lm needs a decoder language model such as SmolLM2")
    return config


def _check_layers(config: LMDistillConfig, n_layers: int) -> tuple[int, ...] | int:
    keep = config.keep_layers
    if isinstance(keep, int) and not isinstance(keep, bool):
        if not 2 <= keep < n_layers:
            raise ValueError(f"--keep-layers {keep}: keep from 2 to {n_layers - 1} of the teacher's {n_layers} layers")
        return keep
    keep = tuple(keep) if isinstance(keep, (list, tuple)) else keep
    if (not isinstance(keep, tuple) or not keep or any(isinstance(i, bool) or not isinstance(i, int) for i in keep)
            or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n_layers or len(keep) == n_layers):
        raise ValueError(f"--keep-layers {keep!r}: give a count (e.g. 10) or increasing teacher layers from 0 to "
                         f"{n_layers - 1} without repeats, fewer than all {n_layers} (e.g. 0,3,6,9)")
    return keep


def validate_lm(config: LMDistillConfig) -> LMDistillConfig:
    """Check every setting before any work; ``ValueError`` names the option and the fix.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    _check_options(config, distributed.launched().world)
    teacher_cfg = _teacher_config(config.teacher)
    n_layers = 30 if teacher_cfg is None else teacher_cfg.num_hidden_layers
    positions = 8192 if teacher_cfg is None else getattr(teacher_cfg, "max_position_embeddings", 2048)
    if config.block_size > positions:
        raise ValueError(f"--block-size {config.block_size} is longer than the teacher's {positions} positions")
    vocab = 49152 if teacher_cfg is None else teacher_cfg.vocab_size
    if config.topk > vocab:
        raise ValueError(f"--topk {config.topk} is larger than the teacher's vocabulary ({vocab}); use at most "
                         f"{vocab}, or 0 for the live teacher's full distribution")
    return replace(config, keep_layers=_check_layers(config, n_layers))


# ---------------------------------------------------------------------------------------------
# The text
# ---------------------------------------------------------------------------------------------


def _full_blocks(blocks: LMBlocks, rows: list[int] | None = None) -> LMBlocks:
    """``blocks`` restricted to ``rows`` (default: every block that is full and has a target at every position)."""
    if rows is None:
        rows = [i for i, labels in enumerate(blocks.labels)
                if len(labels) == blocks.block_size and -100 not in labels]
    kept = copy.copy(blocks)
    kept.input_ids, kept.labels = [blocks.input_ids[i] for i in rows], [blocks.labels[i] for i in rows]
    return kept


def _spread(blocks: LMBlocks, n: int) -> LMBlocks:
    """``n`` blocks spread evenly over ``blocks`` (all of them if there are fewer)."""
    total = len(blocks)
    rows = list(range(total)) if n >= total else [round(i * (total - 1) / max(n - 1, 1)) for i in range(n)]
    return _full_blocks(blocks, sorted(set(rows)))


def austen_blocks(tokenizer, config: LMDistillConfig) -> dict[str, LMBlocks]:
    """The job's text as full blocks: ``train`` (``steps * batch_size`` blocks), ``calibration``, ``dev``, ``heldout``.

    The training chapters, except the dev chapters (every 30th), are put in a fixed random order (seed 0,
    whatever the run's seed) and cut into blocks; training takes the first blocks, calibration the next
    ones. ``dev`` and ``heldout`` are blocks spread evenly over the dev and the held-out chapters.

    Taught in notebook 12, section 1 (The teacher, offline).
    """
    austen = load_austen()
    chapters = austen["train"]["text"]
    dev_chapters = chapters[::DEV_EVERY]
    train_chapters = [text for i, text in enumerate(chapters) if i % DEV_EVERY]
    order = torch.randperm(len(train_chapters), generator=torch.Generator().manual_seed(0)).tolist()
    n_train = config.steps * config.batch_size
    n_calibration = math.ceil(config.calibration_tokens / config.block_size)
    pool, start = None, 0
    while start < len(order) and (pool is None or len(pool) < n_train + n_calibration):  # tokenise only what is used
        more = _full_blocks(LMBlocks([train_chapters[i] for i in order[start:start + 8]], tokenizer, config.block_size))
        if pool is None:
            pool = more
        else:
            pool.input_ids, pool.labels = pool.input_ids + more.input_ids, pool.labels + more.labels
        start += 8
    if n_train + n_calibration > len(pool):
        raise ValueError(f"--steps {config.steps} x --batch-size {config.batch_size} = {n_train} blocks of "
                         f"{config.block_size} tokens, plus {n_calibration} calibration blocks, but the training "
                         f"chapters hold {len(pool)}: use fewer steps or a smaller batch or block size")
    blocks = {"train": _full_blocks(pool, list(range(n_train))),
              "calibration": _full_blocks(pool, list(range(n_train, n_train + n_calibration)))}
    for name, texts, tokens in (("dev", dev_chapters, config.dev_tokens),
                                ("heldout", austen["heldout"]["text"], config.heldout_tokens)):
        blocks[name] = _spread(_full_blocks(LMBlocks(texts, tokenizer, config.block_size)),
                               math.ceil(tokens / config.block_size))
    return blocks


# ---------------------------------------------------------------------------------------------
# The run: one function per stage
# ---------------------------------------------------------------------------------------------


@dataclass
class _Job:
    config: LMDistillConfig
    output_dir: Path
    device: str
    processes: Processes
    state: RunState
    progress: bool
    log: Callable[..., None]
    checkpoint_every: int | None


def _perplexities(model, blocks: dict[str, LMBlocks], device: str, names=("dev", "heldout")) -> dict[str, float]:
    return {name: perplexity(model, blocks[name], batch_size=8, device=device) for name in names}


def _teacher_stage(job: _Job):
    """Stage 1: rank 0 loads (and, the first time, de-quantises and caches) the teacher; its perplexities."""
    start = time.perf_counter()
    teacher, tokenizer, info = distributed.rank0_first(lambda: load_llm_teacher(job.config.teacher))
    freeze(teacher.to(job.device))
    tokenizer = text_tokenizer(tokenizer)
    blocks = austen_blocks(tokenizer, job.config)
    if job.processes.main and not job.state.done("teacher"):
        job.state.finish("teacher", {
            "source": info.get("source"), "quantization": info.get("quantization"),
            "from_cache": bool(info.get("from_cache")), "layers": teacher.config.num_hidden_layers,
            "params": count_params(teacher), "perplexity": _perplexities(teacher, blocks, job.device),
            "tokens": {name: sum(len(ids) for ids in b.input_ids) for name, b in blocks.items()},
            "wall_s": time.perf_counter() - start})
    if job.processes.main:
        ppl = job.state.done("teacher")["perplexity"]
        job.log(f"teacher: {info.get('source')}; perplexity dev {ppl['dev']:.1f}, held-out {ppl['heldout']:.1f}")
    return teacher, tokenizer, blocks


def _layers_stage(job: _Job, teacher, blocks) -> list[int]:
    """Stage 2: the teacher layers the student keeps (rank 0 measures, every process gets them)."""
    config, state = job.config, job.state
    if job.processes.main and not state.done("layers"):
        start, n_layers, importance = time.perf_counter(), teacher.config.num_hidden_layers, None
        if isinstance(config.keep_layers, tuple):
            keep = list(config.keep_layers)
        elif config.importance == "every_other":
            keep = every_other_layer(n_layers, config.keep_layers)
        else:
            importance = _importance(job, teacher, blocks["calibration"])
            keep = choose_layers(torch.tensor(importance), config.keep_layers)
        pruned = prune_layers(teacher, keep)
        state.finish("layers", {"keep": keep, "importance": importance,
                                "perplexity_before_training": _perplexities(pruned, blocks, job.device, ("heldout",)),
                                "wall_s": time.perf_counter() - start})
    keep = distributed.from_rank0(state.done("layers")["keep"] if job.processes.main else None)
    if job.processes.main:
        before = state.done("layers")["perplexity_before_training"]["heldout"]
        job.log(f"layers kept: {keep}; held-out perplexity before training {before:,.0f}")
    return keep


def _teacher_identity(teacher: str | None) -> str:
    """What names the teacher's weights: the packaged file's hash, a folder's weight hashes, or a Hub name."""
    if teacher is None:
        return f"{SMOLLM2_GGUF}:{SMOLLM2_SHA256[:16]}"
    folder = Path(teacher)
    if folder.is_dir():
        return ",".join(sha256_file_cached(f)[:16] for f in sorted(folder.glob("*.safetensors")))
    return teacher


def _cached(kind: str, meta: dict, suffix: str) -> Path:
    """Where a result that depends only on ``meta`` is kept, shared by every run: ``$KD_CACHE_DIR/kind/<key>``."""
    return cache_dir() / kind / f"{config_key(meta)}{suffix}"


def _importance(job: _Job, teacher, calibration: LMBlocks) -> list[float]:
    """Each teacher layer's importance on the calibration blocks, measured once per teacher and text."""
    config = job.config
    meta = {"teacher": _teacher_identity(config.teacher), "method": config.importance,
            "block_size": config.block_size, "calibration": [config.steps * config.batch_size, len(calibration)]}
    path = _cached("llm-importance", meta, ".json")
    try:
        saved = json.loads(path.read_text())
        if saved.get("meta") == meta and len(saved["importance"]) == teacher.config.num_hidden_layers:
            return saved["importance"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet, or a damaged file: measure again
    importance = layer_importance(teacher, calibration, method=config.importance).tolist()
    atomic_write_bytes(path, json.dumps({"meta": meta, "importance": importance}).encode())
    return importance


def _topk_stage(job: _Job, teacher, tokenizer, blocks):
    """Stage 3: the teacher's top-k log-probabilities over the training blocks, computed once by rank 0 and kept
    in ``$KD_CACHE_DIR/llm-topk`` (runs that differ only in seed, learning rate or mode share it)."""
    config = job.config
    if config.topk == 0 or config.alpha == 0:
        return None
    meta = {"teacher": _teacher_identity(config.teacher), "tokenizer_size": len(tokenizer),
            "block_size": config.block_size, "blocks": len(blocks["train"]),
            "text": f"austen-train-minus-every-{DEV_EVERY}th-order-0", "k": config.topk,
            "temperature": config.temperature}
    path, cache = _cached("llm-topk", meta, ".safetensors"), None
    if job.processes.main:
        start, computed = time.perf_counter(), False
        try:
            cache = load_topk(path, expected_meta=meta) if path.is_file() else None
        except (ValueError, OSError, SafetensorError) as exc:
            job.log(f"top-k cache {path} is damaged ({exc.__class__.__name__}): computing it again")
        if cache is None or cache.ids.shape[:2] != (len(blocks["train"]), config.block_size):
            cache, computed = teacher_topk(teacher, blocks["train"], config.topk, temperature=config.temperature,
                                           batch_size=8, device=job.device, meta=meta), True
            save_topk(path, cache)
        if not job.state.done("topk_cache") or computed:
            job.state.finish("topk_cache", {"path": str(path), "computed": computed,
                                            "file_mb": path.stat().st_size / 1e6,
                                            "kept_mass": cache.kept_mass().mean().item(),
                                            "wall_s": time.perf_counter() - start})
    distributed.barrier()
    return cache if job.processes.main else load_topk(path, expected_meta=meta)


def _objective(config: LMDistillConfig, teacher, cache):
    if config.alpha == 0:
        return ce_loss()
    if config.topk == 0:
        return kd_from_teacher(teacher, 0.0, config.temperature, config.alpha)
    return kd_from_topk(cache, config.mode, config.alpha)


def _student_stage(job: _Job, teacher, tokenizer, keep, blocks, cache):
    """Stage 4: the pruned teacher, trained (or reloaded once trained); rank 0 saves it and clears checkpoints."""
    from transformers import AutoModelForCausalLM

    saved, state, config = job.output_dir / "student", job.state, job.config
    done = state.done("student") if (saved / "model.safetensors").is_file() else None
    if distributed.from_rank0(done):
        return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, use_safetensors=True).to(job.device)
    start, ckpt = time.perf_counter(), job.output_dir / "checkpoints" / "student.pt"
    student = prune_layers(teacher, keep).requires_grad_(True).train()
    set_seed(config.seed)
    losses = fit(student, blocks["train"], _objective(config, teacher, cache), config.settings(), seed=config.seed,
                 device=job.device, progress=job.progress, checkpoint=str(ckpt), desc="student",
                 checkpoint_every=job.checkpoint_every, distributed=job.processes.world > 1)
    student.eval()
    if job.processes.main:
        atomic_save_pretrained(saved, student, tokenizer)
        state.finish("student", {"train_loss": losses[0], "wall_s": time.perf_counter() - start})
        ckpt.unlink(missing_ok=True)
    return student


def _measure_stages(job: _Job, teacher, student, tokenizer, blocks) -> None:
    """Stages 5-7 (rank 0): the student's perplexities, both models' speed, and samples."""
    state = job.state
    if not state.done("evaluate"):
        start = time.perf_counter()
        state.finish("evaluate", {"perplexity": _perplexities(student, blocks, job.device),
                                  "wall_s": time.perf_counter() - start})
    ppl = state.done("evaluate")["perplexity"]
    job.log(f"student: perplexity dev {ppl['dev']:.1f}, held-out {ppl['heldout']:.1f}")
    if not state.done("speed"):
        start = time.perf_counter()
        speed = measure_speed({"teacher": teacher, "student": student}, blocks["heldout"], batch_size=8,
                              n_batches=job.config.speed_batches, latency_examples=4, repeats=3, device=job.device)
        state.finish("speed", {name: {"tokens_per_s": s["throughput_per_s"] * job.config.block_size,
                                      "ms_per_block_batch1": s["latency_ms_batch1"]} for name, s in speed.items()}
                     | {"wall_s": time.perf_counter() - start})
    if not state.done("samples"):
        start = time.perf_counter()
        state.finish("samples", {"samples": _samples(teacher, student, tokenizer, blocks["heldout"], job),
                                 "wall_s": time.perf_counter() - start})


@torch.no_grad()
def _continue(model, prompt: torch.Tensor, tokenizer, new_tokens: int, seed: int) -> str:
    """A sampled continuation (T = 0.8, nucleus 0.95) of ``prompt [1, P]``, the same on every CPU run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=True,
                             temperature=0.8, top_p=0.95, top_k=0, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)


def _samples(teacher, student, tokenizer, heldout: LMBlocks, job: _Job, prompt_tokens: int = 24) -> list[dict]:
    n, new_tokens = job.config.samples, job.config.sample_tokens
    prompt_tokens = min(prompt_tokens, job.config.block_size)
    rows = [round(i * (len(heldout) - 1) / max(n - 1, 1)) for i in range(n)]
    samples = []
    for i, row in enumerate(rows):
        prompt = torch.tensor([heldout.input_ids[row][:prompt_tokens]], device=job.device)
        samples.append({"prompt": tokenizer.decode(prompt[0]),
                        **{name: _continue(model, prompt, tokenizer, new_tokens, job.config.seed + i)
                           for name, model in (("teacher", teacher), ("student", student))}})
    return samples


LM_OUTPUTS = ("results.json", "report.md", "results.png", "samples.md", "student", "checkpoints",
              "state.json")  # what a run writes; --overwrite removes them in this order


def run_lm(config: LMDistillConfig, output_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
           checkpoint_every: int | None = 50, progress: bool = True, log=print) -> dict:
    """Run (or resume) ``distill-lm``; return the ``results.json`` content.

    A re-run with the same ``output_dir`` continues where the last one stopped (``resume=True`` insists
    on it); the student's training checkpoints every ``checkpoint_every`` optimizer steps. Under
    ``torchrun`` every process calls this and gets the same results; only rank 0 writes.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    config = validate_lm(config)
    output_dir = Path(output_dir)
    check_run_options(output_dir, overwrite, resume, checkpoint_every)
    device, started = distributed.start(config.device)
    try:
        processes = distributed.current()
        prepare_output(output_dir, LM_OUTPUTS, overwrite, processes)
        state = RunState(output_dir, asdict(config), asdict(LMDistillConfig()), overwrite, write=processes.main)
        job = _Job(config, output_dir, device, processes, state, progress and processes.main,
                   log if processes.main else (lambda *_: None), checkpoint_every)
        set_seed(config.seed)
        teacher, tokenizer, blocks = _teacher_stage(job)
        keep = _layers_stage(job, teacher, blocks)
        cache = _topk_stage(job, teacher, tokenizer, blocks)
        student = _student_stage(job, teacher, tokenizer, keep, blocks, cache)
        results = None
        if processes.main:
            _measure_stages(job, teacher, student, tokenizer, blocks)
            results = _results(config, state, student, processes.world)
            _write_reports(output_dir, results)
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        return distributed.from_rank0(results)
    finally:
        if started:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Results and reports
# ---------------------------------------------------------------------------------------------


def _objective_name(config: LMDistillConfig) -> str:
    if config.alpha == 0:
        return "cross-entropy only"
    kd = ("forward KL to the live teacher's full distribution" if config.topk == 0
          else f"forward KL to the teacher's top-{config.topk} ({config.mode})")
    return kd + (f", T = {config.temperature:g}" if config.temperature != 1 else "") + (
        f", alpha = {config.alpha:g} with cross-entropy" if config.alpha < 1 else "")


def _results(config: LMDistillConfig, state: RunState, student, world: int) -> dict:
    teacher, layers, speed = state.done("teacher"), state.done("layers"), state.done("speed")
    student_ppl = state.done("evaluate")["perplexity"]
    vocab = student.config.vocab_size
    cache = None
    if state.done("topk_cache"):
        per_token = bytes_per_token(config.topk)
        cache = {"k": config.topk, "mode": config.mode, "bytes_per_token": per_token,
                 "dense_bytes_per_token": 4 * vocab, "fraction_of_dense": per_token / (4 * vocab),
                 **{k: state.done("topk_cache")[k] for k in ("path", "file_mb", "kept_mass")}}
    return {
        "preset": config.preset, "seed": config.seed, "config": state.config,
        "teacher": {"name": config.teacher or "SmolLM2-135M-Instruct (packaged Q4_1, de-quantised to float32)",
                    "quantization": teacher["quantization"], "layers": teacher["layers"], "params": teacher["params"],
                    "perplexity": teacher["perplexity"], **speed["teacher"]},
        "student": {"name": f"the teacher's layers {layers['keep']}", "layers": len(layers["keep"]),
                    "teacher_layers": layers["keep"], "params": count_params(student),
                    "objective": _objective_name(config), "perplexity": student_ppl,
                    "perplexity_before_training": layers["perplexity_before_training"], **speed["student"]},
        "perplexity_ratio": student_ppl["heldout"] / teacher["perplexity"]["heldout"],
        "speedup": speed["student"]["tokens_per_s"] / speed["teacher"]["tokens_per_s"],
        "cache": cache,
        "tokens": teacher["tokens"],
        "samples": state.done("samples")["samples"],
        "wall_s": {stage: round(info["wall_s"], 2) for stage, info in state.stages.items() if "wall_s" in info},
        "threads": torch.get_num_threads(), "processes": world,
    }


def lm_results_table(results: dict) -> str:
    """The results as a Markdown table.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    t, s = results["teacher"], results["student"]
    rows = [("model", "layers", "params (M)", "dev perplexity", "held-out perplexity", "tokens/s (batch 8)"),
            ("teacher", t["layers"], f"{t['params'] / 1e6:.1f}", f"{t['perplexity']['dev']:.1f}",
             f"{t['perplexity']['heldout']:.1f}", f"{t['tokens_per_s']:.0f}"),
            ("student, before training", s["layers"], f"{s['params'] / 1e6:.1f}", "",
             f"{s['perplexity_before_training']['heldout']:,.0f}", ""),
            ("student", s["layers"], f"{s['params'] / 1e6:.1f}", f"{s['perplexity']['dev']:.1f}",
             f"{s['perplexity']['heldout']:.1f}", f"{s['tokens_per_s']:.0f}")]
    lines = ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def _write_reports(output_dir: Path, results: dict) -> None:
    atomic_write_bytes(output_dir / "results.json", json.dumps(results, indent=1).encode())
    config, cache = results["config"], results["cache"]
    cache_line = ("- Teacher signal: the live teacher's full distribution every step\n" if config["topk"] == 0 and
                  config["alpha"] > 0 else "" if cache is None else
                  f"- Top-{cache['k']} cache: {cache['bytes_per_token']} bytes per token, "
                  f"{cache['fraction_of_dense']:.2%} of dense float32 logits' {cache['dense_bytes_per_token']:,}; "
                  f"it keeps {cache['kept_mass']:.2f} of the teacher's probability on average\n")
    walls = ", ".join(f"{k} {v:.0f} s" for k, v in results["wall_s"].items())
    report = (
        f"# Language-model distillation report ({results['preset']} preset, seed {results['seed']})\n\n"
        f"{lm_results_table(results)}\n\n"
        f"- Student: {results['student']['name']}, trained with {results['student']['objective']}, "
        f"{config['steps']} steps of {config['batch_size']} x {config['block_size']} tokens\n"
        f"- Held-out perplexity: student / teacher = {results['perplexity_ratio']:.2f}\n"
        f"- Speed-up (tokens/s, batch 8): {results['speedup']:.2f}x\n{cache_line}"
        f"- Teacher: {results['teacher']['name']}\n"
        f"- Wall times: {walls}; {results['threads']} CPU threads\n\n![results](results.png)\n\n"
        "Samples (T = 0.8, nucleus 0.95) are in samples.md.\n"
    )
    atomic_write_bytes(output_dir / "report.md", report.encode())
    lines = ["# Samples: held-out openings continued by the teacher and the student\n"]
    for i, sample in enumerate(results["samples"], 1):
        lines += [f"## {i}\n", f"**Opening:** {sample['prompt']}\n", f"**Teacher:** {sample['teacher']}\n",
                  f"**Student:** {sample['student']}\n"]
    atomic_write_bytes(output_dir / "samples.md", "\n".join(lines).encode())
    _plot(output_dir, results)


def _plot(output_dir: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t, s = results["teacher"], results["student"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    names = ["teacher", "pruned,\nbefore training", "student"]
    ppl = [t["perplexity"]["heldout"], s["perplexity_before_training"]["heldout"], s["perplexity"]["heldout"]]
    axes[0].bar(names, ppl, color=["tab:gray", "tab:red", "tab:blue"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("held-out perplexity (log scale)")
    for i, v in enumerate(ppl):
        axes[0].text(i, v, f"{v:,.1f}", ha="center", va="bottom")
    speed = [t["tokens_per_s"], s["tokens_per_s"]]
    axes[1].bar(["teacher", "student"], speed, color=["tab:gray", "tab:blue"])
    axes[1].set_ylabel("tokens / s (batch 8)")
    axes[1].set_ylim(0, 1.15 * max(speed))
    for i, v in enumerate(speed):
        axes[1].text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.suptitle(f"{s['layers']} of {t['layers']} layers: perplexity {results['perplexity_ratio']:.2f}x the "
                 f"teacher's, {results['speedup']:.2f}x its speed")
    fig.tight_layout()
    tmp = output_dir / ".results.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(output_dir / "results.png")
