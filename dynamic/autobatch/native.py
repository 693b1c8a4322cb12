"""Build, cache and load the optional C extension of the recording path (`_native.c`).

The extension (a few hundred lines of the CPython C API, no torch headers) is compiled on
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

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

from treelstm.kernels.build import _cache_dir, _compiler  # (one cache, one compiler choice)

__all__ = ["ABI", "enabled", "module"]

ABI = 8  # the C source's ABI (checked after loading)
NAME = "_autobatch_native"
FLAGS = ["-O2", "-fPIC", "-shared", "-fno-strict-aliasing"]
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
    cc = _compiler()
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise RuntimeError(f"no Python.h in {include} (install the Python headers)")
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    src = Path(__file__).resolve().parent / "_native.c"
    digest = hashlib.sha256(src.read_bytes())
    for part in (repr(FLAGS), version, sys.version, include, sys.executable):
        digest.update(part.encode())
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = _cache_dir() / "native" / f"autobatch-{digest.hexdigest()[:20]}{suffix}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    cmd = [cc, *FLAGS, f"-I{include}", "-o", str(tmp), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f"{cc} failed to build {src}: {last}")
    os.replace(tmp, out)
    return out
