"""What every resumable job of the course shares: its ``state.json``, its output folder, its run options.

A job (``python -m kd_lib distill`` or ``distill-lm``) is a sequence of stages. Each
finished stage is recorded in ``output_dir/state.json`` together with the job's settings, written
atomically by rank 0; a re-run with the same settings skips the finished stages, and a re-run with
other settings is refused rather than mixing two runs' results.

Used by both main jobs, :mod:`kd_lib.pipeline` (``distill``) and :mod:`kd_lib.llm_pipeline`.

Course infrastructure (the main jobs), not taught in a notebook.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from kd_lib import distributed
from kd_lib.distributed import Processes
from kd_lib.utils import atomic_write_bytes

__all__ = ["RunState", "check_run_options", "prepare_output"]


class RunState:
    """``state.json``: the settings and the finished stages of a run in ``output_dir``.

    Args:
        output_dir: the run's folder.
        config: the run's settings as JSON-able values.
        defaults: the default settings; a saved run lacking a setting added since it began is read
            as having its default.
        overwrite: ignore (and later replace) a saved state.
        write: whether this process writes the file (rank 0 only).

    Raises:
        ValueError: the folder holds a run with other settings (names them), or a damaged state file.

    Course infrastructure (the main jobs), not taught in a notebook.
    """

    def __init__(self, output_dir: Path, config: dict, defaults: dict, overwrite: bool, write: bool = True) -> None:
        self.path, self.write = Path(output_dir) / "state.json", write
        self.config = json.loads(json.dumps(config))
        self.stages: dict[str, dict] = {}
        if self.path.is_file() and not overwrite:
            saved = self._read()
            defaults = json.loads(json.dumps(defaults))
            old = {k: saved["config"].get(k, defaults.get(k)) for k in self.config}
            diff = sorted(k for k in self.config if old[k] != self.config[k])
            if diff:
                raise ValueError(f"{output_dir} holds a run with other settings ({', '.join(diff)} differ): use "
                                 "another --output-dir, or --overwrite to start afresh there")
            self.stages = saved["stages"]

    def _read(self) -> dict:
        try:
            saved = json.loads(self.path.read_text())
            if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)
                    and isinstance(saved.get("stages"), dict)):
                raise ValueError("it lacks the 'config' and 'stages' of a run")
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"{self.path} is damaged ({exc}): it records which stages of the run finished, so the run "
                "cannot continue from it. Start it afresh with --overwrite, or use another --output-dir"
            ) from None
        return saved

    def done(self, stage: str) -> dict | None:
        """The result recorded for ``stage``, or ``None`` while it has not finished."""
        return self.stages.get(stage)

    def finish(self, stage: str, result: dict) -> dict:
        """Record ``stage`` as finished with ``result`` (JSON-able), atomically; return ``result``."""
        self.stages[stage] = result
        if self.write:
            atomic_write_bytes(self.path, json.dumps({"config": self.config, "stages": self.stages}, indent=1).encode())
        return result


def prepare_output(output_dir: Path, outputs: Iterable[str], overwrite: bool, processes: Processes) -> None:
    """Rank 0 creates ``output_dir/checkpoints``; with ``overwrite`` it first removes ``outputs`` (names in
    ``output_dir``, results first and ``state.json`` last, so an interrupted ``--overwrite`` never leaves old
    results beside a new run). Every process waits for it.

    Course infrastructure (the main jobs), not taught in a notebook.
    """
    if processes.main:
        if overwrite:
            for name in outputs:
                path = Path(output_dir) / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        (Path(output_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
    distributed.barrier()


def check_run_options(output_dir: Path, overwrite: bool, resume: bool, checkpoint_every) -> None:
    """``--resume``, ``--overwrite`` and ``--checkpoint-every`` checked together; ``ValueError`` names the fix.

    Course infrastructure (the main jobs), not taught in a notebook.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in "
                         f"{output_dir}, --overwrite discards it; pass one of them")
    if resume and not (Path(output_dir) / "state.json").is_file():
        raise ValueError(f"--resume: {output_dir} holds no run to resume (no state.json); drop --resume to start one")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"--checkpoint-every must be a positive integer (optimizer steps); got {checkpoint_every!r}")
