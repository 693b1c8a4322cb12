"""SIGINT (Ctrl-C) and SIGTERM (what `kill`, schedulers and container stops send) end a run
the same way: the first one sets a flag that the training loop checks after each step; the
loop then saves what --resume needs and raises `Interrupted`. A second signal stops at once
(an `Interrupted` raised wherever the program is; every file on disk is still whole, since all
writes are atomic, and the last checkpoint is the place to resume from).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from .errors import Interrupted

__all__ = ["StopSignals"]


class StopSignals:
    """Context manager: catch SIGINT and SIGTERM while a run trains (see the module docstring).

    ``enabled=False`` (torchrun jobs, where ranks would stop at different steps) leaves the
    default handlers. Outside the main thread nothing is installed (Python allows it only
    there).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None  # the first signal's number
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.received is not None

    @property
    def code(self) -> int:
        """The exit status for the signal received: 128 + its number."""
        return 128 + (self.received or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGINT).name

    def interrupted(self, message: str) -> Interrupted:
        """The exception to raise once the state is saved."""
        return Interrupted(f"interrupted by {self.name}: {message}", self.code)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            name = signal.Signals(signum).name
            raise Interrupted(
                f"interrupted by {name} again: stopped at once; the last checkpoint on disk is "
                "whole (run again with --resume to continue from it)",
                128 + signum,
            )
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: saving after this step, then stopping "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if not self.enabled:
            return self
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def _restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()
