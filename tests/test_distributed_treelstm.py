"""treelstm.train under torchrun: 2 gloo processes on loopback against one process.

Generated SST trees (--dry-run), dropout off: each rank would draw its own dropout masks, so
with dropout the runs agree in distribution only. 35 trees in global batches of 10 make a last
batch of 5, shared 3 + 2 between the ranks.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from treelstm import train as T
from treelstm.runtime.faults import FAIL_ENV

pytestmark = pytest.mark.slow  # each torchrun launch costs ~5 s on 2 cores

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--dry-run", "--no-progress", "--dropout", "0", "--batch-size", "9", "--subset", "35"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], fail_at: str | None = None, timeout: float = 120):
    """`python -m treelstm.train sst ARGS` on 2 processes; -> (CompletedProcess, seconds)."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", FAIL_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fail_at:
        env[FAIL_ENV] = fail_at
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "treelstm.train", "sst", *args,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def one_process(out: Path, *extra: str) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return T.main(["sst", *ARGS, "--out", str(out), *extra])
    finally:
        torch.set_num_threads(threads)


def assert_same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, weights_only=True)["model"]
    wb = torch.load(b, weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def two_sst(tmp_path_factory) -> Path:
    """One epoch of the N-ary Tree-LSTM (SGD-tuned embeddings); global batches of 9 split 4 + 5."""
    out = tmp_path_factory.mktemp("two_sst")
    proc, _ = torchrun([*ARGS, "--epochs", "1", "--out", str(out), "--dist-timeout", "60"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_two_processes_end_with_the_weights_and_metrics_of_one(two_sst, tmp_path):
    assert one_process(tmp_path, "--epochs", "1") == 0
    assert_same_weights(two_sst / "last.pt", tmp_path / "last.pt")
    two = torch.load(two_sst / "last.pt", weights_only=True)["history"][-1]
    one = torch.load(tmp_path / "last.pt", weights_only=True)["history"][-1]
    assert two["dev"] == one["dev"]  # gathered from both ranks: the whole dev set
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)
    stdout = (two_sst / "stdout.txt").read_text()
    assert stdout.count("epoch 1/1:") == 1 and stdout.count("test (best dev epoch") == 1
    written = sorted(p.name for p in two_sst.iterdir() if not p.name.startswith("."))
    assert written == ["best.pt", "curves.png", "last.pt", "metrics.json", "run.json", "stdout.txt"]


def test_a_two_process_checkpoint_resumes_in_one_process(two_sst, tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(two_sst, resumed)  # a run moves with its folder (run.json names it)
    assert one_process(resumed, "--epochs", "2", "--resume") == 0
    assert one_process(straight, "--epochs", "2") == 0
    assert_same_weights(resumed / "last.pt", straight / "last.pt")


def test_a_rank_that_raises_stops_the_whole_run(tmp_path):
    proc, seconds = torchrun(
        [*ARGS, "--out", str(tmp_path), "--dist-timeout", "30"], fail_at="1:1", timeout=90
    )
    assert proc.returncode != 0
    assert seconds < 60
    assert "rank 1 of 2 failed: RuntimeError: rank 1: failing at step 1" in proc.stderr
    assert not (tmp_path / "last.pt").exists()
