"""The main job: fine-tune a teacher, distil a DistilBERT student, compare, report -- resumably.

``run(DistillConfig(...), output_dir)`` runs the stages below, one function each. Each finished
stage is recorded in ``output_dir/state.json`` and skipped on a re-run; training stages checkpoint
every epoch.

1. ``teacher``    fine-tune (or reuse from the cache) the teacher; evaluate it.
2. ``logits``     the teacher's logits over the training set, computed once, saved to disk.
3. ``student_kd`` the DistilBERT student trained with ``distillation_loss`` from those logits.
4. ``ce_only``    the same student (same initialisation, same steps) trained on labels only.
5. ``speed``      teacher vs student throughput (batch 64) and batch-1 latency, alternating.
6. ``report``     ``results.json``, ``report.md``, ``results.png``; the student is in ``student/``.

The students train with the course's loop (``backend="loop"``, :func:`kd_lib.training.fit`) or with
the ``transformers`` Trainer (``backend="trainer"``, :func:`kd_lib.trainer.trainer_fit`); both
give the same ``results.json``. ``run`` works unchanged in every process of a ``torchrun`` or
``accelerate launch`` job: rank 0 fine-tunes the teacher and computes its logits while the
others wait, every process trains its share of each batch, and only rank 0 evaluates and writes
(``output_dir`` and ``$KD_CACHE_DIR`` must be on a file system all processes share).

Run in notebook 11 (Scaling up), section 2; its stages are notebooks 04 and 05 run end to end.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from kd_lib import distributed
from kd_lib.cache import atomic_save_pretrained, cached_logits
from kd_lib.data import TASKS, EncodedDataset, eval_split, load_task, set_label_names
from kd_lib.distill import kd_from_cache
from kd_lib.distributed import Processes
from kd_lib.evaluate import count_params, measure_speed, size_on_disk_mb
from kd_lib.jobs import RunState, check_run_options, prepare_output
from kd_lib.losses import check_alpha, check_temperature
from kd_lib.models import resolve_teacher
from kd_lib.students import choose_student_layers, distilbert_from_bert
from kd_lib.teacher import TeacherRecipe, finetuned_teacher
from kd_lib.training import (
    TrainSettings,
    ce_loss,
    check_batch_split,
    check_precision,
    evaluate_accuracy,
    fit,
)
from kd_lib.utils import atomic_write_bytes, set_seed

__all__ = ["BACKENDS", "PRESETS", "DistillConfig", "config_from_preset", "run", "validate"]

BACKENDS = ("loop", "trainer")  # the course's training loop, or the transformers Trainer


@dataclass(frozen=True)
class DistillConfig:
    """Every setting of one run of the main job (serialised into ``results.json``).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """

    preset: str = "default"
    task: str = "sst2"
    teacher: str | None = None  # None: the packaged all-MiniLM-L6-v2
    student_layers: int | tuple[int, ...] | None = None  # a count, teacher layer indices, or None: every other
    temperature: float = 2.0
    alpha: float = 0.5
    epochs: int = 2  # student epochs
    lr: float = 1e-4  # student learning rate
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0  # the student's: initialisation of new weights, dropout, shuffling
    teacher_seed: int = 0  # the teacher's fine-tuning and the training subset (shared by all student seeds)
    train_limit: int | None = 8000  # training sentences (teacher and student); None: all
    eval_limit: int | None = None  # held-out sentences; None: all
    teacher_epochs: int = 1
    teacher_lr: float = 1e-4
    device: str = "cpu"
    backend: str = "loop"  # how the students train: "loop" (kd_lib.training.fit) or "trainer" (transformers)
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size counts the whole step)
    precision: str = "fp32"  # or mixed precision on CUDA GPUs: "bf16", "fp16"
    fused_adamw: bool = True  # the students' AdamW in one fused kernel (--no-fused-adamw: one tensor at a time)
    extra: dict = field(default_factory=dict)

    def teacher_recipe(self) -> TeacherRecipe:
        """The recipe of this run's fine-tuned teacher (its cache key)."""
        return TeacherRecipe(
            task=self.task, teacher=self.teacher, train_limit=self.train_limit, epochs=self.teacher_epochs,
            lr=self.teacher_lr, batch_size=self.batch_size, max_length=self.max_length, seed=self.teacher_seed,
        )

    def student_settings(self) -> TrainSettings:
        """How both students train (the KD student and the CE-only baseline)."""
        return TrainSettings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                             grad_accum=self.grad_accum, precision=self.precision, fused_adamw=self.fused_adamw)


