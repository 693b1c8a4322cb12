"""What the format readers share: error messages that say where, label conversion, and reading
a file line by line with ``path:lineno`` on every error. Private to :mod:`treelstm.formats`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

# Only ASCII whitespace separates tokens: SST has leaves such as "8\xa01\/2" (a NO-BREAK SPACE
# inside one word), which Unicode-aware splitting would cut in two.
ASCII_WS = " \t\n\r\f\v"
INT_RE = re.compile(r"[-+]?[0-9]+")
_SNIPPET = 24

# Appended to "is not an integer" label errors: the usual cause is Penn Treebank labels.
LABEL_HINT = (
    "; for string labels such as 'NP' pass label_type=str, then number them for a loss with "
    "treelstm.LabelMap.fit(trees)"
)


def fail(where: str | None, message: str) -> ValueError:
    """A ValueError whose message starts with ``where`` (e.g. ``"train.txt:12: "``) if given."""
    return ValueError(f"{where}: {message}" if where else message)


def short(text: str, limit: int = _SNIPPET) -> str:
    """repr of ``text``, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def convert_label(raw: str, label_type: Callable[[str], Any] | None, where, at: Any):
    """Apply ``label_type`` to a label string; ``at`` (anything printable) says where it is."""
    if label_type is None or label_type is str:
        return raw
    if label_type is int and not INT_RE.fullmatch(raw):
        # Stricter than int(): no "٣", "1_0" or "\xa02", so that to_ptb gives the text back.
        raise fail(where, f"label {short(raw)} {at} is not an integer{LABEL_HINT}")
    try:
        return label_type(raw)
    except Exception as e:  # any failure of a user callable is bad input, reported as such
        name = getattr(label_type, "__name__", repr(label_type))
        raise fail(where, f"label {short(raw)} {at} rejected by {name}: {e}") from e


def read_lines(path) -> Iterable[tuple[int, str, str]]:
    """Yield ``(lineno, "path:lineno", text)`` for each non-blank line; blank lines are only
    allowed at the end of the file."""
    blank_at = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 (byte {e.start})") from None
            if not line.strip(ASCII_WS):
                if blank_at is None:
                    blank_at = lineno
                continue
            if blank_at is not None:
                raise ValueError(f"{path}:{blank_at}: empty line")
            yield lineno, where, line
