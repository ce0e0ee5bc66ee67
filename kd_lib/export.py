"""Shipping a classifier: ONNX export, ONNX Runtime dynamic int8, and predictions from either format.

- :func:`export_classifier` turns a saved sequence classifier (the main job's ``student/``, or a
  fine-tuned teacher folder) into a folder ONNX Runtime can serve -- ``model.onnx`` beside the
  tokenizer and ``config.json`` -- with ``torch.onnx.export``; with ``int8=True`` its weights are
  then quantized by ONNX Runtime's ``quantize_dynamic`` (int8 weights, activations quantized on the
  fly, no calibration data). Before anything is written where you asked, the exported model is
  **checked against PyTorch** on the task's validation split: fp32 logits within
  :data:`FP32_LOGIT_ATOL`, int8 accuracy within :data:`INT8_MAX_DROP` of PyTorch's.
  ``export.json`` in the folder records the check.
- :class:`OnnxClassifier` is an ``nn.Module`` around an ``onnxruntime.InferenceSession``: it takes
  ``input_ids``/``attention_mask`` and returns an object with ``.logits`` like a Hugging Face model,
  so :func:`kd_lib.training.predict_logits` and :func:`kd_lib.evaluate.measure_speed` measure it
  exactly as they measure PyTorch models.
- :func:`load_classifier` opens a PyTorch folder or an exported ONNX folder alike;
  :func:`predict_texts` labels sentences with either.

Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FP32_LOGIT_ATOL",
    "INT8_MAX_DROP",
    "ONNX_FILE",
    "ExportCheckError",
    "OnnxClassifier",
    "Prediction",
    "check_against_pytorch",
    "export_classifier",
    "export_onnx",
    "export_run",
    "find_model_dir",
    "fuse_transformer_onnx",
    "load_classifier",
    "predict_texts",
    "quantize_onnx_int8",
]

ONNX_FILE = "model.onnx"
RECORD_FILE = "export.json"
FP32_LOGIT_ATOL = 1e-3  # the largest |logit difference| accepted between ONNX Runtime fp32 and PyTorch
INT8_MAX_DROP = 0.005  # the accuracy (a fraction: 0.5 point) int8 may lose against PyTorch fp32
OPSET = 17


class ExportCheckError(ValueError):
    """The exported model does not agree with PyTorch well enough; nothing was written.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """


# ---------------------------------------------------------------------------------------------
# Finding and loading models
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, fix: str) -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file and ``fix`` if it is unreadable or not an object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}): {fix}") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is damaged (a JSON {type(found).__name__}, not an object): {fix}")
    return found


def find_model_dir(path: str | os.PathLike, which: str = "student") -> tuple[Path, dict]:
    """The model folder ``path`` names, and what the run beside it says (``{}`` if nothing).

    ``path`` is a model folder (``config.json`` with ``model.safetensors`` or ``model.onnx``) or a run
    folder of ``python -m kd_lib distill`` (``results.json`` and ``student/``): then ``which``
    picks its ``"student"`` or its ``"teacher"`` (the cached fine-tuned teacher the run used).

    Raises:
        ValueError: ``path`` does not exist or holds no model; ``which`` is neither choice.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    if which not in ("student", "teacher"):
        raise ValueError(f"which must be 'student' or 'teacher'; got {which!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist: give a model folder (e.g. runs/distill/student) or the run folder "
                         "of `python -m kd_lib distill` (e.g. runs/distill)")
    if not path.is_dir():
        raise ValueError(f"{path} is a file: give the folder that holds config.json and the weights")
    run = {}
    if (path / "results.json").is_file():
        run = _read_json(path / "results.json", "re-run `python -m kd_lib distill` with --overwrite to rebuild it, "
                         "or give the model folder itself (e.g. runs/distill/student)")
        if "teacher" not in run or "task" not in run:
            raise ValueError(f"{path}/results.json is not a `python -m kd_lib distill` run (no task or teacher): "
                             "give the model folder itself")
        path = Path(run["teacher"]["folder"]) if which == "teacher" else path / "student"
        if not path.is_dir():
            raise ValueError(f"the run's {which} folder {path} is missing: re-run the job to rebuild it")
    elif which == "teacher":
        raise ValueError(f"--teacher needs a run folder with results.json; {path} has none (give the teacher's "
                         "own folder without --teacher)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} holds no model (no config.json): give a folder written by save_pretrained, "
                         "by `python -m kd_lib distill` (its student/) or by `python -m kd_lib export`")
    return path, run


