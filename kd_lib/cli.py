"""Command line: ``python -m kd_lib check``, ``distill``, ``distill-lm``, ``export`` and ``predict``
(console scripts ``kd-check``, ``kd-distill`` and ``kd-distill-lm``)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

__all__ = ["EXPECTED", "check_main", "distill_lm_main", "distill_main", "issues_url", "main", "report_error"]


def _layers(text: str) -> int | tuple[int, ...]:
    """``3`` → a count of 3 layers; ``0,2,4`` → those teacher layers."""
    try:
        if "," in text:
            return tuple(int(x) for x in text.split(",") if x.strip())
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a layer count (e.g. 3) or comma-separated teacher layers (e.g. 0,2,4)"
        ) from None


def _add_distill_arguments(p: argparse.ArgumentParser) -> None:
    from kd_lib.data import TASKS
    from kd_lib.pipeline import BACKENDS, PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="default",
                   help="fast (tests, ~1 min), default (meaningful, ~15 min on a 2-core CPU), full (all data)")
    p.add_argument("--task", default="sst2", help=f"one of: {', '.join(sorted(TASKS))} (default: sst2)")
    p.add_argument("--teacher", default=None,
                   help="a BERT model: local folder or hub name (online); default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--student-layers", type=_layers, default=None,
                   help="a count (3) or the teacher's encoder layers to copy, counted from 0 (0,2,4); "
                        "default: every other teacher layer")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature of the KD term (default 2)")
    p.add_argument("--alpha", type=float, default=None, help="weight of the KD term, in [0, 1] (default 0.5)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the preset's)")
    p.add_argument("--lr", type=float, default=None,
                   help="the students' learning rate (AdamW, linear warm-up and decay; default: the preset's, "
                        "2e-4 for default)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 32)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sentence after truncation (default 64)")
    p.add_argument("--seed", type=int, default=None, help="the student's seed: new weights, dropout, shuffling")
    p.add_argument("--teacher-seed", type=int, default=None,
                   help="seed of the teacher's fine-tuning and of the training subset (default 0)")
    p.add_argument("--output-dir", default="runs/distill",
                   help="where results go; re-running resumes (default %(default)s)")
    p.add_argument("--device", default=None,
                   help="cpu (default), cuda, cuda:N or mps; under torchrun: cpu or cuda (one GPU per process)")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="train the students with the course's loop (default) or the transformers Trainer")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (CUDA GPUs, A100/H100 class)")
    precision.add_argument("--fp16", action="store_true", help="float16 mixed precision with loss scaling (CUDA GPUs)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per optimizer step (default 1); --batch-size counts the whole step")
    p.add_argument("--no-fused-adamw", action="store_true",
                   help="update the students' parameters one tensor at a time (PyTorch's default AdamW) instead "
                        "of in one fused kernel: the same update up to rounding, slower on a CPU")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="also checkpoint every N optimizer steps (default: every epoch only)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last checkpoint (fails if there is none)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --output-dir")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--export", action="store_true",
                   help="also export the student to ONNX Runtime int8 (OUTPUT_DIR/onnx-int8, checked against "
                        "PyTorch) and report its accuracy, size and speed")


def _add_distill_lm_arguments(p: argparse.ArgumentParser) -> None:
    from kd_lib.llm_pipeline import IMPORTANCE, LM_PRESETS
    from kd_lib.llm_topk import MODES

    p.add_argument("--preset", choices=list(LM_PRESETS), default="default",
                   help="fast (tests, ~1 min), default (meaningful, ~20 min on a 2-core CPU), full (a GPU)")
    p.add_argument("--teacher", default=None,
                   help="a decoder LM: local folder or hub name (online, e.g. HuggingFaceTB/SmolLM2-360M-Instruct); "
                        "default: the packaged SmolLM2-135M-Instruct (Q4_1, de-quantised)")
    p.add_argument("--keep-layers", type=_layers, default=None,
                   help="a count (10) or the teacher's layers to keep, from 0 (0,3,6,29); default: the preset's")
    p.add_argument("--importance", choices=list(IMPORTANCE), default=None,
                   help="how a count of layers is chosen (default drop_loss: the loss rise when a layer is skipped)")
    p.add_argument("--topk", type=int, default=None,
                   help="teacher log-probabilities cached per token (default 64); 0: the live teacher, all tokens")
    p.add_argument("--mode", choices=list(MODES), default=None,
                   help="the probability the top-k leave out: a residual bucket (default) or renormalize")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature of the KD term (default 1)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the KD term in [0, 1] (default 0.5, with cross-entropy; 1: soft targets only; "
                        "0: cross-entropy only)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="blocks per step (default 4)")
    p.add_argument("--block-size", type=int, default=None, help="tokens per block (default 128)")
    p.add_argument("--lr", type=float, default=None, help="the student's learning rate (default 5e-4)")
    p.add_argument("--seed", type=int, default=None, help="the order of the training blocks (default 0)")
    p.add_argument("--output-dir", default="runs/distill-lm",
                   help="where results go; re-running resumes (default %(default)s)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps; under torchrun: cpu or cuda")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (CUDA GPUs, A100/H100 class)")
    precision.add_argument("--fp16", action="store_true", help="float16 mixed precision with loss scaling (CUDA GPUs)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per optimizer step (default 1); --batch-size counts the whole step")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="checkpoint the student every N optimizer steps (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last checkpoint (fails if there is none)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --output-dir")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder of `python -m kd_lib distill` (e.g. runs/distill: its student) or a "
                                  "model folder written by save_pretrained")
    p.add_argument("--int8", action="store_true", help="quantize the weights to int8 with ONNX Runtime")
    p.add_argument("--teacher", action="store_true", help="export the run's teacher instead of its student")
    p.add_argument("--output-dir", default=None,
                   help="where the ONNX folder goes (default: RUN/onnx, RUN/onnx-int8, ...; FOLDER-onnx beside a "
                        "model folder)")
    p.add_argument("--task", default=None,
                   help="the task whose validation split checks the export (default: the run's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder: PyTorch (e.g. runs/distill/student) or ONNX (runs/distill/onnx-int8)")
    p.add_argument("sentences", nargs="*", help="sentences to label (none: read --file, or stdin, one per line)")
    p.add_argument("--file", default=None, help="a text file with one sentence per line ('-': stdin)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default %(default)s)")
    p.add_argument("--max-length", type=int, default=128,
                   help="tokens per sentence after truncation (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd_lib", description="Knowledge-distillation course tools.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (or set KD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", parents=[common], help="check Python, packages, the packaged teacher and the data files")
    _add_distill_arguments(sub.add_parser("distill", parents=[common],
                                          help="fine-tune a teacher and distil a DistilBERT student"))
    _add_distill_lm_arguments(sub.add_parser("distill-lm", parents=[common],
                                             help="prune a pretrained LLM (SmolLM2) and heal it by distillation"))
    _add_export_arguments(sub.add_parser("export", parents=[common],
                                         help="export a student (or teacher) to ONNX Runtime, fp32 or int8, checked"))
    _add_predict_arguments(sub.add_parser("predict", parents=[common],
                                          help="label sentences with a PyTorch or ONNX model folder"))
    return parser


# Errors that mean "the input or the environment is wrong": their message names the fix.
EXPECTED = (ValueError, OSError, FloatingPointError)


def issues_url() -> str:
    """Where to report a bug: the ``Issues`` URL of the installed package's metadata (pyproject.toml).
    Course infrastructure (the command line), not taught in a notebook."""
    from importlib import metadata

    try:
        urls = metadata.metadata("kd-course").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    found = [u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("issues,")]
    return found[0] if found else "the course's issue tracker"


def report_error(exc: BaseException, debug: bool) -> int:
    """Print one ``error:`` line for ``exc`` (the traceback too with ``debug``); return the exit code:
    2 for an expected error (bad input, a damaged or missing file), 1 for an unexpected one (a bug).

    Taught in notebook 11, section 3 (On GPUs: the commands).
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(str(exc).split())  # one line, whatever the exception's text
    if isinstance(exc, EXPECTED):
        print(f"error: {message}", file=sys.stderr)
        return 2
    hint = "" if debug else "; re-run with --debug for the traceback, and"
    print(f"error: unexpected {type(exc).__name__}: {message} -- this is probably a bug in kd-course{hint} "
          f"please report it with the command you ran at {issues_url()}", file=sys.stderr)
    return 1


