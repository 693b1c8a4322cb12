"""Which autobatch run (if any) is recording on this thread, and the module-call hook.

Process-wide effects of a run, all undone when it ends (also on error):
  * `nn.Module._call_impl` (what ``module(...)`` calls after `_wrapped_call_impl`) is wrapped
    while at least one run is active on any thread (a reference count under a lock); outside
    an example the wrapper calls the original at once. Why `_call_impl` and not `__call__`:
    setting a dunder on `nn.Module` makes CPython re-derive the ``tp_call`` slot of every one of
    its ~600 loaded subclasses (measured: +75 us per wrap + restore, and more as the subclasses'
    method caches refill), while a plain attribute only bumps their version tags (+4 us);
  * the cyclic garbage collector is paused on the running thread (a run allocates ~10 small
    objects per recorded call; generational scans of that young heap cost more than the
    recording itself) and resumed at the end, when the run has broken its own cycles.

A module whose ``module.compile()`` was called dispatches to its compiled `_call_impl` before
the hook can see it, so its forward is traced op by op (still correct).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

from torch import nn

__all__ = ["active", "activated", "call_module", "tls"]


class _Local(threading.local):
    run = None  # the recording run of this thread (a class default: no getattr fallback)


tls = _Local()
_lock = threading.Lock()
_users = 0
_original_impl = nn.Module._call_impl


def active():
    """The run recording on this thread right now, or None."""
    return tls.run


def call_module(module, args, kwargs):
    """``module(*args, **kwargs)`` as PyTorch does it, never intercepted (hooks still run)."""
    compiled = module._compiled_call_impl
    if compiled is not None:
        return compiled(*args, **kwargs)
    return _original_impl(module, *args, **kwargs)


def _module_call(self, *args, **kwargs):
    run = tls.run
    if run is not None and run.current is not None:
        return run.module_call(self, args, kwargs)
    return _original_impl(self, *args, **kwargs)


@contextmanager
def activated(run):
    """Make `run` the recording run of this thread; restore everything on exit."""
    global _users
    if tls.run is not None:
        raise RuntimeError("autobatch runs cannot be nested (an example called autobatch again)")
    with _lock:
        if _users == 0:
            nn.Module._call_impl = _module_call
        _users += 1
    gc_was_enabled = gc.isenabled()
    gc.disable()
    tls.run = run
    try:
        yield run
    finally:
        tls.run = None
        if gc_was_enabled:
            gc.enable()
        with _lock:
            _users -= 1
            if _users == 0:
                nn.Module._call_impl = _original_impl