def _check_classifier_config(folder: Path) -> dict:
    config = _read_json(folder / "config.json", "restore the folder (re-run the job or the export that wrote it)")
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(f"{folder} holds a {', '.join(architectures) or 'model of unknown architecture'}, not a "
                         "sentence classifier: export and predict take the encoder students and teachers of "
                         "`python -m kd_lib distill` (a language model from distill-lm generates text instead)")
    return config


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session that behaves like a Hugging Face sequence classifier on the CPU.

    ``forward(input_ids [B, L], attention_mask [B, L])`` returns an object whose ``.logits`` is a
    float32 tensor ``[B, C]``. ``config`` is the folder's ``config.json`` (``id2label`` names the
    classes). ONNX Runtime uses ``threads`` CPU threads (default: PyTorch's count), so a comparison
    with a PyTorch model runs on the same cores.

    With ``flush_denormal`` (the default) subnormal floats -- nonzero numbers below 1.2e-38, which x86
    CPUs compute with far more slowly than with normal ones -- are flushed to zero, in ONNX Runtime's
    threads and, while the session runs, in the calling thread (``torch.set_flush_denormal``; PyTorch's
    default, no flushing, is restored after each call). Outputs move by far less than any tolerance here;
    on the course's 2-core CPU the int8 student runs faster with it (``benchmarks/bench_export.py`` times
    both settings).

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, flush_denormal: bool = True) -> None:
        super().__init__()
        import onnxruntime as ort
        from transformers import AutoConfig

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between calls: a spinning thread pool would steal the cores of whatever runs next
        # (a PyTorch model timed in alternation, the tokenizer)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.set_denormal_as_zero", "1" if flush_denormal else "0")
        self.flush_denormal = flush_denormal
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.config = AutoConfig.from_pretrained(path.parent) if (path.parent / "config.json").is_file() else None
        self._inputs = {i.name for i in self.session.get_inputs()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_ignored):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.cpu().numpy().astype("int64"),
                "attention_mask": attention_mask.cpu().numpy().astype("int64")}
        if self.flush_denormal:
            torch.set_flush_denormal(True)  # the calling thread computes part of every operator too
        try:
            (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self._inputs})
        finally:
            if self.flush_denormal:
                torch.set_flush_denormal(False)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    def size_mb(self) -> float:
        """The ONNX file's size in MB (10^6 bytes)."""
        return self.path.stat().st_size / 1e6


def load_classifier(folder: str | os.PathLike):
    """``(model, tokenizer, kind)`` from a model folder: ``kind`` is ``"onnx-int8"``, ``"onnx"`` (a folder
    written by :func:`export_classifier`) or ``"pytorch"`` (``save_pretrained`` with safetensors).

    Raises:
        ValueError: no such folder, no model in it, or a model that is not a sentence classifier.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kd_lib.utils import quiet_hf

    folder, _ = find_model_dir(folder)
    _check_classifier_config(folder)
    with quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if (folder / ONNX_FILE).is_file():
            record = (_read_json(folder / RECORD_FILE, "export the model again with `python -m kd_lib export`")
                      if (folder / RECORD_FILE).is_file() else {})
            return OnnxClassifier(folder / ONNX_FILE), tokenizer, "onnx-int8" if record.get("int8") else "onnx"
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"{folder} has config.json but no model.safetensors or {ONNX_FILE}")
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    return model.eval(), tokenizer, "pytorch"


# ---------------------------------------------------------------------------------------------
# Export and quantization
# ---------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write ``model`` (a Hugging Face sequence classifier) to ``path`` as ONNX with ``torch.onnx.export``.

    Inputs ``input_ids`` and ``attention_mask`` (int64 ``[batch, sequence]``, both axes dynamic), output
    ``logits`` (float32 ``[batch, classes]``). The model is traced in eval mode on the CPU.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """

    class Logits(nn.Module):  # the exporter needs plain tensors in and out
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    import warnings

    path = Path(path)
    model = model.cpu().eval()
    example = (torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2204, 102, 0, 0, 0]]),
               torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]))
    batch, sequence = "batch", "sequence"
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python-level branches of transformers' masking code: the branches it records are
        # the ones every (batch, sequence) takes here -- the check against PyTorch on many lengths confirms it
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(model), example, str(path), input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence},
                          "logits": {0: batch}},
            opset_version=opset, dynamo=False,
        )
    return path


