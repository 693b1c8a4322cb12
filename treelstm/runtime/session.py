"""One process's part in a run: what `treelstm.train` and `dynamic.train` do around their loop.

``with Session.start(cfg, trainer=..., artifacts=...) as s:`` sets the torch threads, picks the
device, joins the torchrun job (if any), takes the run folder (rank 0: `RunDir`), catches SIGINT
and SIGTERM (`StopSignals`, single process), and on the way out releases the folder, tears the
job down after a clean run, or says which rank failed. Inside, the trainer uses:

- ``s.d``, ``s.device``, ``s.stop``, ``s.log`` (rank 0 prints),
- ``s.resume_from(required)``: the verified ``last.pt`` to continue from, or None,
- ``s.save(name, role, payload)``: a checkpoint (rank 0), ``s.saved_note()``: which checkpoint
  is the last good one (for error messages), ``s.write_json`` and ``s.plot`` for the rest.

`cli_main` runs a trainer's body and turns every expected failure into one line and an exit
status: 0 done, 1 error, 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import dist, faults
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunOptions, config_defaults, config_diff, pick_device
from .errors import CheckpointError, Interrupted, RunError, UsageError, one_line
from .files import atomic_write, write_json
from .rundir import RunDir
from .signals import StopSignals

__all__ = ["Session", "cli_main"]

LAST = "last.pt"


class Session:
    """See the module docstring; build it with `Session.start`."""

    def __init__(self, cfg: RunOptions, trainer: str, log: Callable[..., Any]) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.d = dist.from_env()
        self.log = log if self.d.main else (lambda *a, **k: None)
        self.device = torch.device("cpu")
        self.run_dir: RunDir | None = None
        self.run_id = ""
        self.out = Path(cfg.out)
        self.stop = StopSignals(enabled=not self.d.enabled)
        self.last_good: str | None = None  # "OUT/last.pt (2 epochs done)"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, cfg: RunOptions, *, trainer: str, artifacts: tuple[str, ...], log=print
    ) -> Iterator[Session]:
        """The session of one run (module docstring)."""
        s = cls(cfg, trainer, log)
        try:
            s._open(artifacts)
            with s.stop:
                yield s
        except BaseException as e:
            dist.report_failure(s.d, e)
            raise  # without tearing the group down: a peer may be dead; torchrun ends the rest
        finally:
            if s.run_dir is not None:
                s.run_dir.close()
        dist.close()

    def _open(self, artifacts: tuple[str, ...]) -> None:
        cfg = self.cfg
        if cfg.resume and cfg.overwrite:
            raise UsageError("--resume and --overwrite: choose one")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device, self.d)
        dist.init(self.d, self.device, cfg.dist_timeout)
        outcome: tuple[str, str | None] = ("", None)
        if self.d.main:
            try:
                mode = "resume" if cfg.resume else "overwrite" if cfg.overwrite else "new"
                self.run_dir = RunDir.open(
                    self.out, trainer=self.trainer, config=dataclasses.asdict(cfg),
                    resumable=type(cfg).RESUMABLE, defaults=config_defaults(type(cfg)),
                    mode=mode, artifacts=artifacts, log=self.log,
                )  # fmt: skip
                outcome = (self.run_dir.run_id, None)
            except RunError as e:
                outcome = ("", str(e))
                if not self.d.enabled:
                    raise
        # Every rank learns the run id, or stops with rank 0's error.
        self.run_id, error = dist.broadcast_object(outcome, self.d)
        if error is not None:
            raise RunError(error) if self.d.main else RunError(f"rank 0: {error}")

    # ----------------------------------------------------------------------------- files

    def file(self, name: str) -> Path:
        return self.out / name

    def resume_from(self, required: tuple[str, ...] = ()) -> dict | None:
        """The verified last.pt of this run when resuming (None: start from scratch).

        Checks the checksum, the trainer, the run id, that the settings match (but for the
        config's RESUMABLE fields) and that --epochs is not below the epochs already done.
        """
        path = self.file(LAST)
        if not (self.cfg.resume and path.exists()):
            return None
        doc = load_checkpoint(
            path, trainer=self.trainer, role="last", run_id=self.run_id,
            required=("config", "epoch", *required),
        )  # fmt: skip
        current = dataclasses.asdict(self.cfg)
        cls = type(self.cfg)
        diff = config_diff(doc["config"], current, cls.RESUMABLE, config_defaults(cls))
        if diff:
            raise CheckpointError(
                f"--resume: {path} was written with other settings ({'; '.join(diff)}): pass "
                "the same settings, --overwrite to replace the run, or choose another --out"
            )
        epochs = getattr(self.cfg, "epochs", None)
        if epochs is not None and doc["epoch"] > epochs:
            raise UsageError(
                f"--epochs {epochs}: {path} has {doc['epoch']} epochs done already; pass "
                f"--epochs {doc['epoch']} or more"
            )
        self.last_good = f"{path} ({doc['epoch']} epochs done)"
        return doc

    def save(self, name: str, role: str, payload: dict, note: str | None = None) -> None:
        """Write a checkpoint of this run (rank 0 writes; every rank records it as the last
        good one, for its error messages)."""
        path = self.file(name)
        if self.d.main:
            save_checkpoint(path, payload, trainer=self.trainer, role=role, run_id=self.run_id)
            faults.point("saved")
        if role == "last":
            self.last_good = f"{path} ({note or str(payload.get('epoch', '?')) + ' epochs done'})"

    def saved_note(self) -> str:
        """Which checkpoint is the last good one, for error messages."""
        if self.last_good is None:
            return "no checkpoint was written yet (the run stopped in its first epoch)"
        return f"the last good checkpoint is {self.last_good}"

    def write_json(self, name: str, obj: dict) -> None:
        """``obj`` plus this run's id as OUT/name (rank 0 only)."""
        if self.d.main:
            write_json(self.file(name), {"run_id": self.run_id, **obj})

    def plot(self, name: str, figure) -> None:
        """A matplotlib Figure as OUT/name, PNG (rank 0 only)."""
        if self.d.main:
            atomic_write(self.file(name), lambda f: figure.savefig(f, format="png", dpi=100))

    def interrupted(self, message: str) -> Interrupted:
        """The exception to raise after the state is saved for --resume."""
        return self.stop.interrupted(f"{message}; run again with --resume to continue")


def cli_main(body: Callable[[], object]) -> int:
    """Run ``body`` (a trainer's work) and return the exit status; errors are one line."""
    try:
        body()
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("stopped at once (Ctrl-C); the last checkpoint on disk is intact", file=sys.stderr)
        return 130
    except (RunError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0
