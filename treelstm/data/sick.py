"""SICK (Marelli et al. 2014) in the Tree-LSTM preprocessed layout: per split folder
``a.toks a.parents b.toks b.parents sim.txt id.txt`` and ``a.cparents b.cparents``, read as
dependency trees (``*.parents``, for the Child-Sum model) or as the binarised constituency
trees (``*.cparents``, for the binary N-ary model): ``parses="dependency"|"constituency"``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..formats.parents import read_parents
from ..tree import Tree
from .locate import SICK_HOWTO
from .text import need, read_lines

__all__ = ["SICK_FILES", "SICK_PARSES", "SICK_SPLITS", "Pair", "load_sick", "read_sick_split",
           "sick_files"]  # fmt: skip

SICK_SPLITS = ("train", "dev", "test")
SICK_FILES = ("a.toks", "a.parents", "b.toks", "b.parents", "sim.txt", "id.txt")
#: parses -> (the parent files' extension, the reader of one line)
SICK_PARSES = {"dependency": ("parents", Tree.from_parents),
               "constituency": ("cparents", Tree.from_cparents)}  # fmt: skip


def sick_files(parses: str = "dependency") -> tuple[str, ...]:
    """The files a split folder needs for ``parses`` ("dependency" or "constituency")."""
    if parses not in SICK_PARSES:
        raise ValueError(f"parses must be 'dependency' or 'constituency', got {parses!r}")
    ext = SICK_PARSES[parses][0]
    return ("a.toks", f"a.{ext}", "b.toks", f"b.{ext}", "sim.txt", "id.txt")


@dataclass(frozen=True)
class Pair:
    """One SICK sentence pair: two dependency trees, the gold relatedness (1..5), the pair id."""

    a: Tree
    b: Tree
    score: float
    id: str


def _score(text: str, where: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"{where}: relatedness {text!r} is not a number") from None
    if not 1.0 <= score <= 5.0:
        raise ValueError(f"{where}: relatedness {score} is outside [1, 5]")
    return score


def _read_columns(folder: Path, parses: str) -> tuple[dict[str, Path], dict[str, list]]:
    """Every file of a split, one entry per line, checked to have the same number of lines."""
    paths = {name: need(folder / name, SICK_HOWTO) for name in sick_files(parses)}
    rows: dict[str, list] = {}
    for name, path in paths.items():
        rows[name] = read_parents(path) if name.endswith("parents") else read_lines(path)
    n = len(rows["sim.txt"])
    for name, values in rows.items():
        if len(values) != n:
            raise ValueError(
                f"{paths[name]}:{min(len(values), n) + 1}: {len(values)} lines but "
                f"{paths['sim.txt']} has {n}"
            )
    if n == 0:
        raise ValueError(f"{paths['sim.txt']}: no pairs: the {folder.name} split is empty")
    return paths, rows


def read_sick_split(folder, limit: int | None = None, parses: str = "dependency") -> list[Pair]:
    """The pairs of one split folder (``a.toks a.parents b.toks b.parents sim.txt id.txt``;
    ``a.cparents b.cparents`` instead of the ``*.parents`` for ``parses="constituency"``).

    Errors name ``file:line``: a file that is not UTF-8, a line count that differs between
    files, a score that is not a number in [1, 5], a parent line that does not match its
    tokens; an empty split is an error.
    """
    paths, rows = _read_columns(Path(folder), parses)
    ext, reader = SICK_PARSES[parses]
    count = len(rows["sim.txt"]) if limit is None else min(len(rows["sim.txt"]), limit)
    pairs = []
    for i in range(count):
        score = _score(rows["sim.txt"][i], f"{paths['sim.txt']}:{i + 1}")
        trees = [
            reader(
                rows[f"{s}.{ext}"][i],
                rows[f"{s}.toks"][i].split(" "),
                where=f"{paths[f'{s}.{ext}']}:{i + 1}",
            )  # fmt: skip
            for s in "ab"
        ]
        pairs.append(Pair(trees[0], trees[1], score, rows["id.txt"][i].strip()))
    return pairs


def load_sick(
    root, splits: Sequence[str] = SICK_SPLITS, limit: int | None = None,
    parses: str = "dependency",
) -> dict[str, list[Pair]]:  # fmt: skip
    """SICK pairs per split from ``root/{train,dev,test}/``: dependency trees (``*.parents``),
    or with ``parses="constituency"`` the binarised constituency trees (``*.cparents``: words
    at the leaves, every internal node with two children)."""
    root = Path(root)
    return {split: read_sick_split(root / split, limit, parses) for split in splits}