def fuse_transformer_onnx(source: str | os.PathLike, target: str | os.PathLike, config) -> Path:
    """ONNX Runtime's transformer optimizer on an exported BERT-family encoder: the operations of each
    attention block, of the embeddings + LayerNorm, of residual + LayerNorm and of bias + GELU become one
    fused operator each (``Attention``, ``EmbedLayerNormalization``, ``SkipLayerNormalization``,
    ``BiasGelu``) -- the same function, fewer passes over memory. ``config`` is the model's (heads and width).

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "n_heads", None) or config.num_attention_heads
    width = getattr(config, "dim", None) or config.hidden_size
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=width, opt_level=1)
    optimized.save_model_to_file(str(target))
    return Path(target)


def quantize_onnx_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``source`` into ``target``: the weights of every matrix
    product (one scale per output channel) and the embedding tables become int8; a matrix product's input
    is quantized on the fly, batch by batch.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its advice to pre-process: taken
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather", "Attention", "EmbedLayerNormalization"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # types of fused ops' outputs
    return Path(target)


# ---------------------------------------------------------------------------------------------
# Export with a check against PyTorch
# ---------------------------------------------------------------------------------------------


def _task_of(config: dict, run: dict, task: str | None) -> str:
    """The task whose validation split checks the export: given, the run's, or the one whose class names
    the model's ``config.json`` carries."""
    from kd_lib.data import TASKS

    if task is not None:
        if task not in TASKS:
            raise ValueError(f"--task {task!r} is not a course task; choose one of: {', '.join(sorted(TASKS))}")
        return task
    if run.get("task"):
        return run["task"]
    names = tuple(config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {}))))
    found = [name for name, spec in TASKS.items() if spec.label_names == names]
    if len(found) != 1:
        raise ValueError(f"cannot tell which task the model in this folder was trained on (classes {names}): "
                         f"pass --task ({', '.join(sorted(TASKS))})")
    return found[0]


