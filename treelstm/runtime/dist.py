"""Multi-process training on torch.distributed, as launched by ``torchrun``.

Distributed mode is read from torchrun's environment (WORLD_SIZE > 1, RANK, LOCAL_RANK,
MASTER_ADDR/PORT); without it everything here does nothing and a run is single-process. Backend
nccl on CUDA, gloo on CPU. The ``timeout`` turns a collective that waits on a dead or stalled
peer into an error instead of a hang; torchrun then stops the other ranks.

Same global batch: every rank draws the same epoch order (and the same random draws) from its
own copy of the run's seeded generator, then takes its contiguous share of each global batch
(`shard`). Each rank weights its loss by its share of the batch, so N processes reproduce one
process exactly (DDP averages gradients), a short or uneven last batch included.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "SINGLE",
    "Dist",
    "all_sum",
    "barrier",
    "broadcast_object",
    "close",
    "exit_process",
    "from_env",
    "gather",
    "init",
    "report_failure",
    "shard",
    "wrap",
]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank 0..world-1; local_rank picks its GPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only rank 0 prints, shows progress and writes files."""
        return self.rank == 0


SINGLE = Dist()  # one process, no torch.distributed


def from_env() -> Dist:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK (world 1 when they are absent)."""
    env = os.environ
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    return Dist(rank, world, int(env.get("LOCAL_RANK", 0)))


def init(d: Dist, device: torch.device, timeout_s: float) -> None:
    """init_process_group: nccl for a CUDA device, else gloo; nothing for one process."""
    if not d.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def wrap(model: nn.Module, d: Dist, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel for a torchrun job (rank 0's weights broadcast,
    gradients averaged), else ``model`` itself. Checkpoints hold the unwrapped model, so they
    load under any number of processes. ``find_unused``: a pass may skip parameters."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused
    )


def close() -> None:
    """After a successful run: wait for every rank (rank 0 may still be writing files), then
    tear down. A rank leaving first can abort its peer inside gloo ("terminate called ...")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def report_failure(d: Dist, error: BaseException) -> None:
    """Say on stderr which rank failed (torchrun then stops the others); nothing for one
    process, a clean exit or an interrupt."""
    if not d.enabled or isinstance(error, KeyboardInterrupt):
        return
    if isinstance(error, SystemExit) and error.code in (0, None):
        return
    print(f"rank {d.rank} of {d.world} failed: {type(error).__name__}: {error}", file=sys.stderr)


def exit_process(code: int = 0) -> NoReturn:
    """The last statement of a training script's ``__main__`` block: ``sys.exit(code)`` in a
    single process; in a torchrun worker, flush stdout/stderr and ``os._exit(code)``, skipping
    the interpreter's teardown.

    Why: in torch 2.14 a DistributedDataParallel model keeps the gloo process group alive after
    ``destroy_process_group`` (its worker threads are never joined). When such a thread frees a
    finished collective that holds a Python-owned tensor while the interpreter is finalizing,
    it needs the GIL, is terminated instead, and the C++ runtime aborts the process
    ("terminate called without an active exception", SIGABRT) -- torchrun then reports a run
    that finished and wrote everything as failed. Seen in 3 of 40 two-process MNIST dry runs
    with both cores busy (none on an idle machine).
    Nothing is lost by skipping the teardown: by then `close` has synchronised the ranks and
    every file was written atomically and closed.
    """
    if not from_env().enabled:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def shard(batch, d: Dist):
    """This rank's contiguous share of a global batch (a tensor's rows or a list); shares differ
    in size by at most one, so any batch size splits. Anything without a length (an int draw,
    None) passes through."""
    if not d.enabled or not hasattr(batch, "__len__"):
        return batch
    n = len(batch)
    return batch[n * d.rank // d.world : n * (d.rank + 1) // d.world]


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """``values`` summed over the ranks (float64; one collective for the whole list)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj, d: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not d.enabled:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
