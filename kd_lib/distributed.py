"""Multi-process runs: which process this is, how many there are, and how they wait for each other.

Decided once, here, and passed on: :func:`current` reads the process group (or ``$WORLD_SIZE`` /
``$RANK`` before it exists, :func:`launched`), and the training loop, the Trainer and the main job
take the resulting :class:`Processes` instead of asking ``torch.distributed`` themselves. In a
single process every helper is the identity (no barrier, no broadcast), so the same code runs
unchanged with and without ``torchrun``.

Taught in notebook 11 (Scaling up), section 2 (Many processes: data parallelism).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "SINGLE",
    "Processes",
    "all_gather",
    "barrier",
    "current",
    "from_rank0",
    "launched",
    "rank0_first",
    "start",
    "sum_over_processes",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among ``world`` data-parallel processes (``Processes()``: one process).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"need world >= 1 and 0 <= rank < world; got rank {self.rank}, world {self.world}")

    @property
    def main(self) -> bool:
        """True in the process that evaluates, logs and writes (rank 0)."""
        return self.rank == 0


SINGLE = Processes()


def launched() -> Processes:
    """The processes ``torchrun`` / ``accelerate launch`` started, from ``$RANK`` and ``$WORLD_SIZE``
    (``Processes()`` when run directly); readable before the process group exists.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    return Processes(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def current() -> Processes:
    """This process's place in the initialised process group; ``Processes()`` without one.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size())
    return SINGLE


def start(device: str) -> tuple[str, bool]:
    """This process's device, and whether the process group was initialised by this call.

    Under ``torchrun``/``accelerate launch`` (``$WORLD_SIZE`` > 1) each process takes the GPU
    ``cuda:$LOCAL_RANK`` (or stays on the CPU) and joins the process group: NCCL on GPUs, gloo on
    CPUs. The timeout is long because the other processes wait while rank 0 fine-tunes the teacher.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if launched().world == 1:
        return device, False
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible: start at "
                             "most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=3))
    return device, True


def barrier() -> None:
    """Wait until every process arrives here (nothing to wait for in one process).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if current().world > 1:
        dist.barrier()


def from_rank0(obj: T) -> T:
    """``obj`` as rank 0 has it, in every process (the identity in a single process).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if current().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: T, processes: Processes) -> list[T]:
    """Every process's ``obj``, in rank order (``[obj]`` for a single process).

    ``processes`` says who takes part: a process of a larger group that trains alone (rank 0
    fine-tuning the teacher while the others wait) passes ``SINGLE`` and nothing is exchanged.

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if processes.world == 1:
        return [obj]
    out: list = [None] * processes.world
    dist.all_gather_object(out, obj)
    return out


def sum_over_processes(values: list[float], processes: Processes, device: str | torch.device = "cpu") -> list[float]:
    """The element-wise sum of ``values`` over ``processes``, in float64 (``values`` for a single process).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if processes.world == 1:
        return list(values)
    sums = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def rank0_first(make: Callable[[], T]) -> T:
    """``make()`` in rank 0 first (it may fine-tune and cache), then in the others (they find the cache).

    Taught in notebook 11, section 2 (Many processes: data parallelism).
    """
    if current().main:
        out = make()
        barrier()
        return out
    barrier()
    return make()