def check_against_pytorch(reference: torch.Tensor, exported: torch.Tensor, labels, int8: bool) -> dict:
    """Compare an exported model's logits ``[N, C]`` with PyTorch's ``reference`` on the same ``labels [N]``:
    accuracies, the largest absolute logit difference, the fraction of equal predictions. Raise
    :class:`ExportCheckError` beyond the format's tolerance: fp32 logits within :data:`FP32_LOGIT_ATOL`,
    int8 accuracy at most :data:`INT8_MAX_DROP` below PyTorch's.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    from kd_lib.training import accuracy

    record = {"examples": len(labels), "pytorch_accuracy": accuracy(reference, labels),
              "onnx_accuracy": accuracy(exported, labels),
              "max_abs_logit_diff": (reference - exported).abs().max().item(),
              "same_prediction": (reference.argmax(-1) == exported.argmax(-1)).float().mean().item()}
    drop = record["pytorch_accuracy"] - record["onnx_accuracy"]
    if int8 and drop > INT8_MAX_DROP + 1e-6:  # float32 accuracies: 1 of 200 is 0.5 point, not a hair more
        raise ExportCheckError(
            f"the int8 model's validation accuracy {record['onnx_accuracy']:.4f} is {100 * drop:.2f} points below "
            f"PyTorch's {record['pytorch_accuracy']:.4f} (at most {100 * INT8_MAX_DROP:.1f} accepted); nothing was "
            "written -- export without --int8 to ship the fp32 model")
    if not int8 and record["max_abs_logit_diff"] > FP32_LOGIT_ATOL:
        raise ExportCheckError(
            f"the ONNX model's logits differ from PyTorch's by up to {record['max_abs_logit_diff']:.2e} "
            f"(at most {FP32_LOGIT_ATOL:g} accepted); nothing was written -- please report this with the model")
    return record


def export_classifier(
    source: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    int8: bool = False,
    which: str = "student",
    task: str | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
    check_data=None,
) -> dict:
    """Export the classifier in ``source`` to ONNX (and int8 with ``int8``), check it, and write the folder.

    Args:
        source: a model folder or a ``distill`` run folder (see :func:`find_model_dir`).
        output_dir: where the exported folder goes; default ``<run>/onnx`` or ``<run>/onnx-int8`` for a
            run folder (``onnx-teacher``... with ``which="teacher"``), ``<folder>-onnx[-int8]`` beside a
            model folder.
        int8: quantize the weights to int8 with ONNX Runtime after export.
        which: ``"student"`` or ``"teacher"`` of a run folder.
        task: the task whose validation split checks the export (default: the run's, or the one
            whose class names the model carries).
        max_length: tokens per sentence in the check (default: the run's, else 64).
        overwrite: replace an existing ``output_dir``.
        check_data: the sentences of the check, an ``EncodedDataset`` made with the model's tokenizer
            (default: the task's whole validation split at ``max_length``).

    Returns:
        The content of ``export.json``: the paths, sizes in MB, and the check (examples, accuracies,
        largest logit difference, agreement with PyTorch).

    Raises:
        ValueError: bad input (each message names the fix); :class:`ExportCheckError` when the exported
            model disagrees with PyTorch -- then nothing is written.

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kd_lib.data import EncodedDataset, eval_split, load_task
    from kd_lib.training import predict_logits
    from kd_lib.utils import quiet_hf

    folder, run = find_model_dir(source, which)
    config = _check_classifier_config(folder)
    if not (folder / "model.safetensors").is_file():
        exported = " -- this one is already exported" if (folder / ONNX_FILE).is_file() else ""
        raise ValueError(f"{folder} holds no PyTorch weights (model.safetensors): export starts from a PyTorch "
                         f"model folder{exported}")
    task = _task_of(config, run, task)
    max_length = max_length or run.get("config", {}).get("max_length") or 64
    if output_dir is None:
        suffix = ("-teacher" if which == "teacher" else "") + ("-int8" if int8 else "")
        output_dir = (Path(source) / f"onnx{suffix}") if run else folder.with_name(f"{folder.name}-onnx{suffix}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ValueError(f"{output_dir} already exists: pass --overwrite to replace it, or choose --output-dir")
    start = time.perf_counter()
    with quiet_hf():
        # eager attention: the graph ONNX Runtime's transformer optimizer recognises and fuses (the same function
        # as PyTorch's default sdpa attention, to float32 rounding)
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True,
                                                                   attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    split = eval_split(task)
    data = check_data if check_data is not None else EncodedDataset(load_task(task)[split], tokenizer, max_length)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        traced = export_onnx(model, tmp / "traced.onnx")
        fused = fuse_transformer_onnx(traced, tmp / ("fused.onnx" if int8 else ONNX_FILE), model.config)
        if int8:
            quantize_onnx_int8(fused, tmp / ONNX_FILE)
            fused.unlink()
        traced.unlink()
        exported = OnnxClassifier(tmp / ONNX_FILE)
        check = check_against_pytorch(predict_logits(model, data), predict_logits(exported, data), data.labels, int8)
        with quiet_hf():
            tokenizer.save_pretrained(tmp)
            model.config.save_pretrained(tmp)
        record = {"source": str(folder), "task": task, "split": split, "max_length": max_length, "int8": int8,
                  "opset": OPSET, "size_mb": (tmp / ONNX_FILE).stat().st_size / 1e6,
                  "pytorch_size_mb": (folder / "model.safetensors").stat().st_size / 1e6,
                  "check": check, "tolerance": {"fp32_max_abs_logit_diff": FP32_LOGIT_ATOL,
                                                "int8_max_accuracy_drop": INT8_MAX_DROP},
                  "wall_s": round(time.perf_counter() - start, 2)}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {**record, "output_dir": str(output_dir)}


def _held_out_of(run: dict, tokenizer):
    """The held-out sentences a ``distill`` run evaluated on: the same split, subset and length."""
    from kd_lib.data import EncodedDataset, load_task

    config, split = run["config"], run["eval_split"]
    limit = {split: config["eval_limit"]} if config.get("eval_limit") else None
    return EncodedDataset(load_task(run["task"], limit=limit, seed=config["teacher_seed"])[split], tokenizer,
                          config["max_length"])


# rounds of export_run's timing (median reported): with measure_speed's default 5, the int8 student's speed-up
# over the teacher varied by a fifth between runs of the same folder (3.29-4.31x in four runs, 2026-12-07)
EXPORT_TIMING_ROUNDS = 9


def export_run(run_dir: str | os.PathLike) -> dict:
    """The main job's ``--export``: a finished ``distill`` run's student exported to ONNX Runtime int8 in
    ``RUN/onnx-int8`` (checked against PyTorch on the run's held-out sentences), then timed beside the
    run's PyTorch teacher and student (:func:`kd_lib.evaluate.measure_speed`: alternating, the median of
    :data:`EXPORT_TIMING_ROUNDS` rounds).
    ``results.json`` gains ``student_int8_onnx`` and ``report.md`` a section; returns that entry.

    Raises:
        ValueError: ``run_dir`` holds no finished run; :class:`ExportCheckError` if the int8 model
            loses more than :data:`INT8_MAX_DROP` of accuracy (then ``onnx-int8`` is not written).

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kd_lib.evaluate import measure_speed
    from kd_lib.utils import atomic_write_bytes, quiet_hf

    run_dir = Path(run_dir)
    student_dir, run = find_model_dir(run_dir, "student")
    if not run:
        raise ValueError(f"{run_dir} holds no finished run (no results.json): --export needs the main job's output")
    start = time.perf_counter()
    with quiet_hf():
        teacher = AutoModelForSequenceClassification.from_pretrained(run["teacher"]["folder"], use_safetensors=True)
        student = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
        held_out = _held_out_of(run, AutoTokenizer.from_pretrained(student_dir))
        record = export_classifier(student_dir, run_dir / "onnx-int8", int8=True, task=run["task"],
                                   max_length=run["config"]["max_length"], overwrite=True, check_data=held_out)
    onnx = OnnxClassifier(run_dir / "onnx-int8" / ONNX_FILE)
    speed = measure_speed({"teacher": teacher.eval(), "student": student.eval(), "student_int8_onnx": onnx}, held_out,
                          repeats=EXPORT_TIMING_ROUNDS)
    check, mine, theirs = record["check"], speed["student_int8_onnx"], speed["teacher"]
    entry = {"folder": str(run_dir / "onnx-int8"), "size_mb": record["size_mb"], "accuracy": check["onnx_accuracy"],
             "pytorch_accuracy": check["pytorch_accuracy"], "same_prediction": check["same_prediction"],
             **mine, "speedup": mine["throughput_per_s"] / theirs["throughput_per_s"],
             "latency_speedup": theirs["latency_ms_batch1"] / mine["latency_ms_batch1"],
             "measured_beside": speed, "wall_s": round(time.perf_counter() - start, 2)}
    atomic_write_bytes(run_dir / "results.json", json.dumps({**run, "student_int8_onnx": entry}, indent=1).encode())
    report = (run_dir / "report.md").read_text() if (run_dir / "report.md").is_file() else ""
    report = report.split(REPORT_HEADING)[0].rstrip("\n") + "\n\n" + _report_section(entry, run)
    atomic_write_bytes(run_dir / "report.md", report.encode())
    return entry


REPORT_HEADING = "## Shipped: the student on ONNX Runtime, int8"


def _report_section(entry: dict, run: dict) -> str:
    beside = entry["measured_beside"]
    rows = [("model", "size (MB)", "accuracy", "examples/s (b=64)", "latency ms (b=1)", "× teacher (b=64)",
             "× teacher (b=1)")]
    models = (("teacher", "teacher, PyTorch", run["teacher"]["size_mb"], run["teacher"]["accuracy"]),
              ("student", "student (KD), PyTorch", run["student"]["size_mb"], entry["pytorch_accuracy"]),
              ("student_int8_onnx", "student (KD), ONNX Runtime int8", entry["size_mb"], entry["accuracy"]))
    for name, label, size, acc in models:
        s, t = beside[name], beside["teacher"]
        rows.append((label, f"{size:.1f}", f"{acc:.4f}", f"{s['throughput_per_s']:.0f}",
                     f"{s['latency_ms_batch1']:.1f}", f"{s['throughput_per_s'] / t['throughput_per_s']:.2f}",
                     f"{t['latency_ms_batch1'] / s['latency_ms_batch1']:.2f}"))
    table = ["| " + " | ".join(r) + " |" for r in rows]
    table.insert(1, "|" + "---|" * len(rows[0]))
    return (f"{REPORT_HEADING}\n\n`python -m kd_lib distill --export`: `{entry['folder']}` (checked against PyTorch: "
            f"the same prediction on {entry['same_prediction']:.1%} of the held-out sentences). The three models "
            "were timed in alternation, in this run; their speeds can differ a little from the table above.\n\n"
            + "\n".join(table) + "\n")


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One sentence's predicted class name and its probability (0..1).

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """

    text: str
    label: str
    probability: float


def predict_texts(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 32,
                  max_length: int = 128) -> list[Prediction]:
    """Label ``texts`` with ``model`` (PyTorch or :class:`OnnxClassifier`), ``batch_size`` at a time.

    Raises:
        ValueError: no texts, an empty text, or a ``batch_size``/``max_length`` below 1 (8 for
            ``max_length``).

    Taught in notebook 07, section 6 (Shipping it: ONNX Runtime).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer; got {batch_size!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise ValueError(f"--max-length must be an integer >= 8 (tokens); got {max_length!r}")
    if not texts:
        raise ValueError("no sentences to label: give them as arguments, with --file, or one per line on stdin")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"sentence {empty[0]} is empty ({len(empty)} empty in all): remove empty lines")
    names = model.config.id2label if model.config is not None else {}
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                                  .logits.float(), dim=-1)
        p, k = probs.max(-1)
        out += [Prediction(t, str(names.get(int(c), int(c))), float(v)) for t, c, v in zip(chunk, k, p, strict=True)]
    return out
