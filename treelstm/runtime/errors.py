"""The errors a run stops with. Each message is one line that names the file, the option or the
setting at fault and what to do; the command lines print it without a traceback."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "FileWriteError",
    "Interrupted",
    "RunDirError",
    "RunDirLocked",
    "RunError",
    "TrainingError",
    "UsageError",
    "one_line",
]


class RunError(Exception):
    """A run cannot start or go on (the base of every error below)."""


class UsageError(RunError):
    """An option value that cannot work (a batch size of 0, --device cuda without CUDA, ...)."""


class RunDirError(RunError):
    """--out cannot be used: a file, not writable, in use by another run, or holding a run
    that this one must not replace."""


class RunDirLocked(RunDirError):
    """--out is in use by another process right now (its lock is held)."""


class CheckpointError(RunError):
    """A checkpoint is missing, unreadable, damaged, of another version, or of another run."""


class TrainingError(RunError):
    """Training stopped: a non-finite loss or weight, or a diverging loss."""


class FileWriteError(RunError):
    """A file could not be written (disk full, read-only, too large...); nothing half-written
    is left behind."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after saving what --resume needs.

    A KeyboardInterrupt, so code that catches Ctrl-C catches it; ``code`` is the exit status
    the command line returns (128 + the signal: 130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, code: int = 130) -> None:
        super().__init__(message)
        self.code = code


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its lines joined with "; ")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
