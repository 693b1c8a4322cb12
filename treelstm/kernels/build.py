"""Build, cache and load the native element-wise kernels (`levels.c`) through ctypes.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``) --
``-O3 -march=native``, no torch headers, about a second -- and multiplies matrices with the
BLAS torch is built with (the ``sgemm_`` / ``dgemm_`` libtorch_cpu exports: MKL on x86), so it
runs on torch's own thread setting. It is cached under
``$TREELSTM_CACHE`` (default ``~/.cache/treelstm``) in a file named by a hash of the sources,
the flags, the compiler's version and the CPU, so a changed source, compiler or machine never
loads a stale build. The build writes a temporary file and renames it, so processes that build
at the same time do not see each other's half-written file.

``TREELSTM_NATIVE=0`` turns the native kernels off; ``TREELSTM_NATIVE_TIMING=1`` builds them
with timers (`timing`; for `benchmarks.profile_levels`). When there is no compiler, the build
fails or torch's BLAS is not reachable, `library()` returns None after one line on the
``treelstm`` logger, and the level executor runs its pure-PyTorch kernels, which compute the
same function.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

__all__ = ["cache_dir", "compile_cached", "compiler", "library", "timing"]

ABI = 4  # bumped with any change of an exported signature (checked after loading)
SOURCES = ("levels.c", "levels_impl.h")
FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-march=native", "-fno-math-errno"],  # no OpenMP: rows on one thread
    ["-O3", "-fno-math-errno"],  # a compiler without -march=native
)
log = logging.getLogger("treelstm")

_P, _I, _B = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
# name -> argument types (pointers are c_void_p: raw data_ptr() addresses)
SIGNATURES = {
    "cs_forward": [_P] * 15 + [_I, _I, _B],
    "cs_backward": [_P] * 17 + [_I, _I, _B],
    "nary_forward": [_P] * 14 + [_I, _I, _I, _B],
    "nary_backward": [_P] * 17 + [_I, _I, _I, _B],
    "down_forward": [_P] * 13 + [_I, _I, _B],
    "down_backward": [_P] * 17 + [_I, _I, _B],
}

_lock = threading.Lock()
_state: dict[str, object] = {}


def library() -> SimpleNamespace | None:
    """The loaded kernels as ``lib.f32.<name>`` / ``lib.f64.<name>``, or None (see module)."""
    if os.environ.get("TREELSTM_NATIVE", "1") == "0":
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]  # type: ignore[return-value]


def timing() -> dict[str, float] | None:
    """Seconds the native loops spent since the last call -- BLAS matmuls, direct matmuls (the
    few-row levels), the loops in all -- when built with TREELSTM_NATIVE_TIMING=1, else None."""
    lib = library()
    if lib is None:
        return None
    out = (ctypes.c_double * 3)()
    lib.cdll.treelstm_timing(out)
    if out[0] < 0:
        return None
    return {"blas_matmul": out[0], "direct_matmul": out[1], "loops": out[2]}


def _flag_sets() -> list[list[str]]:
    extra = ["-DTREELSTM_TIMING"] if os.environ.get("TREELSTM_NATIVE_TIMING") == "1" else []
    return [flags + extra for flags in FLAG_SETS]


def _load() -> SimpleNamespace | None:
    try:
        sgemm, dgemm = _blas()
        path = _build()
        cdll = ctypes.CDLL(str(path))
        if cdll.treelstm_levels_abi() != ABI:
            raise OSError(f"{path} has ABI {cdll.treelstm_levels_abi()}, expected {ABI}")
        cdll.treelstm_set_blas(ctypes.c_void_p(sgemm), ctypes.c_void_p(dgemm))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("treelstm: native level kernels unavailable (%s); using PyTorch ops", e)
        return None
    lib = SimpleNamespace(cdll=cdll)
    for suffix in ("f32", "f64"):
        ns = SimpleNamespace()
        for name, argtypes in SIGNATURES.items():
            fn = getattr(cdll, f"{name}_{suffix}")
            fn.argtypes = argtypes
            fn.restype = None
            setattr(ns, name, fn)
        setattr(lib, suffix, ns)
    return lib


def _blas() -> tuple[int, int]:
    """Addresses of sgemm_ and dgemm_ in the BLAS torch was built with (libtorch_cpu)."""
    import torch

    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    for path in sorted(lib_dir.glob("libtorch_cpu.*")):
        try:
            lib = ctypes.CDLL(str(path))
            return (
                ctypes.cast(lib.sgemm_, ctypes.c_void_p).value,
                ctypes.cast(lib.dgemm_, ctypes.c_void_p).value,
            )
        except (OSError, AttributeError):
            continue
    raise RuntimeError(f"no sgemm_/dgemm_ exported by torch's libtorch_cpu in {lib_dir}")


def _source_dir() -> Path:
    return Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where built libraries are cached: $TREELSTM_CACHE, else $XDG_CACHE_HOME/treelstm,
    else ~/.cache/treelstm."""
    root = os.environ.get("TREELSTM_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "treelstm" if xdg else Path.home() / ".cache" / "treelstm"


def compiler() -> str:
    """The C compiler: $CC, else cc, else gcc (RuntimeError when there is none)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    return cc


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build() -> Path:
    src = _source_dir()
    parts = [_cpu_signature(), platform.platform()]
    return compile_cached("levels", src / "levels.c", [src / n for n in SOURCES], _flag_sets(),
                          parts, libs=["-lm"])  # fmt: skip


def compile_cached(
    prefix: str,
    main: Path,
    sources: list[Path],
    flag_sets: list[list[str]],
    parts: list[str],
    suffix: str = ".so",
    libs: list[str] | None = None,
) -> Path:
    """``main`` compiled into a shared library, cached as ``<cache>/native/<prefix>-<hash>
    <suffix>``: the hash covers ``sources``, ``flag_sets``, the compiler's version and
    ``parts`` (what else the build depends on), so a changed one never loads a stale build.
    The flag sets are tried in order (the first that compiles wins); the build writes a
    temporary file and renames it, so processes building at once never see a half-written
    file. RuntimeError (one line, the compiler's last) when no flag set compiles."""
    cc = compiler()
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    for part in (repr(flag_sets), version, *parts):
        digest.update(part.encode())
    out = cache_dir() / "native" / f"{prefix}-{digest.hexdigest()[:20]}{suffix}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    errors = []
    for flags in flag_sets:
        cmd = [cc, *flags, "-fPIC", "-shared", "-o", str(tmp), str(main), *(libs or [])]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if r.returncode == 0:
            os.replace(tmp, out)
            return out
        errors.append(r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"])
    tmp.unlink(missing_ok=True)
    raise RuntimeError(f"{cc} failed to build {main}: {errors[-1][0]}")
