"""Reading text data files line by line, with errors that name ``file:line``."""

from __future__ import annotations

from pathlib import Path

from .locate import DataNotFound

__all__ = ["need", "read_lines"]


def need(path: Path, howto: str) -> Path:
    """``path``, or `DataNotFound` naming it and how to get the data."""
    if not path.exists():
        raise DataNotFound(f"missing data file {path}: {howto}")
    return path


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file without their line ends (a final newline adds no empty
    line); ValueError ``path:line: not valid UTF-8`` on a bad byte."""
    lines = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1})"
                ) from None
            lines.append(text.rstrip("\n").rstrip("\r"))
    return lines