PRESETS: dict[str, dict] = {
    # for tests: a few hundred sentences, one epoch each -- checks the plumbing, not the science
    "fast": {"train_limit": 512, "eval_limit": 200, "teacher_epochs": 1, "epochs": 1},
    # meaningful results on a laptop CPU (about 17 min on 2 cores, 10 with the teacher cached):
    # 8,000 training sentences; one teacher epoch at lr 1e-4 reaches 86.1 % on validation
    # T = 2, alpha = 0.5 and 2 epochs (the DistillConfig defaults) were chosen on the dev split, the student's
    # learning rate 2e-4 on the unseen training sentences, by scripts/choose_recipe.py (README, "How the
    # recipe was chosen")
    "default": {"train_limit": 8000, "eval_limit": None, "teacher_epochs": 1, "epochs": 2, "lr": 2e-4},
    # all 67,349 training sentences (hours on a CPU; minutes on a GPU)
    "full": {"train_limit": None, "eval_limit": None, "teacher_epochs": 2, "epochs": 3, "teacher_lr": 5e-5,
             "lr": 5e-5},
}


def config_from_preset(preset: str = "default", **overrides) -> DistillConfig:
    """A :class:`DistillConfig` from a preset, with ``overrides`` (``None`` values ignored).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return DistillConfig(preset=preset, **values)


# ---------------------------------------------------------------------------------------------
# Checking every setting before any training
# ---------------------------------------------------------------------------------------------


def _positive_int(value, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer; got {value!r}")


def _check_options(config: DistillConfig, world: int) -> None:
    """The options on their own: names, ranges, device and backend, and how a batch splits over processes."""
    if config.task not in TASKS:
        raise ValueError(f"--task {config.task!r} is unknown; choose one of: {', '.join(sorted(TASKS))}")
    check_temperature(config.temperature, "--temperature", kd=True)
    check_alpha(config.alpha, "--alpha")
    for name in ("epochs", "batch_size", "teacher_epochs"):
        _positive_int(getattr(config, name), f"--{name.replace('_', '-')}")
    for name, option in (("lr", "--lr"), ("teacher_lr", "teacher_lr")):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{option} must be a learning rate between 0 and 1 (e.g. 2e-4); got {value!r}")
    if not isinstance(config.max_length, int) or not 8 <= config.max_length <= 512:
        raise ValueError(f"--max-length must be between 8 and 512 tokens; got {config.max_length!r}")
    for name in ("train_limit", "eval_limit"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 2):
            raise ValueError(f"{name} must be an int >= 2 or None; got {value!r}")
    for name in ("seed", "teacher_seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer from 0 to 2**32 - 1 (NumPy's and "
                             f"PyTorch's seed range); got {value!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if config.device not in {"cpu"} and not config.device.startswith(("cuda", "mps")):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps; got {config.device!r}")
    if config.backend not in BACKENDS:
        raise ValueError(f"--backend {config.backend!r} is unknown; choose one of: {', '.join(BACKENDS)}")
    _positive_int(config.grad_accum, "--grad-accum")
    check_precision(config.precision, config.device)
    check_batch_split(config.batch_size, config.grad_accum, world)
    if (world > 1 or config.backend == "trainer") and config.device not in {"cpu", "cuda"}:
        who = f"{world} processes" if world > 1 else "--backend trainer"
        raise ValueError(f"with {who}, --device must be cpu or cuda (each process takes its own GPU, "
                         f"cuda:LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES); got {config.device!r}")


def _check_teacher(config: DistillConfig):
    """The teacher's config (read without its weights): a BERT, with a fitting head and tokenizer."""
    try:
        source = resolve_teacher(config.teacher)
    except FileNotFoundError as exc:
        raise ValueError(f"--teacher {config.teacher}: {exc}") from None
    teacher_cfg = source.config()
    if teacher_cfg.model_type != "bert":
        raise ValueError(
            f"--teacher {config.teacher}: a {teacher_cfg.model_type!r} model; the BERT → DistilBERT "
            "mapping needs a BERT teacher (e.g. bert-base-uncased or the packaged default)"
        )
    n_labels = len(TASKS[config.task].label_names)
    if source.finetuned and teacher_cfg.num_labels != n_labels:
        raise ValueError(
            f"--teacher {config.teacher} was fine-tuned for {teacher_cfg.num_labels} labels but --task "
            f"{config.task} has {n_labels}: pass a teacher fine-tuned on {config.task}, or a base model"
        )
    if source.kind == "folder":
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source.location)
        except Exception as exc:
            raise ValueError(f"--teacher {config.teacher}: no usable tokenizer in the folder ({exc})") from exc
        if len(tokenizer) > teacher_cfg.vocab_size:
            raise ValueError(
                f"--teacher {config.teacher}: its tokenizer has {len(tokenizer)} tokens but the model's "
                f"vocabulary only {teacher_cfg.vocab_size}; the tokenizer does not belong to this model"
            )
    return teacher_cfg


