"""Which autobatch run (if any) is recording on this thread, and the module-call hook.

Process-wide effects of a run, all undone when it ends (also on error):
  * `nn.Module._call_impl` (what ``module(...)`` calls after `_wrapped_call_impl`) is wrapped
    while at least one run is active on any thread (a reference count under a lock); outside
    an example the wrapper calls the original at once. Why `_call_impl` and not `__call__`:
    setting a dunder on `nn.Module` makes CPython re-derive the ``tp_call`` slot of every one of
    its ~600 loaded subclasses (measured: +75 us per wrap + restore, and more as the subclasses'
    method caches refill), while a plain attribute only bumps their version tags (+4 us);
  * two shortcuts past PyTorch's own dispatch, same lifetime and reference counting:
    ``torch.stack`` / ``torch.cat`` are replaced by functions that hand lazy arguments to the
    run directly (the C++ argument parser's ``__torch_function__`` dispatch costs ~1 us a
    call: a tree node stacks its children's h and c), and the module classes the run names
    (`fast_classes`: classes called in an earlier run of the same function whose ``__call__``
    is `nn.Module`'s) get a ``__call__`` that goes straight to the run (two Python frames
    less per call: `_wrapped_call_impl` and the hook). Both call the original at once when
    no example is running on this thread. Setting a dunder on such a leaf class re-derives
    the slots of it and its few subclasses only (microseconds); and ``handle_torch_function``
    as `torch.nn.functional` and `torch.functional` see it (their Python functions' route to
    ``__torch_function__``, ~5 us of Python a call) hands lazy arguments straight to
    ``Lazy.__torch_function__`` when nothing else could claim the call (no other overloaded
    argument type, no torch function mode), else calls PyTorch's;
  * a native run (the C extension, engine.run_class) installs the extension's versions of
    the ``torch.stack`` and fusable-cell ``__call__`` hooks, and of ``Lazy.__getitem__``:
    same lifetime and counting; they do their common case in C and call the Python hooks
    here for everything else (also for a run of another thread that is not native);
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

import torch
from torch import nn

__all__ = ["active", "activated", "call_module", "tls"]


class _Local(threading.local):
    run = None  # the recording run of this thread (a class default: no getattr fallback)


tls = _Local()
_lock = threading.Lock()
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


_module_dunder_call = nn.Module.__call__
_torch_stack = torch.stack
_torch_cat = torch.cat


def _fast_module_call(self, *args, **kwargs):
    """``__call__`` of a fast class during a run: the run's module call, or PyTorch's."""
    run = tls.run
    if run is not None and run.current is not None and self._compiled_call_impl is None:
        return run.module_call(self, args, kwargs)
    return _module_dunder_call(self, *args, **kwargs)


def _fast_cell_call(self, *args, **kwargs):
    """``__call__`` of a fusable cell class during a run (a fused run's `cell_classes`): a
    call on one tree node goes straight to the run's cell path."""
    run = tls.run
    if run is not None and run.current is not None and self._compiled_call_impl is None:
        if len(args) == 4 and not kwargs and run.count == 1 and type(self) in run.cell_classes:
            return run.cell_call(self, None, args)
        return run.module_call(self, args, kwargs)
    return _module_dunder_call(self, *args, **kwargs)


def _stack(*args, **kwargs):
    run = tls.run
    if run is not None and run.current is not None:
        if len(args) == 2 and not kwargs:  # stack(parts, dim): the common case, one call less
            out = run.compose(_torch_stack, args[0], args[1])
            if out is not None and out is not False:
                return out
        return run.compose_call(_torch_stack, args, kwargs)
    return _torch_stack(*args, **kwargs)


def _cat(*args, **kwargs):
    run = tls.run
    if run is not None and run.current is not None:
        return run.compose_call(_torch_cat, args, kwargs)
    return _torch_cat(*args, **kwargs)


_installed: dict = {}  # (owner, name) -> [users, the original attribute or _ABSENT]
_ABSENT = object()


def _install(owner, name: str, value) -> bool:
    """Set ``owner.name = value`` for one more user (the first one saves the original);
    False if the owner refuses the attribute (a class whose metaclass forbids it: its calls
    simply take PyTorch's path)."""
    entry = _installed.get((owner, name))
    if entry is None:
        original = owner.__dict__.get(name, _ABSENT)
        try:
            setattr(owner, name, value)
        except (AttributeError, TypeError):
            return False
        entry = _installed[(owner, name)] = [0, original]
    entry[0] += 1
    return True


def _uninstall(owner, name: str) -> None:
    entry = _installed[(owner, name)]
    entry[0] -= 1
    if entry[0] == 0:
        del _installed[(owner, name)]
        if entry[1] is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, entry[1])


SHORTCUTS: list = []  # more (owner, name, replacement) of every run (values.py adds some)


def _hooks(run) -> list:
    """(owner, name, replacement) of every process-wide hook of `run`."""
    # (the C extension's torch.stack, cell __call__ and more, for a native run: engine.run_class)
    stack, cell, more = run.native_hooks or (_stack, _fast_cell_call, ())
    out = [(nn.Module, "_call_impl", _module_call), (torch, "stack", stack), (torch, "cat", _cat)]
    out += SHORTCUTS
    out += more
    for cls in run.fast_classes:  # (under the lock: another run may have hooked it)
        if (cls, "__call__") in _installed or (
            "__call__" not in cls.__dict__ and cls.__call__ is _module_dunder_call
        ):
            fast = cell if cls in run.cell_classes else _fast_module_call
            out.append((cls, "__call__", fast))
    return out


@contextmanager
def activated(run):
    """Make `run` the recording run of this thread; restore everything on exit."""
    if tls.run is not None:
        raise RuntimeError("autobatch runs cannot be nested (an example called autobatch again)")
    with _lock:
        hooks = [h for h in _hooks(run) if _install(*h)]
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
            for owner, name, _ in hooks:
                _uninstall(owner, name)
