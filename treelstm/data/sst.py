"""The Stanford Sentiment Treebank (Socher et al. 2013): PTB bracket trees with a 0..4
sentiment label on every node.

``load_sst(root, "fine")`` keeps the five classes; ``load_sst(root, "binary")`` follows the
reference code of Tai et al. (2015): sentences whose root is neutral are dropped from every
split, and every node is relabelled 0 negative / 1 neutral / 2 positive (3 classes trained at
every node).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..formats.ptb import read_ptb
from ..tree import Tree
from .locate import SST_HOWTO
from .text import need

__all__ = ["SST_LABELS", "SST_SPLITS", "binarize_labels", "load_sst"]

SST_SPLITS = ("train", "dev", "test")
SST_LABELS = {
    "fine": ("very negative", "negative", "neutral", "positive", "very positive"),
    "binary": ("negative", "neutral", "positive"),  # 3 trained; the root is negative/positive
}


def binarize_labels(tree: Tree) -> Tree:
    """Relabel every node 0..4 -> 0 negative (0, 1) / 1 neutral (2) / 2 positive (3, 4)."""
    made: dict[int, Tree] = {}
    for node in tree.postorder():
        lab = node.label
        new = None if lab is None else (0 if lab < 2 else 1 if lab == 2 else 2)
        made[id(node)] = Tree(new, node.word, [made.pop(id(c)) for c in node.children])
    return made[id(tree)]


def _check(path: Path, trees: list[Tree], max_children: int | None) -> None:
    """Labels in 0..4 and at most ``max_children`` children per node, errors at path:line
    (tree i is on line i + 1: read_ptb allows blank lines only at the end)."""
    for i, t in enumerate(trees):
        for node in t.preorder():
            if not (isinstance(node.label, int) and 0 <= node.label <= 4):
                raise ValueError(f"{path}:{i + 1}: sentiment label {node.label!r} is not in 0..4")
            if max_children is not None and len(node.children) > max_children:
                raise ValueError(
                    f"{path}:{i + 1}: a node with {len(node.children)} children; the N-ary cell "
                    f"takes at most {max_children} (binarize the trees, or use --cell childsum)"
                )


def load_sst(
    root, mode: str = "fine", splits: Sequence[str] = SST_SPLITS, limit: int | None = None,
    max_children: int | None = None,
) -> dict[str, list[Tree]]:  # fmt: skip
    """SST trees per split from ``root/{train,dev,test}.txt`` (labels on every node).

    mode "fine": labels 0..4 as in the files. mode "binary" (the reference code's protocol):
    sentences with a neutral root (2) are dropped from every split and every node is
    relabelled with `binarize_labels` (train 6920 / dev 872 / test 1821 sentences).
    ``limit`` reads only the first trees of each file (tests, quick looks). ``max_children``:
    the widest node a model takes (2 for the binary N-ary cell). Errors name ``file:line``; an
    empty split is an error.
    """
    if mode not in ("fine", "binary"):
        raise ValueError(f"SST mode must be 'fine' or 'binary', got {mode!r}")
    root = Path(root)
    out = {}
    for split in splits:
        path = need(root / f"{split}.txt", SST_HOWTO)
        trees = read_ptb(path) if limit is None else _read_head(path, limit)
        _check(path, trees, max_children)
        if mode == "binary":
            trees = [binarize_labels(t) for t in trees if t.label != 2]
        if not trees:
            kept = " with a non-neutral root" if mode == "binary" else ""
            raise ValueError(f"{path}: no trees{kept}: the {split} split is empty")
        out[split] = trees
    return out


def _read_head(path: Path, limit: int) -> list[Tree]:
    """The first ``limit`` trees, read as `read_ptb` reads them (one per line, UTF-8, blank
    lines only at the end), so tree i is on line i + 1."""
    trees: list[Tree] = []
    blank = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if len(trees) >= limit:
                break
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None
            if not line.strip(" \t\r\n"):
                blank = blank or lineno
                continue
            if blank is not None:
                raise ValueError(f"{path}:{blank}: empty line")
            trees.append(Tree.from_ptb(line, where=f"{path}:{lineno}"))
    return trees
