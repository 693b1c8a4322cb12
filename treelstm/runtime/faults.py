"""Fault injection for the tests: die at a chosen point of a run, or fail one torchrun rank.

A run passes named points: ``step`` after each optimiser step, ``saved`` after each checkpoint,
``write:NAME`` three times inside every atomic write of the file NAME (after half the bytes,
before the rename, after it). `arm` (or ``$TREELSTM_KILL_AT=N`` / ``N:PREFIX``) makes the
process SIGKILL itself at the N-th point whose name starts with PREFIX: a real kill, no
``finally`` runs, as when the machine or the scheduler kills a job. Disarmed (the default), a
point costs one comparison.
"""

from __future__ import annotations

import os
import random
import signal
import time

__all__ = ["FAIL_ENV", "KILL_ENV", "arm", "count", "point", "rank_fault"]

KILL_ENV = "TREELSTM_KILL_AT"  # "N" or "N:PREFIX": SIGKILL at that point (tests)
FAIL_ENV = "TREELSTM_FAIL_AT"  # "RANK:STEP" or "RANK:STEP:hang" (torchrun tests)

_state = {"at": None, "prefix": "", "seen": 0, "env_read": False, "p": 0.0, "rng": None}


def arm(at: int | None, prefix: str = "", probability: float = 0.0, seed: int = 0) -> None:
    """Kill this process at the ``at``-th point (1-based) whose name starts with ``prefix``,
    or at each such point with ``probability`` (drawn from a generator seeded with ``seed``);
    ``at=0`` only counts the points (see `count`), ``None`` disarms."""
    _state.update(at=at, prefix=prefix, seen=0, env_read=True, p=probability,
                  rng=random.Random(seed))  # fmt: skip


def count() -> int:
    """Points passed since `arm` (those matching its prefix)."""
    return _state["seen"]


def _from_env() -> None:
    _state["env_read"] = True
    raw = os.environ.get(KILL_ENV)
    if raw:
        at, _, prefix = raw.partition(":")
        _state.update(at=int(at), prefix=prefix)


def point(name: str) -> None:
    """A place where a run may be killed (see the module docstring)."""
    if not _state["env_read"]:
        _from_env()
    if (_state["at"] is None and not _state["p"]) or not name.startswith(_state["prefix"]):
        return
    _state["seen"] += 1
    if _state["seen"] == _state["at"] or (_state["p"] and _state["rng"].random() < _state["p"]):
        os.kill(os.getpid(), signal.SIGKILL)


def rank_fault(rank: int, world: int, step: int) -> None:
    """Tests only: ``$TREELSTM_FAIL_AT = "RANK:STEP"`` makes that rank of a torchrun job raise
    at that global step; ``"RANK:STEP:hang"`` makes it stall (its peers then time out)."""
    if world <= 1:
        return
    rank_s, at, *how = (os.environ.get(FAIL_ENV) or "-1:-1").split(":")
    if (int(rank_s), int(at)) != (rank, step):
        return
    if how == ["hang"]:
        time.sleep(3600)
    raise RuntimeError(f"rank {rank}: failing at step {step} as ${FAIL_ENV} asked")