def validate(config: DistillConfig) -> DistillConfig:
    """Check every setting before any training; return the config with the student's teacher layers resolved.

    Raises ``ValueError`` naming the option and the fix.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    _check_options(config, distributed.launched().world)
    n_teacher = _check_teacher(config).num_hidden_layers
    layers = choose_student_layers(config.student_layers, n_teacher, "--student-layers")
    return replace(config, student_layers=tuple(layers))


# ---------------------------------------------------------------------------------------------
# The run: its state, and one function per stage
# ---------------------------------------------------------------------------------------------


# a saved run lacking a setting added since it began is read with the value such runs used
SETTINGS_BEFORE_THEY_EXISTED = {"fused_adamw": False}  # runs before fused AdamW updated one tensor at a time


def _state(output_dir: Path, config: DistillConfig, overwrite: bool, write: bool) -> RunState:
    """The run's ``state.json`` (:class:`kd_lib.jobs.RunState`) with this job's settings."""
    defaults = {**asdict(DistillConfig()), **SETTINGS_BEFORE_THEY_EXISTED}
    return RunState(output_dir, asdict(config), defaults, overwrite, write=write)


@dataclass
class _Job:
    """One run of the main job, as every stage sees it."""

    config: DistillConfig
    output_dir: Path
    device: str
    processes: Processes
    state: RunState
    progress: bool
    log: Callable[..., None]
    checkpoint_every: int | None

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"


def _teacher_stage(job: _Job):
    """Stage 1: rank 0 fine-tunes the teacher (or finds it cached), the others then load it; its accuracy."""
    config, state, start = job.config, job.state, time.perf_counter()
    teacher, tokenizer, info = distributed.rank0_first(
        lambda: finetuned_teacher(config.teacher_recipe(), device=job.device, progress=job.progress,
                                  checkpoint_every=job.checkpoint_every))
    teacher.to(job.device).eval()
    split = eval_split(config.task)
    limits = {"train": config.train_limit, split: config.eval_limit}
    data = load_task(config.task, limit={k: v for k, v in limits.items() if v}, seed=config.teacher_seed)
    train = EncodedDataset(data["train"], tokenizer, config.max_length)
    held_out = EncodedDataset(data[split], tokenizer, config.max_length)
    if job.processes.main and not state.done("teacher"):
        job.log(f"teacher: {'cached' if info.get('from_cache') else 'fine-tuned'} at {info['folder']}")
        # fine-tuning already evaluated on the whole held-out split: reuse it
        reuse = (config.eval_limit is None and "accuracy" in info
                 and info.get("recipe", {}).get("max_length") == config.max_length)
        state.finish("teacher", {
            "accuracy": info["accuracy"] if reuse else evaluate_accuracy(teacher, held_out, device=job.device),
            "folder": info["folder"],
            "from_cache": bool(info.get("from_cache")),
            "finetune_wall_s": info.get("wall_s"),
            "wall_s": time.perf_counter() - start,
        })
    if job.processes.main:
        job.log(f"teacher accuracy on {split}: {state.done('teacher')['accuracy']:.4f}")
    return teacher, tokenizer, train, held_out


def _logits_stage(job: _Job, teacher, train: EncodedDataset) -> torch.Tensor:
    """Stage 2: the teacher's logits over the training set, computed (or loaded) once by rank 0, shared."""
    logits = None
    if job.processes.main:
        start, config = time.perf_counter(), job.config
        meta = {"teacher": job.state.done("teacher")["folder"], "task": config.task, "max_length": config.max_length}
        logits, from_cache = cached_logits(teacher, train, job.output_dir / "teacher_logits.safetensors", meta,
                                           batch_size=64, device=job.device, progress=job.progress,
                                           desc="teacher logits")
        if not from_cache:
            job.state.finish("logits", {"n": len(train), "wall_s": time.perf_counter() - start})
    return distributed.from_rank0(logits)


