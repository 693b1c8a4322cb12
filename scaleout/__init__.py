"""Multi-process training on torch.distributed, as launched by `torchrun` — the few pieces the
`treelstm` and `dynamic` training scripts share (a package of its own, so that those two never
import each other), among them the atomic file write their rank 0 saves everything with.

Distributed mode is read from torchrun's environment (WORLD_SIZE > 1, RANK, LOCAL_RANK,
MASTER_ADDR/PORT); without it everything here does nothing and a run is single-process. Backend
nccl on CUDA, gloo on CPU. The `timeout` turns a collective that waits on a dead or stalled peer
into an error instead of a hang; torchrun then stops the other ranks.

Same global batch: every rank draws the same epoch order (and the same random draws) from its
own copy of the run's seeded generator, then takes its contiguous share of each global batch
(`shard`). Each rank weights its loss by its share of the batch, so N processes reproduce one
process exactly (DDP averages gradients), a short or uneven last batch included.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, NoReturn

import torch
import torch.distributed as dist

__all__ = ["FAIL_ENV", "SINGLE", "Dist", "all_sum", "atomic_write", "barrier", "close",
           "exit_process", "from_env", "gather", "init", "maybe_fail", "shard"]  # fmt: skip

FAIL_ENV = "SCALEOUT_FAIL_AT"  # tests of teardown: see maybe_fail


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


def close() -> None:
    """After a successful run: wait for every rank (rank 0 may still be writing files), then
    tear down. A rank leaving first can abort its peer inside gloo ("terminate called ...")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """The last statement of a training script's `__main__` block: `sys.exit(code)` in a single
    process; in a torchrun worker, flush stdout/stderr and `os._exit(code)`, skipping the
    interpreter's teardown.

    Why: in torch 2.14 a DistributedDataParallel model keeps the gloo process group alive after
    `destroy_process_group` (its worker threads are never joined). When such a thread frees a
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
    """`values` summed over the ranks (float64; one collective for the whole list)."""
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


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """`write(f)` into a temporary file beside `path`, fsync, then rename it over `path`: a
    reader, or a job that torchrun kills mid-write, sees the old file or the new one, never
    half of one. Creates the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def maybe_fail(d: Dist, step: int) -> None:
    """Tests only: $SCALEOUT_FAIL_AT = "RANK:STEP" makes that rank raise at that global step;
    "RANK:STEP:hang" makes it stall instead (its peers then fail after the timeout)."""
    rank, at, *how = (os.environ.get(FAIL_ENV) or "-1:-1").split(":")
    if not (d.enabled and (int(rank), int(at)) == (d.rank, step)):
        return
    if how == ["hang"]:
        time.sleep(3600)
    raise RuntimeError(f"rank {d.rank}: failing at step {step} as ${FAIL_ENV} asked")
