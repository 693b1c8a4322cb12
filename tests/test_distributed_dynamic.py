"""dynamic.train under torchrun: 2 gloo processes on loopback against one process.

Each test launches `python -m torch.distributed.run --nproc_per_node=2` on the synthetic dry-run
data (256 train / 256 test images), so the whole module takes ~30 s on 2 cores.
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

from dynamic import train as T
from treelstm.runtime.faults import FAIL_ENV

pytestmark = pytest.mark.slow  # each torchrun launch costs ~5 s on 2 cores

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/treelstm-test-data"  # never exists: forces the synthetic stand-in
SCRIPT = str(REPO / "examples" / "mnist_dynamic.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], fail_at: str | None = None, timeout: float = 120):
    """Run the example on 2 processes; -> (CompletedProcess, seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(FAIL_ENV, None)
    if fail_at:
        env[FAIL_ENV] = fail_at
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", SCRIPT, *args,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def dry(out: Path, *extra: str) -> list[str]:
    return ["--dry-run", "--data-dir", MISSING, "--out", str(out), "--no-progress", *extra]


def one_process(out: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return T.run(T.parse_config(dry(out, *extra)))
    finally:
        torch.set_num_threads(threads)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / T.CHECKPOINT, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def two_depth(tmp_path_factory) -> Path:
    """One epoch of the random-depth net (per-batch draws, so some steps skip the shared
    layer) on 2 processes x 32 = global batch 64."""
    out = tmp_path_factory.mktemp("two_depth")
    proc, _ = torchrun(dry(out, "--epochs", "1", "--batch-size", "64", "--dist-timeout", "60"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_two_processes_end_with_the_weights_and_metrics_of_one(two_depth, tmp_path):
    one = one_process(tmp_path, "--epochs", "1", "--batch-size", "64")
    assert_same_weights(two_depth, tmp_path)
    ckpt = torch.load(two_depth / T.CHECKPOINT, weights_only=True)
    two_m, one_m = ckpt["history"][-1], one["final"]
    assert two_m["test_correct"] == one_m["test_correct"]  # all-reduced over both ranks
    assert two_m["test_total"] == one_m["test_total"] == 256
    assert two_m["per_choice_accuracy"] == one_m["per_choice_accuracy"]
    assert two_m["train_loss"] == pytest.approx(one_m["train_loss"], abs=1e-5)
    assert two_m["test_loss"] == pytest.approx(one_m["test_loss"], abs=1e-5)


def test_only_rank_0_prints_and_writes(two_depth):
    stdout = (two_depth / "stdout.txt").read_text()
    assert stdout.count("Test set:") == 1 and stdout.count("net=depth") == 1
    assert "ranks=2 (batch 32 each)" in stdout
    written = sorted(p.name for p in two_depth.iterdir() if not p.name.startswith("."))
    assert written == sorted([T.CHECKPOINT, T.CURVES, T.METRICS, "run.json", "stdout.txt"])


def test_a_two_process_checkpoint_resumes_in_one_process(two_depth, tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(two_depth, resumed)  # a run moves with its folder (run.json names it)
    one_process(resumed, "--epochs", "2", "--batch-size", "64", "--resume")
    one_process(straight, "--epochs", "2", "--batch-size", "64")
    assert_same_weights(resumed, straight)


def test_per_sample_draws_and_a_short_uneven_last_batch_match_one_process(tmp_path):
    """197 images in batches of 64: the last global batch of 5 splits 3 + 2, and the branch
    drawn per sample is sliced from one draw for the whole batch."""
    args = ("--net", "branch", "--per-sample", "--epochs", "1", "--batch-size", "64",
            "--train-size", "197", "--test-size", "250", "--test-batch-size", "100")  # fmt: skip
    proc, _ = torchrun(dry(tmp_path / "two", *args, "--dist-timeout", "60"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = one_process(tmp_path / "one", *args)
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    two_m = torch.load(tmp_path / "two" / T.CHECKPOINT, weights_only=True)["history"][-1]
    assert two_m["test_correct"] == one["final"]["test_correct"]
    assert two_m["train_loss"] == pytest.approx(one["final"]["train_loss"], abs=1e-5)


def test_a_rank_that_raises_stops_the_whole_run(tmp_path):
    proc, seconds = torchrun(dry(tmp_path, "--dist-timeout", "30"), fail_at="1:1", timeout=90)
    assert proc.returncode != 0
    assert seconds < 60
    assert "rank 1 of 2 failed: RuntimeError: rank 1: failing at step 1" in proc.stderr
    assert not (tmp_path / T.CHECKPOINT).exists()  # it failed in the first epoch


def test_a_stalled_rank_makes_its_peer_time_out(tmp_path):
    """Rank 1 stops answering; rank 0's gradient all-reduce gives up after --dist-timeout."""
    proc, seconds = torchrun(dry(tmp_path, "--dist-timeout", "5"), fail_at="1:1:hang", timeout=90)
    assert proc.returncode != 0
    assert seconds < 60
    assert "rank 0 of 2 failed" in proc.stderr
