"""Fault injection: a run SIGKILLed again and again at random points (between and inside
training steps, and in the middle of writing last.pt, best.pt, run.json and metrics.json),
resumed each time with --resume, ends with exactly the metrics of an uninterrupted run, and
its folder holds the same files, none half-written, none of another run.

Each kill is real: a forked copy of the test process runs the command line with
`treelstm.runtime.faults` armed and sends itself SIGKILL at the chosen point (no ``finally``
block runs, as when a machine dies). The points are drawn from a seeded generator (seed in the
failure message); tiny generated data keeps a whole test to a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import torch

from dynamic import train as dyn
from treelstm import train as tr
from treelstm.runtime import faults

pytestmark = pytest.mark.usefixtures("one_thread")

NO_DATA = "/nonexistent/treelstm-test-data"
ARGS = {
    "sst": ["sst", "--dry-run", "--threads", "1", "--no-progress", "--epochs", "2"],
    "sick": ["sick", "--dry-run", "--threads", "1", "--no-progress", "--epochs", "2"],
    "mnist": ["--dry-run", "--data-dir", NO_DATA, "--no-progress", "--epochs", "2",
              "--batch-size", "32", "--net", "branch", "--per-sample"],
}  # fmt: skip
FILES = {
    "sst": ["best.pt", "curves.png", "last.pt", "metrics.json", "run.json"],
    "sick": ["best.pt", "curves.png", "last.pt", "metrics.json", "run.json"],
    "mnist": ["curves.png", "last.pt", "metrics.json", "run.json"],
}
# Where to kill: (prefix of the point names, chance of dying at each such point).
KILLS = [("", 1 / 12), ("step", 1 / 5), ("write:last.pt", 1 / 3), ("write:best.pt", 1 / 2),
         ("write:run.json", 1 / 2), ("write:metrics.json", 1 / 2), ("write", 1 / 8),
         ("saved", 1 / 2)]  # fmt: skip


def main_of(trainer: str):
    return dyn.main if trainer == "mnist" else tr.main


def argv(trainer: str, out: Path, *extra: str) -> list[str]:
    return [*ARGS[trainer], "--out", str(out), *extra]


def killed_child(trainer: str, out: Path, prefix: str, chance: float, seed: int) -> tuple[str, str]:
    """Run the command line with --resume in a forked child that SIGKILLs itself, with
    ``chance`` at each point named ``prefix...``; -> ("killed" | "exit N", its stderr)."""
    err = out.parent / f"{out.name}.child.err"
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            sys.stderr = open(err, "w")  # noqa: SIM115  (closed by _exit below)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            faults.arm(None, prefix, probability=chance, seed=seed)
            code = main_of(trainer)(argv(trainer, out, "--resume"))
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    text = err.read_text() if err.exists() else ""
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, text
        return "killed", text
    return f"exit {os.WEXITSTATUS(status)}", text


def comparable(trainer: str, out: Path) -> dict:
    """What must not change with interruptions: every metric, not the timings."""
    m = json.loads((out / "metrics.json").read_text())
    drop = {"train_time_s", "epoch_time_s", "epoch_seconds"}
    epochs = [{k: v for k, v in r.items() if k not in drop} for r in m["epochs"]]
    keep = {k: m.get(k) for k in ("best_epoch", "best_dev", "test", "complete")}
    return {"epochs": epochs, **keep}


@pytest.mark.parametrize("trainer", ["sst", "sick", "mnist"])
def test_killed_at_random_points_resumes_to_the_same_metrics(trainer, tmp_path, capsys):
    seed = 20251130 + ["sst", "sick", "mnist"].index(trainer)
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    assert main_of(trainer)(argv(trainer, reference)) == 0
    out = tmp_path / "killed"
    kills = [k for k in KILLS if trainer != "mnist" or "best" not in k[0]]
    story: list[str] = []
    while story.count("killed") < 6 and len(story) < 40:  # a finished run is killed too
        # The first child dies writing last.pt (the case a kill is most likely to hurt);
        # the others wherever the draw says.
        prefix, chance = rng.choice(kills) if story else ("write:last.pt", 1 / 3)
        outcome, err = killed_child(trainer, out, prefix, chance, rng.randrange(2**31))
        assert outcome in ("killed", "exit 0"), f"seed {seed}, {story}: {err}"
        story += [f"{prefix or 'any'}", outcome]
    pairs = list(zip(story[::2], story[1::2], strict=True))
    assert story.count("killed") == 6, f"seed {seed}: {story}"
    before_done = story[: story.index("exit 0")] if "exit 0" in story else story
    assert before_done.count("killed") >= 3, f"seed {seed}: {story}"  # kills mid-training
    assert any(p.startswith("write:") and p.endswith(".pt") and k == "killed" for p, k in pairs)
    assert main_of(trainer)(argv(trainer, out, "--resume")) == 0, capsys.readouterr().err
    capsys.readouterr()

    assert comparable(trainer, out) == comparable(trainer, reference), f"seed {seed}: {story}"
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not n.startswith(".")] == FILES[trainer], story
    assert [n for n in names if n.startswith(".")] == [".lock"], f"leftovers: {names}"
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert json.loads((out / "metrics.json").read_text())["run_id"] == run_id
    for name in ("last.pt", "best.pt"):
        if name in FILES[trainer]:
            doc = torch.load(out / name, weights_only=True)
            assert doc["run_id"] == run_id
    if trainer != "mnist":
        best = torch.load(out / "best.pt", weights_only=True)
        assert best["epoch"] == json.loads((out / "metrics.json").read_text())["best_epoch"]
