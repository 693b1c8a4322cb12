"""Build, cache and load the optional C extension of the recording path (`_native.c`).

The extension (~1,300 lines of the CPython C API, no torch headers) is compiled on
first use with the system C compiler (``$CC``, else ``cc``) against the running interpreter's
headers, about a second, and cached under ``$TREELSTM_CACHE`` (default ``~/.cache/treelstm``,
the level kernels' cache) in a file named by a hash of the source, the flags, the compiler's
version and the interpreter, so a changed source, compiler or Python never loads a stale
build; the build writes a temporary file and renames it (concurrent builds do not see each
other's half-written file).

``TREELSTM_AUTOBATCH_NATIVE=0`` turns it off (read at every map). When there is no compiler or
no ``Python.h``, or the build fails, `module()` returns None after one line on the
``treelstm`` logger and the engine records in pure Python: the same function, the same graph
(the tests run both).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

from treelstm.kernels.build import compile_cached  # one cache, one way to build

__all__ = ["ABI", "enabled", "module"]

ABI = 8  # the C source's ABI (checked after loading)
NAME = "_autobatch_native"
FLAGS = ["-O2", "-fno-strict-aliasing"]  # compile_cached adds -fPIC -shared
log = logging.getLogger("treelstm")
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    """Is the native recording path wanted (``TREELSTM_AUTOBATCH_NATIVE`` is not 0)?"""
    return os.environ.get("TREELSTM_AUTOBATCH_NATIVE", "1") != "0"


def module():
    """The loaded extension module, or None (turned off, or it could not be built)."""
    if not enabled():
        return None
    if "mod" not in _state:
        with _lock:
            if "mod" not in _state:
                _state["mod"] = _load()
    return _state["mod"]


def _load():
    try:
        path = _build()
        loader = importlib.machinery.ExtensionFileLoader(NAME, str(path))
        spec = importlib.util.spec_from_file_location(NAME, str(path), loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        if mod.abi() != ABI:
            raise ImportError(f"{path} has ABI {mod.abi()}, expected {ABI}")
    except (OSError, ImportError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("dynamic.autobatch: native recording unavailable (%s); using Python", e)
        return None
    return mod


def _build() -> Path:
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise RuntimeError(f"no Python.h in {include} (install the Python headers)")
    src = Path(__file__).resolve().parent / "_native.c"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    flags = [*FLAGS, f"-I{include}"]
    return compile_cached("autobatch", src, [src], [flags], [sys.version, sys.executable], suffix)
