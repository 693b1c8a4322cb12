"""torchrun helpers (treelstm.runtime.dist) that need no second process: sharding and how a
worker exits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from treelstm.runtime import dist
from treelstm.runtime.dist import Dist

REPO = Path(__file__).resolve().parents[1]

EXIT_SCRIPT = """
import atexit, sys
from treelstm.runtime import dist
atexit.register(lambda: print("teardown ran", flush=True))
print("written before exit", end="")   # no newline, no flush: must still come out
sys.stderr.write("to stderr")
dist.exit_process(3)
print("never reached")
"""


def run_exit_script(world: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if world is not None:
        env.update(WORLD_SIZE=world, RANK="1", LOCAL_RANK="1")
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_a_torchrun_worker_exits_with_its_code_flushed_and_without_teardown():
    """Under WORLD_SIZE > 1, exit_process flushes buffered output and skips atexit/finalization
    (where gloo's leftover threads can abort the process) but keeps the exit code."""
    proc = run_exit_script("2")
    assert proc.returncode == 3
    assert proc.stdout == "written before exit"
    assert proc.stderr == "to stderr"


def test_a_single_process_exits_normally():
    """Without torchrun's environment, exit_process is sys.exit: the teardown runs."""
    proc = run_exit_script(None)
    assert proc.returncode == 3
    assert proc.stdout == "written before exitteardown ran\n"


@pytest.mark.parametrize("n", [0, 1, 5, 64, 65])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one(n, world):
    """Concatenating every rank's share gives back the global batch; sizes differ by <= 1."""
    batch = list(range(n))
    shares = [dist.shard(batch, Dist(rank, world)) for rank in range(world)]
    assert sum(shares, []) == batch
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
