"""Checkpoints: a versioned format with a checksum of their whole content.

A checkpoint is a dict saved with ``torch.save`` and read with ``torch.load(weights_only=True)``
(no pickled code runs on load). Besides what the trainer puts in it, it holds a header:

=========== ================================================================================
format      ``"treelstm-checkpoint"``
version     `CHECKPOINT_VERSION` (2; version 1 had no header fields but these two, no checksum)
trainer     the module that wrote it: ``"treelstm.train"``, ``"dynamic.train"``
role        ``"last"`` (everything --resume needs) or ``"best"`` (the best-on-dev weights)
run_id      the run it belongs to (the ``run_id`` of its folder's ``run.json``)
sha256      `content_digest` of everything else: every tensor's dtype, shape and bytes, every
            number and string, in order
=========== ================================================================================

`load_checkpoint` recomputes the checksum, so a changed byte anywhere (tensor data included,
which torch.load itself does not check) is an error naming the file, as is a file of another
format, version, trainer, role or run. `save_checkpoint` refuses to write a float tensor with a
NaN or an infinity: a checkpoint on disk is always a good state.

To add a field, add it to the payload; readers use ``doc.get`` for fields newer than the
version they need. Bump `CHECKPOINT_VERSION` only when an old file would be misread.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, TrainingError
from .files import atomic_write_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "content_digest",
    "load_checkpoint",
    "nonfinite_tensors",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "treelstm-checkpoint"
CHECKPOINT_VERSION = 2
HEADER = ("format", "version", "trainer", "role", "run_id", "sha256")
# What version 1 files looked like (treelstm.train's format string; dynamic.train's version key).
_OLD = {"treelstm-train-1"}


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def content_digest(doc: dict) -> str:
    """SHA-256 of ``doc`` without its ``sha256`` entry: tensors by dtype, shape and raw bytes,
    everything else by type and repr, dicts in insertion order (kept by torch.save/load)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in doc.items() if k != "sha256"})
    return h.hexdigest()


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[tuple[str, int]]:
    """(name, count) of every floating tensor in ``obj`` holding NaN or infinite entries."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            bad = int((~torch.isfinite(obj.detach())).sum())
            return [(prefix or "tensor", bad)] if bad else []
        return []
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = []
    for k, v in items:
        found += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    return found


def save_checkpoint(path, payload: dict, *, trainer: str, role: str, run_id: str) -> None:
    """Write ``payload`` plus the header (module docstring) to ``path`` atomically.

    Raises `TrainingError` (nothing written) when a tensor is not finite, `FileWriteError` when
    the file system refuses.
    """
    bad = nonfinite_tensors(payload)
    if bad:
        what = ", ".join(f"{name} ({n} values)" for name, n in bad[:3])
        raise TrainingError(f"refusing to write {path}: non-finite values in {what}")
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "trainer": trainer,
           "role": role, "run_id": run_id, **payload}  # fmt: skip
    doc["sha256"] = content_digest(doc)
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(
            f"{path} is damaged or not a checkpoint ({type(e).__name__}: {reason})"
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not a treelstm checkpoint (a {type(doc).__name__})")
    return doc


def _check_header(path: Path, doc: dict) -> None:
    fmt = doc.get("format")
    if fmt in _OLD or (fmt is None and doc.get("version") == 1):
        raise CheckpointError(
            f"{path} was written by an older treelstm (checkpoint version 1, no checksum); "
            "this version can neither resume it nor predict with it: start the run again "
            "(--overwrite) or use another --out"
        )
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a treelstm checkpoint (format {fmt!r})")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {doc.get('version')!r}; this treelstm reads "
            f"version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in HEADER if k not in doc]
    if missing:
        raise CheckpointError(f"{path} is damaged: its header lacks {', '.join(missing)}")
    if content_digest(doc) != doc["sha256"]:
        raise CheckpointError(
            f"{path} is damaged: its content does not match the checksum stored in it "
            "(a changed or truncated byte); delete it, or resume from a copy"
        )


def load_checkpoint(
    path, *, trainer: str | None = None, role: str | None = None, run_id: str | None = None,
    required: tuple[str, ...] = (),
) -> dict:  # fmt: skip
    """Read and verify a checkpoint (module docstring); `CheckpointError` names the file and
    what is wrong: missing, unreadable, older version, checksum mismatch, another trainer,
    role or run (when ``trainer``/``role``/``run_id`` are given), or a ``required`` key
    absent."""
    path = Path(path)
    doc = _read(path)
    _check_header(path, doc)
    for key, want in (("trainer", trainer), ("role", role), ("run_id", run_id)):
        if want is not None and doc[key] != want:
            owner = "another run" if key == "run_id" else f"{key} {doc[key]!r}"
            raise CheckpointError(
                f"{path} belongs to {owner}, not to this one ({key} {want!r}): move it away, "
                "or start this run again with --overwrite"
            )
    missing = [k for k in required if k not in doc]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a {role or ''} checkpoint")
    return doc