def _train_student(job: _Job, stage: str, alpha: float, teacher, train: EncodedDataset, teacher_logits):
    """A new student from the teacher's layers, trained with KD at ``alpha`` (0: labels only); its epoch losses."""
    config = job.config
    student = distilbert_from_bert(teacher, list(config.student_layers), seed=config.seed)
    set_seed(config.seed)
    if config.backend == "trainer":
        from kd_lib.trainer import trainer_fit

        ckpt = job.checkpoints / f"{stage}-trainer"
        history = trainer_fit(
            student, train, config.student_settings(), output_dir=ckpt, teacher_logits=teacher_logits,
            temperature=config.temperature, alpha=alpha, seed=config.seed, device=job.device,
            progress=job.progress, checkpoint_every=job.checkpoint_every,
        )
    else:
        ckpt = job.checkpoints / f"{stage}.pt"
        objective = ce_loss() if stage == "ce_only" else kd_from_cache(teacher_logits, config.temperature, alpha)
        history = fit(
            student, train, objective, config.student_settings(), seed=config.seed, device=job.device,
            progress=job.progress, checkpoint=str(ckpt), desc=stage.replace("_", " "),
            checkpoint_every=job.checkpoint_every, distributed=job.processes.world > 1,
        )
    return student, history, ckpt


def _student_stage(job: _Job, stage: str, alpha: float, teacher, tokenizer, train, held_out, teacher_logits):
    """Stages 3-4: train (or reload) a student; rank 0 evaluates it, saves the KD student, clears checkpoints."""
    start, saved, state = time.perf_counter(), job.output_dir / "student", job.state
    done = state.done(stage)
    if stage == "student_kd" and done and not (saved / "model.safetensors").is_file():
        done = None  # the saved student was deleted: train it again
    done = distributed.from_rank0(done)
    student = None
    if done and stage == "student_kd" and job.processes.main:
        from transformers import DistilBertForSequenceClassification

        student = DistilBertForSequenceClassification.from_pretrained(saved, use_safetensors=True)
    elif not done:
        student, history, ckpt = _train_student(job, stage, alpha, teacher, train, teacher_logits)
        if job.processes.main:
            acc = evaluate_accuracy(student, held_out, device=job.device)
            if stage == "student_kd":
                atomic_save_pretrained(saved, set_label_names(student, job.config.task), tokenizer)
            state.finish(stage, {"accuracy": acc, "train_losses": history, "wall_s": time.perf_counter() - start})
            if ckpt.is_dir():
                shutil.rmtree(ckpt)
            else:
                ckpt.unlink(missing_ok=True)
    if job.processes.main:
        job.log(f"{stage}: accuracy {state.done(stage)['accuracy']:.4f}")
    return student


