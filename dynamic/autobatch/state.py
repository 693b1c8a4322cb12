"""Which autobatch run (if any) is recording on this thread, and the `nn.Module.__call__` hook.

Process-wide effects of a run, all undone when it ends (also on error):
  * `nn.Module.__call__` is wrapped while at least one run is active on any thread (a
    reference count under a lock); outside an example the wrapper calls the original at once;
  * the cyclic garbage collector is paused on the running thread (a run allocates ~10 small
    objects per recorded call; generational scans of that young heap cost more than the
    recording itself) and resumed at the end, when the run has broken its own cycles.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

from torch import nn

__all__ = ["active", "activated"]

_local = threading.local()
_lock = threading.Lock()
_users = 0
_original_call = nn.Module.__call__


def active():
    """The run recording on this thread right now, or None."""
    return getattr(_local, "run", None)


def _module_call(self, *args, **kwargs):
    run = getattr(_local, "run", None)
    if run is None or run.current is None:
        return _original_call(self, *args, **kwargs)
    return run.module_call(self, args, kwargs)


@contextmanager
def activated(run):
    """Make `run` the recording run of this thread; restore everything on exit."""
    global _users
    if getattr(_local, "run", None) is not None:
        raise RuntimeError("autobatch runs cannot be nested (an example called autobatch again)")
    with _lock:
        if _users == 0:
            nn.Module.__call__ = _module_call
        _users += 1
    gc_was_enabled = gc.isenabled()
    gc.disable()
    _local.run = run
    try:
        yield run
    finally:
        _local.run = None
        if gc_was_enabled:
            gc.enable()
        with _lock:
            _users -= 1
            if _users == 0:
                nn.Module.__call__ = _original_call
