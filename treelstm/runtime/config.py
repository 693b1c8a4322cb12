"""Configs as dataclasses, their command lines, what may change on --resume, and the device.

A trainer's config is a ``@dataclass`` deriving from `RunOptions` (the options every run has).
Each field becomes a flag (``--batch-size`` for ``batch_size``; booleans ``--x/--no-x``;
``X | None`` fields take a value or keep the default); the comment after a field is its
``--help`` text. Two class attributes say the rest:

- ``RESUMABLE``: the fields that may differ between a run and its ``--resume`` (where the run
  writes, how fast it goes, how many epochs). Every other field must match, so a field added
  later is protected by default.
- ``CHOICES``: the allowed values of a field, checked by argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .dist import Dist
from .errors import UsageError

__all__ = [
    "RunOptions",
    "add_config_arguments",
    "config_defaults",
    "config_diff",
    "config_from_args",
    "parse_config",
    "pick_device",
    "require_positive",
]


@dataclass
class RunOptions:
    """What every run has besides its hyper-parameters."""

    out: str = "runs/run"  # run folder: run.json, last.pt, metrics.json, curves.png
    resume: bool = False  # continue the run in --out from its last.pt (start it if --out is empty)
    overwrite: bool = False  # replace the run in --out (its files are deleted first)
    device: str = "auto"  # auto (cuda when available), cpu, cuda or cuda:N
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress: bool = True  # tqdm progress bars
    dist_timeout: float = 600.0  # torchrun: seconds a rank waits for a dead or stalled peer

    RESUMABLE: ClassVar[frozenset[str]] = frozenset(
        {"out", "resume", "overwrite", "device", "threads", "progress", "dist_timeout"}
    )
    CHOICES: ClassVar[dict[str, tuple]] = {}


_COMMENT = re.compile(r"^\s+(\w+): [^=]+=.*?  #\s*(.+)$")


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of ``cls`` and its bases (a subclass's wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # no source (a frozen app, a builtin): help stays bare
            continue
        for m in map(_COMMENT.match, source.splitlines()):
            if m:
                out[m.group(1)] = m.group(2)
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip=()) -> None:
    """One option per field of the dataclass ``cls`` (module docstring)."""
    comments = _field_comments(cls)
    choices = getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        base = kind_name.replace(" | None", "").strip()
        help_text = comments.get(f.name, "")
        if f.default is not None:
            help_text += f" (default: {f.default})"
        help_text = help_text.replace("%", "%%")
        if base == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
            continue
        kind = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(
            flag, type=kind, default=f.default, help=help_text, choices=choices.get(f.name)
        )


def config_from_args(cls: type, args: argparse.Namespace):
    """The dataclass ``cls`` from the options `add_config_arguments` added (others ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_config(cls: type, parser: argparse.ArgumentParser, argv=None):
    """``argv`` (None: the command line) parsed by ``parser`` into ``cls``."""
    return cls(**vars(parser.parse_args(argv)))


def config_diff(
    saved: dict, current: dict, resumable: frozenset[str], defaults: dict | None = None
) -> list[str]:
    """ "name: saved -> current" for each field outside ``resumable`` that differs.

    A field the saved run does not have (it came with a later version) is the same when its
    current value is its default in ``defaults``: a new option's default keeps the old
    behaviour, so runs made before it existed still resume and still count as finished.
    """
    missing = object()
    defaults = defaults or {}
    return [
        f"{k}: {saved.get(k, '(absent)')!r} -> {v!r}"
        for k, v in current.items()
        if k not in resumable
        and saved.get(k, missing) != v
        and not (k not in saved and k in defaults and defaults[k] == v)
    ]


def config_defaults(cls: type) -> dict:
    """The defaults of a config dataclass, for `config_diff` (fields with a default only)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def require_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """`UsageError` naming the first option in ``names`` below 1."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def pick_device(name: str, d: Dist) -> torch.device:
    """``auto`` -> cuda when available (``cuda:LOCAL_RANK`` under torchrun), else cpu; ``cuda``
    under torchrun -> ``cuda:LOCAL_RANK``; anything else as torch.device reads it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {name!r}: {e} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA device here (try --device auto)")
    if device.type == "cuda" and device.index is None and d.enabled:
        device = torch.device("cuda", d.local_rank)  # one GPU per process
    return device
