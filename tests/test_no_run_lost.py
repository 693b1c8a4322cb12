"""Issue 11, case by case: no run is ever lost or mixed up, and every failure is one line.

Each test drives the command lines (`treelstm.train.main`, `dynamic.train.main`) and looks at
the files, as a user would, so that it also runs against the code before the fix (where each
of them failed: a replaced run, a traceback, a NaN checkpoint, exit 0 on a diverged run...).
`cli` accepts both generations of the command lines (int exit status, or SystemExit and a
returned dict) and turns an escaping exception into ``"traceback"``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynamic import train as dyn
from treelstm import data as ds
from treelstm import train as tr
from treelstm.formats import write_ptb

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
NO_DATA = "/nonexistent/treelstm-test-data"
SMALL = ["--threads", "1", "--no-progress"]


def cli(main, argv, capsys) -> tuple[int | str, str, str]:
    """(exit status or "traceback", stdout, stderr) of a command line run in-process."""
    try:
        result = main(argv)
        code = result if isinstance(result, int) else 0
        extra = ""
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        extra = "" if isinstance(e.code, int) or e.code is None else str(e.code) + "\n"
    except Exception as e:  # what a user sees as a traceback
        code, extra = "traceback", f"{type(e).__name__}: {e}\n"
    out = capsys.readouterr()
    return code, out.out, out.err + extra


def one_line_error(code, err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return code == 1 and len(lines) == 1 and lines[0].startswith("error: ")


def sst(out, *extra) -> list[str]:
    return ["sst", "--dry-run", "--out", str(out), *SMALL, *extra]


def sick(out, *extra) -> list[str]:
    return ["sick", "--dry-run", "--out", str(out), *SMALL, *extra]


def mnist(out, *extra) -> list[str]:
    return ["--dry-run", "--data-dir", NO_DATA, "--out", str(out), "--no-progress", *extra]


TRAINERS = {  # name -> (main, argv maker)
    "sst": (tr.main, sst),
    "sick": (tr.main, sick),
    "mnist": (dyn.main, mnist),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def finite_checkpoints(folder: Path) -> bool:
    """Every .pt file in the folder holds finite floats only."""

    def finite(obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        if isinstance(obj, dict):
            return all(finite(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return all(finite(v) for v in obj)
        return True

    return all(finite(torch.load(p, weights_only=True)) for p in folder.glob("*.pt"))


def write_sst(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(("train", "dev", "test")):
        write_ptb(folder / f"{split}.txt", ds.synthetic_sst(n, seed=k))
    return folder


def sst_files(folder: Path, *extra) -> list[str]:
    return ["sst", "--data-dir", str(folder), "--embeddings", "none", "--emb-dim", "8",
            "--hidden", "8", "--epochs", "1", *SMALL, *extra]  # fmt: skip


# ----------------------------------------------------------------------------- case 1


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_finished_run_is_never_replaced(trainer, tmp_path, capsys):
    """A finished run in --out, started again without --resume: refused, every byte kept."""
    main, args = TRAINERS[trainer]
    assert cli(main, args(tmp_path, "--epochs", "1"), capsys)[0] == 0
    before = snapshot(tmp_path)
    code, out, err = cli(main, args(tmp_path, "--epochs", "1", "--seed", "1"), capsys)
    assert one_line_error(code, err), (code, err)
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_overwrite_killed_after_an_epoch_leaves_one_run_only(tmp_path, capsys):
    """--overwrite, killed after its first epoch: no file of the old run is left beside the
    new one (metrics.json is deleted first), and reproduce does not count it as finished."""
    from treelstm.reproduce import _finished
    from treelstm.runtime import faults

    assert cli(tr.main, sst(tmp_path, "--seed", "0"), capsys)[0] == 0
    pid = os.fork()
    if pid == 0:  # the child: killed at its first checkpoint (after epoch 1's last.pt)
        faults.arm(1, "saved")
        os._exit(tr.main(sst(tmp_path, "--seed", "1", "--overwrite")))
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "last.pt", "run.json",
    ]  # fmt: skip
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    assert last["config"]["seed"] == 1 and last["run_id"] == run_id and last["epoch"] == 1
    assert _finished(tmp_path) is None


# ----------------------------------------------------------------------------- case 2


@pytest.mark.parametrize("trainer", ["sst", "mnist"])
def test_two_processes_cannot_share_a_run_folder(trainer, tmp_path, capsys):
    """While one run trains in --out, a second process on it (even with --resume) stops at
    once, naming the first one's pid; the first finishes undisturbed."""
    main, args = TRAINERS[trainer]
    slow = (
        ("--step-delay", "0.3")
        if trainer == "sst"
        else ("--train-size", "6000", "--batch-size", "2")
    )
    pid = os.fork()
    if pid == 0:
        code = main(args(tmp_path, "--epochs", "1", *slow))
        os._exit(code if isinstance(code, int) else 0)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        code, out, err = cli(main, args(tmp_path, "--epochs", "1", *slow, "--resume"), capsys)
        assert one_line_error(code, err), (code, err)
        assert f"is in use by another run (pid {pid})" in err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("hidden", ["16", "8"])
def test_a_best_pt_of_another_run_is_never_used(hidden, tmp_path, capsys):
    """Run B's best.pt copied into run A's folder (same shapes, or another size): A's resume
    refuses it in one line; A's results are not replaced by numbers from B's weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(tr.main, sst(a), capsys)[0] == 0
    assert cli(tr.main, sst(b, "--seed", "1", "--hidden", hidden), capsys)[0] == 0
    shutil.copy(b / "best.pt", a / "best.pt")
    metrics = (a / "metrics.json").read_bytes()
    code, out, err = cli(tr.main, sst(a, "--resume"), capsys)
    assert one_line_error(code, err), (code, err)
    assert "best.pt belongs to another run" in err
    assert (a / "metrics.json").read_bytes() == metrics


def test_a_deleted_best_pt_is_restored_and_the_best_epoch_tested(tmp_path, capsys):
    """best.pt deleted after a run whose best dev epoch (1) is not its last (2): --resume
    rewrites it from last.pt's copy and tests those weights, not the last epoch's. (Seed 1
    picks epoch 1 by dev Pearson r; the default rule, the lowest dev MSE, picks epoch 2.)"""
    assert cli(tr.main, sick(tmp_path, "--seed", "1", "--select", "pearson"), capsys)[0] == 0
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert first["best_epoch"] == 1 and len(first["epochs"]) == 2  # what makes the case
    (tmp_path / "best.pt").unlink()
    code, out, err = cli(tr.main, sick(tmp_path, "--seed", "1", "--select", "pearson", "--resume"),
                         capsys)  # fmt: skip
    assert code == 0, err
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["best_epoch"] == 1 and again["test"] == first["test"]
    assert "test (best dev epoch 1)" in out
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- case 3


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_huge_learning_rate_stops_without_a_non_finite_checkpoint(trainer, tmp_path, capsys):
    """--lr 1e30: exit 1 in one line that names no checkpoint that does not exist, and no
    checkpoint on disk holds a NaN or an infinity."""
    main, args = TRAINERS[trainer]
    code, out, err = cli(main, args(tmp_path, "--lr", "1e30"), capsys)
    assert one_line_error(code, err), (code, err)
    for word in err.replace(",", " ").replace(";", " ").split():
        if word.endswith(".pt"):
            assert Path(word).exists(), f"the message names {word}, which does not exist"
    assert finite_checkpoints(tmp_path)


def test_a_nan_after_a_good_epoch_names_the_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A NaN loss in epoch 2: the message names last.pt of epoch 1, which exists, is finite,
    and resumes."""
    real, calls = torch.nn.functional.cross_entropy, []

    def nan_from_the_6th(*a, **k):  # 4 steps an epoch: the 6th is epoch 2, step 2
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) >= 6 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_from_the_6th)
    code, out, err = cli(tr.main, sst(tmp_path), capsys)
    assert one_line_error(code, err) and "epoch 2, step 2" in err, err
    assert f"{tmp_path / 'last.pt'} (1 epochs done)" in err
    assert finite_checkpoints(tmp_path)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_diverging_run_fails(trainer, tmp_path, capsys):
    """--lr 1e6 (finite but exploding losses; 1e4 for the MNIST net) exits 1, not 0."""
    main, args = TRAINERS[trainer]
    code, out, err = cli(
        main, args(tmp_path, "--lr", "1e4" if trainer == "mnist" else "1e6"), capsys
    )
    assert one_line_error(code, err), (code, err)
    assert "diverged" in err and not (tmp_path / "metrics.json").exists()


# ----------------------------------------------------------------------------- case 4


def _patch_tensor_bytes(path: Path, tensor: torch.Tensor) -> None:
    """Flip bytes inside the stored data of ``tensor`` (found by its first 16 bytes)."""
    raw = path.read_bytes()
    needle = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()[:16]
    at = raw.find(needle)
    assert at > 0, "tensor data not found in the file"
    patched = raw[:at] + bytes(b ^ 0x5A for b in raw[at : at + 8]) + raw[at + 8 :]
    path.write_bytes(patched)


@pytest.mark.parametrize("trainer", ["sst", "mnist"])
def test_patched_tensor_bytes_are_detected(trainer, tmp_path, capsys):
    """Bytes changed inside a checkpoint's tensor data: --resume stops in one line."""
    main, args = TRAINERS[trainer]
    assert cli(main, args(tmp_path, "--epochs", "1"), capsys)[0] == 0
    last = tmp_path / "last.pt"
    if not last.exists():  # before issue 11, dynamic.train wrote checkpoint.pt
        last = tmp_path / "checkpoint.pt"
    state = torch.load(last, weights_only=True)
    weight = next(v for k, v in state["model"].items() if v.numel() >= 64 and "emb" not in k)
    _patch_tensor_bytes(last, weight)
    code, out, err = cli(main, args(tmp_path, "--epochs", "2", "--resume"), capsys)
    assert one_line_error(code, err), (code, err)
    assert f"{last.name} is damaged" in err


