"""Vocabularies and word vectors in GloVe text format (``word v1 ... vd``, one word a line).

Words missing from the vectors file get rows drawn from U(-0.05, 0.05), as in the reference
code of Tai et al. (2015). word2vec's text format (a first line "COUNT DIM") is read too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..formats.ptb import normalize_token
from ..tree import Tree
from .locate import DataNotFound

__all__ = ["Coverage", "Vocab", "find_vectors", "is_uncased", "load_vectors"]


class Vocab:
    """Word -> id. Lookup undoes PTB escapes (`normalize_token`) and, with ``lower=True``,
    lowercases, so the raw tree words index the vectors' plain forms; unknown words map to
    ``unk`` (id 0). Callable, hence usable as `build_schedule`'s ``vocab``; picklable; saved in
    checkpoints as `to_dict` (words and normalisation rules).
    """

    UNK = "<unk>"

    def __init__(self, words: Iterable[str] = (), *, lower: bool = False) -> None:
        self.lower = lower
        self.itos: list[str] = [self.UNK]
        self.stoi: dict[str, int] = {self.UNK: 0}
        for w in words:
            self.add(w)

    def key(self, word: str) -> str:
        """The form a raw token is stored and looked up under."""
        w = normalize_token(word)
        return w.lower() if self.lower else w

    def add(self, word: str) -> int:
        k = self.key(word)
        i = self.stoi.get(k)
        if i is None:
            i = self.stoi[k] = len(self.itos)
            self.itos.append(k)
        return i

    def __call__(self, word: str) -> int:
        return self.stoi.get(self.key(word), 0)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return self.key(word) in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.itos, self.lower) == (other.itos, other.lower)

    __hash__ = None  # mutable

    def to_dict(self) -> dict:
        """What rebuilds this vocabulary (`from_dict`): the stored forms in id order and the
        lookup rules (PTB escapes undone, lowercasing)."""
        return {"itos": list(self.itos), "lower": self.lower, "unk": self.UNK, "escapes": "ptb"}

    @classmethod
    def from_dict(cls, doc: dict) -> Vocab:
        vocab = cls(lower=bool(doc["lower"]))
        vocab.itos = list(doc["itos"])
        vocab.stoi = {w: i for i, w in enumerate(vocab.itos)}
        return vocab

    @classmethod
    def from_trees(cls, trees: Iterable[Tree], *, lower: bool = False) -> Vocab:
        """Every word of every node, in first-seen order."""
        vocab = cls(lower=lower)
        for t in trees:
            for w in t.flat().words:
                if w is not None:
                    vocab.add(w)
        return vocab


@dataclass(frozen=True)
class Coverage:
    """How much of a vocabulary a vectors file covers."""

    found: int  # vocabulary types with a vector in the file
    total: int  # vocabulary types (the unknown-word entry excluded)
    dim: int  # vector size
    path: str

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 1.0

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.found}/{self.total} vocabulary types have a vector "
            f"({100 * self.fraction:.2f}%), dim {self.dim}; the rest drawn from U(-0.05, 0.05)"
        )


def _missing(path: Path) -> DataNotFound:
    return DataNotFound(
        f"--embeddings {path}: no such file; pass a GloVe-format text file "
        "(https://nlp.stanford.edu/projects/glove/), or --embeddings none for random vectors"
    )


def find_vectors(names: Sequence[str], places: Sequence[Path]) -> Path:
    """The first ``place/name`` that exists, trying each name in every place in turn."""
    for name in names:
        for place in places:
            if (place / name).is_file():
                return place / name
    tried = ", ".join(str(p) for p in dict.fromkeys(places))
    raise DataNotFound(
        f"no word vectors found (looked for {', '.join(names)} in {tried}): pass "
        "--embeddings PATH (GloVe text format) or --embeddings none for random vectors"
    )


def _lines(path: Path):
    """(line number, text) of a vectors file, decoded one line at a time."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None


def is_uncased(path, lines: int = 5000) -> bool:
    """Whether the first ``lines`` words of a vectors file are all lowercase."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    for lineno, line in _lines(path):
        if lineno > lines:
            break
        word = line.split(" ", 1)[0]
        if word != word.lower():
            return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header(parts: list[str]) -> int | None:
    """The dimension when ``parts`` is a word2vec header ("COUNT DIM"), else None."""
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1])
    return None


def _split(parts: list[str], dim: int, where: str) -> tuple[str, list[str]]:
    """(word, its dim number fields) of one line. A word may contain spaces (glove.840B has a
    few such), but extra fields that are all numbers mean a vector of the wrong length."""
    if len(parts) < dim + 1:
        raise ValueError(f"{where}: expected a word and {dim} numbers, got {len(parts)} fields")
    extra = parts[1 : len(parts) - dim]
    if extra and all(map(_is_number, extra)):
        raise ValueError(
            f"{where}: {len(parts) - 1} numbers after the word, but the file's vectors have {dim}"
        )
    return " ".join(parts[: len(parts) - dim]), parts[len(parts) - dim :]


def _read_rows(path: Path, vocab: Vocab, dim: int | None) -> tuple[dict[int, list[float]], int]:
    rows: dict[int, list[float]] = {}
    for lineno, line in _lines(path):
        if not line:
            continue
        parts = line.rstrip(" ").split(" ")
        if dim is None:
            dim = _header(parts) if lineno == 1 else None
            if dim is not None:
                continue
            dim = len(parts) - 1
            if dim < 1:
                raise ValueError(f"{path}:{lineno}: no vector after the word")
        word, numbers = _split(parts, dim, f"{path}:{lineno}")
        i = vocab.stoi.get(vocab.key(word))
        if i is None or i in rows:
            continue
        try:
            rows[i] = [float(v) for v in numbers]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: a vector entry is not a number") from None
    if dim is None:
        raise ValueError(f"{path}: no vectors in the file")
    return rows, dim


def load_vectors(path, vocab: Vocab, *, generator=None, dim: int | None = None):
    """Rows of a GloVe-format text file (``word v1 ... vd``) for ``vocab``'s words.

    Returns ``(weights [len(vocab), d] float32 tensor, Coverage)``. A word's vector is read
    under ``vocab.key(word)``; the first match in the file wins (files list frequent forms
    first). Rows without a vector, ``<unk>`` included, are drawn from U(-0.05, 0.05) with
    ``generator``. A malformed line (too few or too many numbers, a non-number, bad UTF-8)
    raises ValueError naming ``path:line``; a word2vec header line gives the dimension.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    rows, dim = _read_rows(path, vocab, dim)
    weights = torch.empty(len(vocab), dim).uniform_(-0.05, 0.05, generator=generator)
    if rows:
        idx = torch.tensor(list(rows.keys()))
        weights[idx] = torch.tensor(list(rows.values()), dtype=torch.float32)
    found = sum(1 for i in rows if i != 0)
    return weights, Coverage(found, len(vocab) - 1, dim, str(path))
