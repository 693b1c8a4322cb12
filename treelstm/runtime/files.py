"""Every file a run writes goes through `atomic_write_bytes`: the bytes go to a temporary file
beside the target, are fsynced, and the temporary file is renamed over the target. A reader, a
crash or a SIGKILL at any moment sees the old file or the new one, never half of one. An OS
error (disk full, read-only folder, file too large) becomes one `FileWriteError` line naming the
file and the cause, and the temporary file is removed; only a SIGKILL can leave one behind, and
the next run that takes the folder removes it (`remove_stale_temps`).

Objects are serialised in memory first (torch.save, savefig, json) so that the file system's
error reaches us as an OSError with its errno, not as a serialiser's own message.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from . import faults
from .errors import FileWriteError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "read_json",
    "remove_stale_temps",
    "temp_path",
    "write_json",
]

_TEMP = re.compile(r"^\..+\.tmp\d+$")  # what temp_path makes: .NAME.tmpPID


def temp_path(path: Path) -> Path:
    """Where `atomic_write_bytes` stages ``path``: ``.NAME.tmpPID`` in the same folder (a rename
    is atomic only within one file system)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _describe(error: OSError) -> str:
    if error.errno is not None and error.strerror:
        return f"{error.strerror} (errno {error.errno})"
    return str(error) or type(error).__name__


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a folder (fine)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring); creates the folder.

    Raises `FileWriteError` (one line: the file and the OS's reason) on any OS error.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            faults.point(f"write:{path.name}")  # killed here: a half-written temp file
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")  # killed here: a whole temp file, the old target
        os.replace(tmp, path)
        faults.point(f"write:{path.name}")  # killed here: the new file in place
        _fsync_folder(path.parent)
    except OSError as e:
        raise FileWriteError(f"could not write {path}: {_describe(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into memory, then `atomic_write_bytes` to ``path``."""
    buffer = io.BytesIO()
    write(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN or infinity: they are written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (NaN and infinities as null), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=2, default=float, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is not JSON (or not UTF-8)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged: not JSON ({e})") from None


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder``; their names. Call it only
    while holding the folder's lock (no live writer then)."""
    removed = []
    for p in sorted(folder.iterdir()):
        if _TEMP.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed
