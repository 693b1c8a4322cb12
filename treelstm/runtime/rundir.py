"""The run folder (``--out``): one run per folder, one process at a time, nothing replaced
unless asked.

- **Lock.** `RunDir.open` takes an exclusive ``flock`` on ``OUT/.lock`` for as long as the run
  lives; a second process on the same folder stops at once with an error naming the holder's
  pid. The kernel drops the lock when the process dies, SIGKILL included: no stale locks.
- **Ownership.** ``OUT/run.json`` names the run: a random ``run_id``, the trainer, its config.
  Checkpoints and ``metrics.json`` carry the same ``run_id``, so a file of another run is
  recognised, never silently used.
- **Modes.** A new run needs an empty folder. ``--resume`` continues the run in the folder
  (the same settings, except the ``RESUMABLE`` ones), or starts one when the folder is empty.
  ``--overwrite`` deletes the files the trainer writes (``metrics.json`` first, so a folder is
  never marked finished with another run's files) and starts a new run; other files are kept.
- **Writable.** run.json is written (atomically) before anything else, so a read-only or full
  folder stops the run before any training, not after an epoch.
- **Leftovers.** Temporary files that a killed writer left are removed (we hold the lock, so
  no live writer owns them).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import config_diff
from .errors import FileWriteError, RunDirError, RunDirLocked
from .files import read_json, remove_stale_temps, write_json

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second process
    fcntl = None

__all__ = ["LOCK_FILE", "RUN_FILE", "RUN_FORMAT", "RunDir", "read_run_file"]

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
RUN_FORMAT = "treelstm-run"


def _ensure_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder: choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--out {path}: cannot create the folder ({e.strerror})") from None


def _lock(path: Path) -> int:
    """An exclusive lock on path/.lock, held through the returned descriptor."""
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(
            f"--out {path} is not writable ({e.strerror}): choose another --out"
        ) from None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirLocked(
            f"--out {path} is in use by another run (pid {holder}): wait for it to finish or "
            "choose another --out"
        ) from None
    with contextlib.suppress(OSError):  # the pid is only for the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def read_run_file(path: Path) -> dict | None:
    """``path/run.json`` (None when absent); RunDirError naming it when damaged."""
    file = path / RUN_FILE
    if not file.exists():
        return None
    try:
        doc = read_json(file)
    except (OSError, ValueError) as e:
        raise RunDirError(f"{e}: delete it, or use --overwrite") from None
    if not (isinstance(doc, dict) and doc.get("format") == RUN_FORMAT and "run_id" in doc):
        raise RunDirError(f"{file} is not a treelstm run file: use --overwrite or another --out")
    return doc


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


@dataclass
class RunDir:
    """An open run folder (see the module docstring); `close` releases the lock."""

    path: Path
    run_id: str
    trainer: str
    resumed: bool  # True when the folder held this run already (run.json)
    _fd: int | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    @classmethod
    def open(
        cls, path, *, trainer: str, config: dict, resumable: frozenset[str], mode: str,
        defaults: dict | None = None,
        artifacts: tuple[str, ...], log=print,
    ) -> RunDir:  # fmt: skip
        """Take ``path`` for a run of ``trainer``; ``mode`` is "new", "resume" or
        "overwrite". ``artifacts``: the files the trainer writes (what --overwrite deletes,
        in this order). Raises `RunDirError` (one line) when the folder cannot be used."""
        path = Path(path)
        _ensure_folder(path)
        fd = _lock(path)
        try:
            stale = remove_stale_temps(path)
            if stale:
                log(f"removed temporary files a killed run left in {path}: {', '.join(stale)}")
            rules = (resumable, defaults)
            run_id, resumed = _claim(path, trainer, config, rules, mode, artifacts, log)
            manifest = {"format": RUN_FORMAT, "version": 1, "run_id": run_id, "trainer": trainer,
                        "config": config, "written": _now()}  # fmt: skip
            try:
                write_json(path / RUN_FILE, manifest)
            except FileWriteError as e:
                raise RunDirError(f"--out {path} is not writable: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, run_id, trainer, resumed, fd)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _claim(path, trainer, config, rules, mode, artifacts, log) -> tuple[str, bool]:
    """(run id, whether it continues the folder's run) after the mode's checks. ``rules``:
    (resumable fields, defaults), as `config_diff` takes them."""
    if mode not in ("new", "resume", "overwrite"):
        raise ValueError(f"mode must be new, resume or overwrite, got {mode!r}")
    contents = _contents(path)
    if mode == "overwrite":
        removed = _remove(path, artifacts + (RUN_FILE,))
        if removed:
            log(f"--overwrite: removed {', '.join(removed)} from {path}")
        return uuid.uuid4().hex, False
    if not contents:
        if mode == "resume":
            log(f"--resume: {path} is empty, starting the run")
        return uuid.uuid4().hex, False
    run = read_run_file(path)
    if mode == "new" or run is None:
        raise RunDirError(_occupied(path, contents, run))
    if run.get("trainer") != trainer:
        raise RunDirError(
            f"--resume: {path} holds a {run.get('trainer')} run, not a {trainer} one: "
            "choose another --out"
        )
    diff = config_diff(run.get("config", {}), config, *rules)
    if diff:
        raise RunDirError(
            f"--resume: {path} holds a run with other settings ({'; '.join(diff)}): pass the "
            "same settings, --overwrite to replace it, or choose another --out"
        )
    return run["run_id"], True


def _occupied(path: Path, contents: list[str], run: dict | None) -> str:
    shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
    if run is None:
        what = f"files that are not a run of this version ({shown})"
        fix = "--overwrite to start a run there (it deletes the files a run writes)"
    else:
        what = f"a {'finished' if 'metrics.json' in contents else 'started'} run ({shown})"
        fix = "--resume to continue it, --overwrite to replace it"
    return f"--out {path} already holds {what}: pass {fix}, or choose another --out"


def _remove(path: Path, names: tuple[str, ...]) -> list[str]:
    removed = []
    for name in names:
        try:
            (path / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise RunDirError(f"--overwrite: cannot delete {path / name} ({e.strerror})") from None
        removed.append(name)
    return removed
