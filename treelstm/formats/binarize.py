"""Binarisation: every node at most two children (for binary N-ary cells), and back.

``binarize(t)`` replaces a node ``X`` with children ``A B C D`` by a chain of two-child nodes:

    right-factored (default):  (X A (X| B (X| C D)))
    left-factored:             (X (X| (X| A B) C) D)

The nodes it adds are labelled ``Factored(X)`` (printed ``X|``). With ``collapse_unary=True``
every chain of one-child nodes also becomes one node labelled ``Collapsed((top, ..., bottom))``
(printed ``S+VP``) holding the bottom node's word and children, so that every node has exactly
0 or 2 children. ``unbinarize`` undoes both: ``unbinarize(binarize(t, ...)) == t`` for every
constituency tree whose labels are not themselves these marks.

In a schedule the added nodes are unlabelled (``Factored`` labels become the loss's ignore
index); a collapsed chain is one node whose label is the ``Collapsed`` mark (a class of its own
in a ``LabelMap``, as nltk's ``S+VP``). Dependency trees (a word on an internal node) are not
binarised: their word order does not survive factoring; use a Child-Sum cell for them.
Nothing recurses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tree import Tree

__all__ = ["binarize", "unbinarize", "Factored", "Collapsed", "FACTORS"]

#: The ways of factoring a node with more than two children.
FACTORS = ("right", "left")


@dataclass(frozen=True)
class Factored:
    """The label of a node that ``binarize`` added: it holds some of the children of a node
    labelled ``label``. Printed ``NP|``."""

    label: Any

    def __str__(self) -> str:
        return ("" if self.label is None else str(self.label)) + "|"


@dataclass(frozen=True)
class Collapsed:
    """The label of a node that stands for a chain of one-child nodes, top label first:
    ``Collapsed(("S", "VP"))``, printed ``S+VP``."""

    labels: tuple

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple) or len(self.labels) < 2:
            raise ValueError(f"Collapsed needs a tuple of 2 or more labels, got {self.labels!r}")

    def __str__(self) -> str:
        return "+".join("" if x is None else str(x) for x in self.labels)


def binarize(tree: Tree, factor: str = "right", *, collapse_unary: bool = False) -> Tree:
    """``tree`` with every node at most two children (see the module docstring).

    factor          "right" (``(X A (X| B C))``) or "left" (``(X (X| A B) C)``)
    collapse_unary  also turn every chain of one-child nodes into one node, so that every
                    node has 0 or 2 children; a chain ending in a leaf becomes a leaf.

    Leaves, words and their order are kept; ``unbinarize`` gives the tree back. Raises
    ValueError for a dependency tree (a node with both a word and children).
    """
    _check(tree, factor)
    cls = type(tree)
    done: list[Tree | _Chain] = []
    for node in tree.postorder():
        k = len(node.children)
        kids = done[len(done) - k :]
        del done[len(done) - k :]
        if collapse_unary and k == 1:
            chain = kids[0] if isinstance(kids[0], _Chain) else _Chain(kids[0])
            chain.upper.append(node.label)  # a chain grows upward without copying
            done.append(chain)
        else:
            kids = [_finish(cls, c) for c in kids]
            done.append(_factor(cls, node.label, node.word, kids, factor))
    return _finish(cls, done[0])


def unbinarize(tree: Tree) -> Tree:
    """Undo :func:`binarize`: splice every ``Factored`` node's children into its parent and
    expand every ``Collapsed`` node into its chain. A tree without these marks comes back
    equal. Raises ValueError when a mark sits where ``binarize`` would not have put it."""
    if not isinstance(tree, Tree):
        raise TypeError(f"unbinarize expects a Tree, not {type(tree).__name__}")
    cls = type(tree)
    done: list[Tree | _Part] = []
    for node in tree.postorder():
        k = len(node.children)
        parts = done[len(done) - k :]
        del done[len(done) - k :]
        if isinstance(node.label, Factored):
            done.append(_Part(node.label.label, parts))  # spliced into its owner below
        else:
            done.append(_expand(cls, node, _splice(parts, _base(node.label))))
    root = done[0]
    if isinstance(root, _Part):
        raise ValueError(
            f"unbinarize: the root is labelled {root.of!r}'s Factored mark, a node binarize "
            "adds below a real node; pass the whole binarised tree"
        )
    return root


# ----------------------------------------------------------------------------------- helpers


def _check(tree: Tree, factor: str) -> None:
    if not isinstance(tree, Tree):
        raise TypeError(f"binarize expects a Tree, not {type(tree).__name__}")
    if factor not in FACTORS:
        raise ValueError(f"binarize: factor must be 'right' or 'left', not {factor!r}")
    for node in tree.preorder():
        if node.word is not None and node.children:
            raise ValueError(
                f"binarize: node with word {node.word!r} has children (a dependency tree); "
                "only constituency trees are binarised - use a Child-Sum cell for dependency trees"
            )


def _factor(cls, label, word, kids: list[Tree], factor: str) -> Tree:
    """One node over ``kids``, with the nodes beyond two pushed into ``Factored`` nodes."""
    if len(kids) <= 2:
        return cls(label, word, kids)
    mark = Factored(label)
    if factor == "right":
        rest = kids[-1]
        for c in reversed(kids[1:-1]):
            rest = cls(mark, None, [c, rest])
        return cls(label, word, [kids[0], rest])
    first = kids[0]
    for c in kids[1:-1]:
        first = cls(mark, None, [first, c])
    return cls(label, word, [first, kids[-1]])


class _Chain:
    """A chain of one-child nodes being collapsed: the (binarised) bottom node, and the labels
    above it, bottom-up."""

    __slots__ = ("bottom", "upper")

    def __init__(self, bottom: Tree) -> None:
        self.bottom = bottom
        self.upper: list = []


def _finish(cls, item: Tree | _Chain) -> Tree:
    """A collapsed chain as its one node (``Collapsed`` label, the bottom's word and kids)."""
    if not isinstance(item, _Chain):
        return item
    labels = (*reversed(item.upper), item.bottom.label)
    return cls(Collapsed(labels), item.bottom.word, item.bottom.children)


def _base(label):
    """The label of the node that really owns a node's children: the bottom of a collapsed
    chain, the owner of a factored part, else the label itself."""
    if isinstance(label, Collapsed):
        return label.labels[-1]
    if isinstance(label, Factored):
        return label.label
    return label


class _Part:
    """What a ``Factored`` node holds (children, and nested parts of the same owner), waiting
    to be spliced into the node that owns them."""

    __slots__ = ("of", "items")

    def __init__(self, of, items: list) -> None:
        self.of = of
        self.items = items


def _splice(items: list, owner) -> list[Tree]:
    """``items`` with every part replaced by its children, left to right. Nested parts are
    walked with a stack, so a factored node of n children costs O(n), not O(n^2)."""
    out: list[Tree] = []
    stack = [iter(items)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif not isinstance(item, _Part):
            out.append(item)
        elif item.of == owner:
            stack.append(iter(item.items))
        else:
            raise ValueError(
                f"unbinarize: a node binarize added for label {item.of!r} sits under label "
                f"{owner!r}; was the tree changed after binarize?"
            )
    return out


def _expand(cls, node: Tree, kids: list[Tree]) -> Tree:
    """``node`` rebuilt over ``kids``; a ``Collapsed`` label becomes its chain again."""
    word_at = node.word_at
    if node.word is not None and len(kids) != len(node.children):
        raise ValueError(
            f"unbinarize: node with word {node.word!r} holds factored children; binarize "
            "never makes that (it refuses dependency trees)"
        )
    if not isinstance(node.label, Collapsed):
        return cls(node.label, node.word, kids, word_at=word_at)
    *upper, bottom = node.label.labels
    out = cls(bottom, node.word, kids, word_at=word_at)
    for label in reversed(upper):
        out = cls(label, None, [out])
    return out