def _run_job(args: argparse.Namespace, make_config, run, summary) -> int:
    """Build the config, run the job (quietly), and let rank 0 print ``summary(results)``; Ctrl-C says how to resume."""
    from kd_lib.distributed import launched
    from kd_lib.utils import quiet_hf

    rank = launched().rank  # under torchrun: only rank 0 reports
    try:
        config = make_config(precision="bf16" if args.bf16 else "fp16" if args.fp16 else None)
        with quiet_hf():
            results = run(config, args.output_dir, overwrite=args.overwrite, resume=args.resume,
                          checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"\ninterrupted: re-run the same command (or add --resume) to continue from the last checkpoint "
                  f"(results so far are in {args.output_dir})", file=sys.stderr)
        return 130
    if rank == 0:
        print()
        print(summary(results))
    return 0


def _distill(args: argparse.Namespace) -> int:
    from kd_lib.pipeline import config_from_preset, results_table, run

    def make_config(precision):
        return config_from_preset(
            args.preset, task=args.task, teacher=args.teacher, student_layers=args.student_layers,
            temperature=args.temperature, alpha=args.alpha, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            max_length=args.max_length, seed=args.seed, teacher_seed=args.teacher_seed,
            device=args.device, backend=args.backend, grad_accum=args.grad_accum, precision=precision,
            fused_adamw=False if args.no_fused_adamw else None,
        )

    def summary(results: dict) -> str:
        text = (f"{results_table(results)}\n\nretention {results['retention']:.3f}, speed-up "
                f"{results['speedup']:.2f}×; results.json, report.md, results.png and student/ are in "
                f"{args.output_dir}")
        earlier = Path(args.output_dir) / "onnx-int8"
        if not args.export and earlier.is_dir():  # results.json was just rewritten without its entry
            text += (f"\nnote: {earlier} is left from an earlier --export and results.json no longer reports it: "
                     "add --export to export this run's student again, or delete the folder")
        if args.export:  # the shipped student: exported once the run is complete (rank 0)
            from kd_lib.export import export_run
            from kd_lib.utils import quiet_hf

            with quiet_hf():
                o = export_run(args.output_dir)
            text += (f"\nint8 ONNX student in {o['folder']}: {o['size_mb']:.1f} MB, accuracy {o['accuracy']:.4f} "
                     f"(PyTorch {o['pytorch_accuracy']:.4f}), {o['speedup']:.2f}× the teacher's throughput at batch 64 "
                     f"and {o['latency_speedup']:.2f}× at batch 1 (timed beside it)")
        return text

    return _run_job(args, make_config, run, summary)


