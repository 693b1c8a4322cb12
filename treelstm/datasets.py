"""The data of Tai, Socher & Manning (2015): Stanford Sentiment Treebank, SICK, word vectors.

- SST (Socher et al. 2013): PTB bracket trees with a 0..4 sentiment label on every node.
  ``load_sst(root, "fine")`` keeps the five classes; ``load_sst(root, "binary")`` follows the
  reference code: sentences whose root is neutral are dropped from every split, and every node
  is relabelled 0 negative / 1 neutral / 2 positive (3 classes trained at every node).
- SICK (Marelli et al. 2014) in the Tree-LSTM preprocessed layout: per split ``a.toks
  a.parents b.toks b.parents sim.txt id.txt`` (``*.cparents`` optional), read as dependency
  trees for the Child-Sum model.
- `Vocab` and GloVe-format text vectors (``word v1 ... vd``); words missing from the file get
  rows drawn from U(-0.05, 0.05), as in the reference code.
- Generated stand-ins (`synthetic_sst`, `synthetic_sick`) for dry runs and tests: learnable,
  offline, seconds to train on.

Where the data lives: ``data_dir`` argument, else ``$TREELSTM_DATA``, else (SST only) the official
Stanford zip downloaded into a cache and checked against the MD5 of its three tree files. A data
directory may be the task folder itself (``.../sst`` holding ``train.txt``) or a folder above it
(``.../data`` holding ``sst/`` and ``sick/``). Parsing needs no torch; only `load_vectors` does.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .tree import Tree, normalize_token, read_parents, read_ptb

__all__ = [
    "SST_URL",
    "SST_MD5",
    "SST_SPLITS",
    "SICK_SPLITS",
    "DataNotFound",
    "Pair",
    "Vocab",
    "Coverage",
    "find_data",
    "download_sst",
    "load_sst",
    "binarize_labels",
    "load_sick",
    "read_sick_split",
    "load_vectors",
    "synthetic_sst",
    "synthetic_sick",
]

SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
#: MD5 of the tree files inside the official zip (``trees/*.txt``, entries dated 2013-10-15).
SST_MD5 = {
    "train.txt": "b12d531b1b913a3bb49719ba5cc1f67a",
    "dev.txt": "c405f1d724964e6f72314b5a51fea691",
    "test.txt": "97b75f6ca1ae58b4d52fbf9381dc6f8c",
}
SST_SPLITS = ("train", "dev", "test")
SICK_SPLITS = ("train", "dev", "test")
SICK_FILES = ("a.toks", "a.parents", "b.toks", "b.parents", "sim.txt", "id.txt")

_SST_HOWTO = (
    "get the Stanford Sentiment Treebank trees (train.txt, dev.txt, test.txt from "
    f"{SST_URL}, folder trees/) and pass --data-dir or set TREELSTM_DATA to their folder "
    "(or a folder holding sst/); when online the zip is downloaded automatically"
)
_SICK_HOWTO = (
    "SICK in the Tree-LSTM layout is not distributed as one official file, so it is not "
    "downloaded: build it with the reference code's preprocessing (github.com/stanfordnlp/"
    "treelstm, scripts/download.py + scripts/preprocess-sick.py: SICK from Marelli et al. "
    "2014, parsed with the Stanford parsers) and pass --data-dir or set TREELSTM_DATA to the "
    "folder holding train/ dev/ test/ (or a folder holding sick/)"
)


class DataNotFound(FileNotFoundError):
    """A data file or folder is missing; the message names the path and how to get the data."""


# ----------------------------------------------------------------------------- locating


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "treelstm"


def _task_folder(root: Path, task: str, marker: str) -> Path | None:
    for cand in (root, root / task):
        if (cand / marker).exists():
            return cand
    return None


def find_data(task: str, data_dir=None, *, download: bool = True, cache_dir=None) -> Path:
    """The folder holding ``task``'s files ("sst": train.txt...; "sick": train/ dev/ test/).

    Looks in ``data_dir``, else ``$TREELSTM_DATA``, else (SST, ``download=True``) downloads the
    official zip into ``cache_dir`` (default ``~/.cache/treelstm``). Raises `DataNotFound`
    naming the path tried and how to get the data.
    """
    if task not in ("sst", "sick"):
        raise ValueError(f"unknown task {task!r}: expected 'sst' or 'sick'")
    marker = "train.txt" if task == "sst" else "train"
    howto = _SST_HOWTO if task == "sst" else _SICK_HOWTO
    where = data_dir if data_dir is not None else os.environ.get("TREELSTM_DATA") or None
    if where is not None:
        root = Path(where)
        found = _task_folder(root, task, marker)
        if found is None:
            raise DataNotFound(
                f"no {task.upper()} data in {root} (looked for {root / marker} and "
                f"{root / task / marker}): {howto}"
            )
        return found
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    found = _task_folder(cache, task, marker)
    if found is not None:
        return found
    if task == "sst" and download:
        return download_sst(cache / "sst")
    raise DataNotFound(
        f"no {task.upper()} data: no --data-dir, TREELSTM_DATA is not set and {cache / task} "
        f"does not exist: {howto}"
    )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sst(dest, url: str = SST_URL, timeout: float = 30.0) -> Path:
    """Download the official SST zip, check its tree files' MD5 and unpack them into ``dest``.

    Files are written to a temporary folder and moved into place only once all three match.
    Raises `DataNotFound` when the download fails (offline) and ValueError on a bad checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        zpath = Path(tmp) / "sst.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(zpath, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataNotFound(f"could not download {url} into {dest} ({e}): {_SST_HOWTO}") from e
        stage = Path(tmp) / "sst"
        stage.mkdir()
        with zipfile.ZipFile(zpath) as z:
            for name, md5 in SST_MD5.items():
                target = stage / name
                with z.open(f"trees/{name}") as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                got = _md5(target)
                if got != md5:
                    raise ValueError(f"{url}: trees/{name} has MD5 {got}, expected {md5}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)
    return dest


def _need(path: Path, howto: str) -> Path:
    if not path.exists():
        raise DataNotFound(f"missing data file {path}: {howto}")
    return path


# ----------------------------------------------------------------------------- SST


def binarize_labels(tree: Tree) -> Tree:
    """Relabel every node 0..4 -> 0 negative (0, 1) / 1 neutral (2) / 2 positive (3, 4)."""
    made: dict[int, Tree] = {}
    for node in tree.postorder():
        lab = node.label
        new = None if lab is None else (0 if lab < 2 else 1 if lab == 2 else 2)
        made[id(node)] = Tree(new, node.word, [made.pop(id(c)) for c in node.children])
    return made[id(tree)]


def load_sst(
    root, mode: str = "fine", splits: Sequence[str] = SST_SPLITS, limit: int | None = None
) -> dict[str, list[Tree]]:
    """SST trees per split from ``root/{train,dev,test}.txt`` (labels on every node).

    mode "fine": labels 0..4 as in the files. mode "binary" (the reference code's protocol):
    sentences with a neutral root (2) are dropped from every split and every node is
    relabelled with `binarize_labels` (train 6920 / dev 872 / test 1821 sentences).
    ``limit`` reads only the first lines of each file (tests, quick looks).
    """
    if mode not in ("fine", "binary"):
        raise ValueError(f"SST mode must be 'fine' or 'binary', got {mode!r}")
    root = Path(root)
    out = {}
    for split in splits:
        path = _need(root / f"{split}.txt", _SST_HOWTO)
        if limit is None:
            trees = read_ptb(path)
        else:
            trees = _read_ptb_head(path, limit)
        for i, t in enumerate(trees):
            for node in t.preorder():
                if not (isinstance(node.label, int) and 0 <= node.label <= 4):
                    raise ValueError(
                        f"{path}:{i + 1}: sentiment label {node.label!r} is not in 0..4"
                    )
        if mode == "binary":
            trees = [binarize_labels(t) for t in trees if t.label != 2]
        out[split] = trees
    return out


def _read_ptb_head(path: Path, limit: int) -> list[Tree]:
    trees = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(trees) >= limit:
                break
            if line.strip(" \t\r\n"):
                trees.append(Tree.from_ptb(line, where=f"{path}:{lineno}"))
    return trees


# ----------------------------------------------------------------------------- SICK


@dataclass(frozen=True)
class Pair:
    """One SICK sentence pair: two dependency trees, the gold relatedness (1..5), the pair id."""

    a: Tree
    b: Tree
    score: float
    id: str


def _read_lines_plain(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_sick_split(folder, limit: int | None = None) -> list[Pair]:
    """The pairs of one split folder (``a.toks a.parents b.toks b.parents sim.txt id.txt``).

    Errors name ``file:line``: a line count that differs between files, a score that is not a
    number in [1, 5], a parent line that does not match its tokens.
    """
    folder = Path(folder)
    paths = {name: _need(folder / name, _SICK_HOWTO) for name in SICK_FILES}
    toks = {s: _read_lines_plain(paths[f"{s}.toks"]) for s in "ab"}
    parents = {s: read_parents(paths[f"{s}.parents"]) for s in "ab"}
    sims = _read_lines_plain(paths["sim.txt"])
    ids = _read_lines_plain(paths["id.txt"])
    n = len(sims)
    for name, rows in (
        ("a.toks", toks["a"]),
        ("b.toks", toks["b"]),
        ("a.parents", parents["a"]),
        ("b.parents", parents["b"]),
        ("id.txt", ids),
    ):
        if len(rows) != n:
            raise ValueError(
                f"{paths[name]}:{min(len(rows), n) + 1}: {len(rows)} lines but "
                f"{paths['sim.txt']} has {n}"
            )
    count = n if limit is None else min(n, limit)
    pairs = []
    for i in range(count):
        where = f"{paths['sim.txt']}:{i + 1}"
        try:
            score = float(sims[i])
        except ValueError:
            raise ValueError(f"{where}: relatedness {sims[i]!r} is not a number") from None
        if not 1.0 <= score <= 5.0:
            raise ValueError(f"{where}: relatedness {score} is outside [1, 5]")
        trees = []
        for s in "ab":
            words = toks[s][i].split(" ")
            trees.append(
                Tree.from_parents(parents[s][i], words, where=f"{paths[f'{s}.parents']}:{i + 1}")
            )
        pairs.append(Pair(trees[0], trees[1], score, ids[i].strip()))
    return pairs


def load_sick(
    root, splits: Sequence[str] = SICK_SPLITS, limit: int | None = None
) -> dict[str, list[Pair]]:
    """SICK pairs per split from ``root/{train,dev,test}/`` (dependency trees)."""
    root = Path(root)
    return {split: read_sick_split(root / split, limit) for split in splits}


# ----------------------------------------------------------------------------- vocabulary


class Vocab:
    """Word -> id. Lookup undoes PTB escapes (`normalize_token`) and, with ``lower=True``,
    lowercases, so the raw tree words index the vectors' plain forms; unknown words map to
    ``unk`` (id 0). Callable, hence usable as `build_schedule`'s ``vocab``; picklable.
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


def load_vectors(path, vocab: Vocab, *, generator=None, dim: int | None = None):
    """Rows of a GloVe-format text file (``word v1 ... vd``) for ``vocab``'s words.

    Returns ``(weights [len(vocab), d] float32 tensor, Coverage)``. A word's vector is read
    under ``vocab.key(word)``; the first match in the file wins (files list frequent forms
    first). Rows without a vector, ``<unk>`` included, are drawn from U(-0.05, 0.05) with
    ``generator``. A malformed line raises ValueError naming ``path:line``.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise DataNotFound(
            f"missing word vectors {path}: pass --embeddings with a GloVe-format text file "
            "(https://nlp.stanford.edu/projects/glove/), or a folder holding glove/"
        )
    rows: dict[int, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            parts = line.rstrip(" ").split(" ")
            if dim is None:
                dim = len(parts) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: no vector after the word")
            if len(parts) < dim + 1:
                raise ValueError(
                    f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields"
                )
            word = " ".join(parts[: len(parts) - dim])
            i = vocab.stoi.get(vocab.key(word))
            if i is None or i in rows:
                continue
            try:
                rows[i] = [float(v) for v in parts[len(parts) - dim :]]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: a vector entry is not a number") from None
    if dim is None:
        raise ValueError(f"{path}: no vectors in the file")
    weights = torch.empty(len(vocab), dim).uniform_(-0.05, 0.05, generator=generator)
    if rows:
        idx = torch.tensor(list(rows.keys()))
        weights[idx] = torch.tensor(list(rows.values()), dtype=torch.float32)
    found = sum(1 for i in rows if i != 0)
    return weights, Coverage(found, len(vocab) - 1, dim, str(path))


# ----------------------------------------------------------------------------- generated data

_POLARITY = {
    "awful": -2, "bad": -1, "dull": -1, "not": 0, "the": 0, "a": 0, "film": 0, "plot": 0,
    "is": 0, "and": 0, "good": 1, "fun": 1, "great": 2, "-LRB-": 0, "-RRB-": 0, "é": 0,
}  # fmt: skip
SYNTHETIC_WORDS = tuple(_POLARITY)


def synthetic_sst(n: int, seed: int = 0, max_words: int = 10) -> list[Tree]:
    """``n`` random binary trees shaped like SST: words at leaves, a 0..4 label on every node.

    A leaf's score is its word's polarity, a parent's the sum of its children's, negated when
    its left child is the word "not"; the label is the score clipped to -2..2, plus 2.
    """
    rng = random.Random(seed)
    score: dict[int, int] = {}

    def make(a: Tree, b: Tree) -> int:
        s = score[id(a)] + score[id(b)]
        if a.word == "not":
            s = -score[id(b)]
        return s

    trees = []
    for _ in range(n):
        leaves = []
        for w in rng.choices(SYNTHETIC_WORDS, k=rng.randint(2, max_words)):
            t = Tree(max(-2, min(2, _POLARITY[w])) + 2, w)
            score[id(t)] = _POLARITY[w]
            leaves.append(t)

        def label(a: Tree, b: Tree) -> int:
            return max(-2, min(2, make(a, b))) + 2

        nodes = list(leaves)
        while len(nodes) > 1:
            k = rng.randrange(len(nodes) - 1)
            a, b = nodes[k], nodes[k + 1]
            t = Tree(label(a, b), None, (a, b))
            score[id(t)] = make(a, b)
            nodes[k : k + 2] = [t]
        trees.append(nodes[0])
        score.clear()
    return trees


def _random_parents(rng: random.Random, n: int) -> list[int]:
    """1-based heads of a random dependency tree over n tokens (0 = root)."""
    order = list(range(1, n + 1))
    rng.shuffle(order)
    heads = [0] * n
    for j, v in enumerate(order[1:], 1):
        heads[v - 1] = order[rng.randrange(j)]
    return heads


def synthetic_sick(n: int, seed: int = 0, max_words: int = 8) -> list[Pair]:
    """``n`` random sentence pairs as dependency trees; relatedness = 1 + 4 * word overlap
    (Jaccard of the two word sets), rounded to 0.1 as in SICK."""
    rng = random.Random(seed)
    words = [w for w in SYNTHETIC_WORDS if not w.startswith("-")]
    pairs = []
    for i in range(n):
        a = rng.choices(words, k=rng.randint(2, max_words))
        keep = rng.randint(0, len(a))
        b = rng.sample(a, keep) + rng.choices(words, k=rng.randint(max(0, 2 - keep), 4))
        rng.shuffle(b)
        jac = len(set(a) & set(b)) / len(set(a) | set(b))
        score = round(1 + 4 * jac, 1)
        ta = Tree.from_parents(_random_parents(rng, len(a)), a)
        tb = Tree.from_parents(_random_parents(rng, len(b)), b)
        pairs.append(Pair(ta, tb, score, str(i + 1)))
    return pairs