def test_a_checkpoint_without_its_config_is_a_clear_error(tmp_path, capsys):
    assert cli(tr.main, sst(tmp_path, "--epochs", "1"), capsys)[0] == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "last.pt")
    code, out, err = cli(tr.main, sst(tmp_path, "--epochs", "2", "--resume"), capsys)
    assert one_line_error(code, err), (code, err)
    assert "last.pt" in err


# ----------------------------------------------------------------------------- case 5


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def test_a_read_only_out_stops_before_training(tmp_path):
    """A read-only --out: one line before any training (root bypasses permissions, so as root
    the run is started without CAP_DAC_OVERRIDE)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    cmd = [*prefix, sys.executable, "-m", "treelstm.train", *sst(ro)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    ro.chmod(0o755)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert one_line_error(1, proc.stderr), proc.stderr
    assert "not writable" in proc.stderr and "epoch 1/" not in proc.stdout


def _limit_file_size() -> None:  # in the child: files over 16 KiB fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """A write the file system refuses (here: over the file-size limit, EFBIG; a full disk is
    ENOSPC, the same path): one line naming the file and the cause, no temporary files."""
    cmd = [sys.executable, "-m", "treelstm.train", *sst(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_file_size)  # fmt: skip
    assert one_line_error(proc.returncode, proc.stderr), proc.stderr
    assert "last.pt" in proc.stderr and "File too large" in proc.stderr
    assert temp_files(tmp_path / "run") == []


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x").write_text("mine")
    code, out, err = cli(tr.main, sst(tmp_path / "x"), capsys)
    assert one_line_error(code, err) and "is a file, not a folder" in err, (code, err)
    assert (tmp_path / "x").read_text() == "mine"


def test_a_mistyped_embeddings_path_is_one_line(tmp_path, capsys):
    data = write_sst(tmp_path / "data")
    argv = sst_files(data, "--out", str(tmp_path / "run"))
    argv[argv.index("none")] = str(tmp_path / "glvoe.txt")
    code, out, err = cli(tr.main, argv, capsys)
    assert one_line_error(code, err) and "glvoe.txt: no such file" in err, (code, err)


def test_temporary_files_of_a_killed_writer_are_removed(tmp_path, capsys):
    assert cli(tr.main, sst(tmp_path, "--epochs", "1"), capsys)[0] == 0
    (tmp_path / ".best.pt.tmp999999").write_bytes(b"half a checkpoint")
    assert cli(tr.main, sst(tmp_path, "--epochs", "2", "--resume"), capsys)[0] == 0
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- case 6


def test_an_empty_train_split_is_an_error(tmp_path, capsys):
    data = write_sst(tmp_path / "data")
    (data / "train.txt").write_text("")
    code, out, err = cli(tr.main, sst_files(data, "--out", str(tmp_path / "run")), capsys)
    assert one_line_error(code, err) and "train.txt: no trees" in err, (code, err)


def test_a_vector_of_the_wrong_length_is_an_error(tmp_path, capsys):
    data = write_sst(tmp_path / "data")
    vec = tmp_path / "vec.txt"
    vec.write_text("good 0.1 0.2 0.3\nfilm 0.1 0.2 0.3 0.4\n")
    argv = [*sst_files(data, "--out", str(tmp_path / "run"))]
    argv[argv.index("none")] = str(vec)
    code, out, err = cli(tr.main, argv, capsys)
    assert one_line_error(code, err) and "vec.txt:2:" in err, (code, err)


def test_a_word2vec_header_is_read_as_one(tmp_path, capsys):
    data = write_sst(tmp_path / "data")
    vec = tmp_path / "vec.txt"
    vec.write_text("2 3\ngood 0.1 0.2 0.3\nfilm 0.1 0.2 0.3\n")
    argv = [*sst_files(data, "--out", str(tmp_path / "run"))]
    argv[argv.index("none")] = str(vec)
    code, out, err = cli(tr.main, argv, capsys)
    assert code == 0, err
    assert "dim 3" in out


def test_a_tree_wider_than_the_cell_is_refused_with_file_and_line(tmp_path, capsys):
    data = write_sst(tmp_path / "data")
    with open(data / "dev.txt", "a") as f:
        f.write("(2 (2 a) (2 b) (2 c))\n")
    code, out, err = cli(tr.main, sst_files(data, "--out", str(tmp_path / "run")), capsys)
    assert one_line_error(code, err) and "dev.txt:21:" in err, (code, err)
    assert "epoch 1/" not in out


def test_sick_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    from .test_datasets import write_sick

    write_sick(tmp_path / "sick", n=6)
    path = tmp_path / "sick" / "train" / "a.toks"
    lines = path.read_bytes().split(b"\n")
    lines[1] += b" caf\xe9"
    path.write_bytes(b"\n".join(lines))
    argv = ["sick", "--data-dir", str(tmp_path), "--embeddings", "none", "--out",
            str(tmp_path / "run"), *SMALL]  # fmt: skip
    code, out, err = cli(tr.main, argv, capsys)
    assert one_line_error(code, err) and "a.toks:2: not valid UTF-8" in err, (code, err)