def _speed_stage(job: _Job, teacher, student, held_out) -> None:
    """Stage 5 (rank 0): teacher and student throughput and latency, measured side by side."""
    if not job.state.done("speed"):
        start = time.perf_counter()
        speed = measure_speed({"teacher": teacher, "student": student}, held_out, device=job.device)
        job.state.finish("speed", {**speed, "wall_s": time.perf_counter() - start})


OUTPUTS = ("results.json", "report.md", "results.png", "onnx-int8", "student", "teacher_logits.safetensors",
           "checkpoints", "state.json")  # what a run writes in its output folder (onnx-int8: --export); --overwrite
# removes them in this order


def run(
    config: DistillConfig,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Run (or resume) the main job; return the ``results.json`` content.

    A re-run with the same ``output_dir`` continues where the last one stopped (``resume=True``
    insists on it: it fails if there is nothing to resume). Training checkpoints every epoch, and
    every ``checkpoint_every`` optimizer steps if given. Under ``torchrun`` every process calls
    this and gets the same results; only rank 0 writes.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    config = validate(config)
    output_dir = Path(output_dir)
    check_run_options(output_dir, overwrite, resume, checkpoint_every)
    device, started = distributed.start(config.device)
    try:
        processes = distributed.current()
        prepare_output(output_dir, OUTPUTS, overwrite, processes)
        state = _state(output_dir, config, overwrite, write=processes.main)
        job = _Job(config, output_dir, device, processes, state, progress and processes.main,
                   log if processes.main else (lambda *_: None), checkpoint_every)
        set_seed(config.seed)
        teacher, tokenizer, train, held_out = _teacher_stage(job)
        teacher_logits = _logits_stage(job, teacher, train)
        students = {stage: _student_stage(job, stage, alpha, teacher, tokenizer, train, held_out, teacher_logits)
                    for stage, alpha in (("student_kd", config.alpha), ("ce_only", 0.0))}
        results = None
        if processes.main:
            _speed_stage(job, teacher, students["student_kd"], held_out)
            results = _results(config, state, teacher, students["student_kd"], processes.world)
            _write_reports(output_dir, results)
        return distributed.from_rank0(results)
    finally:
        if started:
            dist.destroy_process_group()


def _results(config: DistillConfig, state: RunState, teacher, student, world: int = 1) -> dict:
    speed = state.done("speed")
    t_acc, s_acc = state.done("teacher")["accuracy"], state.done("student_kd")["accuracy"]
    return {
        "task": config.task,
        "preset": config.preset,
        "seed": config.seed,
        "config": state.config,
        "teacher": {
            "name": config.teacher or "sentence-transformers/all-MiniLM-L6-v2 (packaged), fine-tuned",
            "folder": state.done("teacher")["folder"],
            "layers": teacher.config.num_hidden_layers,
            "params": count_params(teacher),
            "size_mb": size_on_disk_mb(teacher),
            "accuracy": t_acc,
            **{k: speed["teacher"][k] for k in ("throughput_per_s", "latency_ms_batch1")},
        },
        "student": {
            "name": f"DistilBERT, teacher layers {list(config.student_layers)}",
            "layers": student.config.n_layers,
            "teacher_layers": list(config.student_layers),
            "params": count_params(student),
            "size_mb": size_on_disk_mb(student),
            "accuracy": s_acc,
            **{k: speed["student"][k] for k in ("throughput_per_s", "latency_ms_batch1")},
        },
        "baselines": {"ce_only": {"accuracy": state.done("ce_only")["accuracy"]}},
        "retention": s_acc / t_acc,
        "speedup": speed["student"]["throughput_per_s"] / speed["teacher"]["throughput_per_s"],
        "eval_split": eval_split(config.task),
        "wall_s": {stage: round(info["wall_s"], 2) for stage, info in state.stages.items() if "wall_s" in info},
        "threads": torch.get_num_threads(),
        "processes": world,
        "backend": config.backend,
    }


def results_table(results: dict) -> str:
    """The results as a Markdown table."""
    t, s = results["teacher"], results["student"]
    rows = [
        ("model", "layers", "params (M)", "size (MB)", "accuracy", "examples/s (b=64)", "latency ms (b=1)"),
        ("teacher", t["layers"], f"{t['params'] / 1e6:.1f}", f"{t['size_mb']:.1f}", f"{t['accuracy']:.4f}",
         f"{t['throughput_per_s']:.0f}", f"{t['latency_ms_batch1']:.1f}"),
        ("student (KD)", s["layers"], f"{s['params'] / 1e6:.1f}", f"{s['size_mb']:.1f}", f"{s['accuracy']:.4f}",
         f"{s['throughput_per_s']:.0f}", f"{s['latency_ms_batch1']:.1f}"),
        ("student (CE only)", s["layers"], f"{s['params'] / 1e6:.1f}", f"{s['size_mb']:.1f}",
         f"{results['baselines']['ce_only']['accuracy']:.4f}", "", ""),
    ]
    lines = ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def _write_reports(output_dir: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    atomic_write_bytes(output_dir / "results.json", json.dumps(results, indent=1).encode())
    walls = ", ".join(f"{k} {v:.0f} s" for k, v in results["wall_s"].items())
    report = (
        f"# Distillation report: {results['task']} ({results['preset']} preset, seed {results['seed']})\n\n"
        f"{results_table(results)}\n\n"
        f"- Retention (student / teacher accuracy on {results['eval_split']}): {results['retention']:.3f}\n"
        f"- Speed-up (student / teacher throughput, batch 64): {results['speedup']:.2f}×\n"
        f"- Temperature {results['config']['temperature']}, alpha {results['config']['alpha']}, "
        f"{results['config']['epochs']} student epoch(s), {results['threads']} CPU threads\n"
        f"- Wall times: {walls}\n\n![results](results.png)\n"
    )
    atomic_write_bytes(output_dir / "report.md", report.encode())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    names = ["teacher", "student (KD)", "student (CE only)"]
    accs = [results["teacher"]["accuracy"], results["student"]["accuracy"], results["baselines"]["ce_only"]["accuracy"]]
    axes[0].bar(names, accs, color=["tab:gray", "tab:blue", "tab:orange"])
    axes[0].set_ylim(max(0.0, min(accs) - 0.1), 1.0)
    axes[0].set_ylabel(f"accuracy ({results['eval_split']})")
    for i, a in enumerate(accs):
        axes[0].text(i, a + 0.005, f"{a:.3f}", ha="center")
    thr = [results["teacher"]["throughput_per_s"], results["student"]["throughput_per_s"]]
    axes[1].bar(names[:2], thr, color=["tab:gray", "tab:blue"])
    axes[1].set_ylabel("examples / s (batch 64)")
    axes[1].set_ylim(0, 1.15 * max(thr))
    for i, v in enumerate(thr):
        axes[1].text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.suptitle(
        f"{results['task']}: {results['retention']:.1%} of the teacher's accuracy, {results['speedup']:.2f}× faster"
    )
    fig.tight_layout()
    tmp = output_dir / ".results.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(output_dir / "results.png")