def _distill_lm(args: argparse.Namespace) -> int:
    from kd_lib.llm_pipeline import lm_config_from_preset, lm_results_table, run_lm

    def make_config(precision):
        return lm_config_from_preset(
            args.preset, teacher=args.teacher, keep_layers=args.keep_layers, importance=args.importance,
            topk=args.topk, mode=args.mode, temperature=args.temperature, alpha=args.alpha, steps=args.steps,
            batch_size=args.batch_size, block_size=args.block_size, lr=args.lr, seed=args.seed, device=args.device,
            grad_accum=args.grad_accum, precision=precision,
        )

    return _run_job(args, make_config, run_lm, lambda results: (
        f"{lm_results_table(results)}\n\nheld-out perplexity {results['perplexity_ratio']:.2f}x the teacher's at "
        f"{results['speedup']:.2f}x its tokens/s; results.json, report.md, results.png, samples.md and student/ are "
        f"in {args.output_dir}"))


def _check(args: argparse.Namespace) -> int:
    from kd_lib.check import main as check

    return check()


def _export(args: argparse.Namespace) -> int:
    from kd_lib.export import export_classifier
    from kd_lib.utils import quiet_hf

    with quiet_hf():
        record = export_classifier(args.source, args.output_dir, int8=args.int8,
                                   which="teacher" if args.teacher else "student", task=args.task,
                                   overwrite=args.overwrite)
    check = record["check"]
    print(f"{'int8' if record['int8'] else 'fp32'} ONNX model: {record['output_dir']} ({record['size_mb']:.1f} MB; "
          f"PyTorch {record['pytorch_size_mb']:.1f} MB)")
    print(f"checked on {check['examples']} {record['task']} {record['split']} sentences: accuracy "
          f"{check['onnx_accuracy']:.4f} (PyTorch {check['pytorch_accuracy']:.4f}), same prediction "
          f"{check['same_prediction']:.2%}, largest logit difference {check['max_abs_logit_diff']:.1e}")
    return 0


def _read_sentences(args: argparse.Namespace) -> list[str]:
    if args.sentences and args.file:
        raise ValueError("give sentences as arguments or --file, not both")
    if args.sentences:
        return list(args.sentences)
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            raise ValueError(f"--file {args.file}: no such file") from None
    if args.file is None and sys.stdin.isatty():
        raise ValueError("no sentences: give them as arguments, with --file, or one per line on stdin")
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def _predict(args: argparse.Namespace) -> int:
    import json

    from kd_lib.export import load_classifier, predict_texts

    texts = _read_sentences(args)
    model, tokenizer, _kind = load_classifier(args.model)
    for p in predict_texts(model, tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length):
        if args.json:
            print(json.dumps({"label": p.label, "probability": round(p.probability, 4), "text": p.text}))
        else:
            print(f"{p.label}\t{p.probability:.3f}\t{p.text}")
    return 0


COMMANDS = {"check": _check, "distill": _distill, "distill-lm": _distill_lm, "export": _export, "predict": _predict}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kd_lib``; returns the process exit code.

    Every failure ends in one ``error:`` line naming what failed and the fix, and a non-zero exit code;
    ``--debug`` (or ``KD_DEBUG=1``) also shows the traceback.

    Taught in notebook 11, section 3 (On GPUs: the commands).
    """
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("KD_DEBUG", "").strip() not in {"", "0"}
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:  # the top of the program: every error becomes one line and an exit code
        return report_error(exc, debug)


def check_main() -> int:
    """Entry point of the ``kd-check`` console script. Taught in notebook 11, section 3 (On GPUs: the commands)."""
    return main(["check", *sys.argv[1:]])


def distill_main() -> int:
    """Entry point of the ``kd-distill`` console script. Taught in notebook 11, section 3 (On GPUs: the commands)."""
    return main(["distill", *sys.argv[1:]])


def distill_lm_main() -> int:
    """Entry point of the ``kd-distill-lm`` console script.

    Course infrastructure (Part IV, distilling a pretrained language model), not taught in a notebook.
    """
    return main(["distill-lm", *sys.argv[1:]])
