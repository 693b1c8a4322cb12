"""``nltk.Tree`` both ways. nltk is imported only when one of these is called.

In an ``nltk.Tree`` a string child is a word and a ``Tree`` child a subtree; a preterminal
``Tree("2", ["good"])`` is our leaf ``Tree(2, "good")``. Nothing recurses (nltk's own
``fromstring`` and ``__str__`` do, but building and walking trees here does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..tree import Tree
from ._text import convert_label

__all__ = ["from_nltk", "to_nltk"]


def from_nltk(t: Any, label_type: Callable[[str], Any] | None = int, *, cls=Tree) -> Tree:
    """Convert an ``nltk.Tree``: string children are words, ``(2 good)`` is a leaf.

    String labels go through ``label_type`` as in ``from_ptb`` (``int`` by default: Penn
    Treebank labels such as ``"NP"`` need ``label_type=str``); other labels are kept. An
    empty-label root with a single subtree is unwrapped. Raises ValueError on a node that mixes
    words and subtrees, has two words, or lacks a label, saying at which nltk position.
    """
    import nltk

    if not isinstance(t, nltk.Tree):
        raise TypeError(f"Tree.from_nltk expects an nltk.Tree, not {type(t).__name__}")
    done: list[Tree] = []
    for node in _postorder(t):
        at = _NltkPlace(t, node)
        word, k = _word_and_arity(node, at)
        kids = done[len(done) - k :]
        del done[len(done) - k :]
        raw = node.label()
        if raw is None or raw == "":
            if node is t and k == 1:
                done.append(kids[0])  # the PTB wrapper "( (S ...))"
                continue
            what = "empty node" if not (k or word is not None) else "missing label"
            raise ValueError(f"{what} {at}")
        label = convert_label(raw, label_type, None, at) if isinstance(raw, str) else raw
        done.append(cls(label, word, kids))
    return done[0]


def to_nltk(tree: Tree):
    """``tree`` as an ``nltk.Tree`` (labels through ``str()``, None as ``""``).

    A leaf with a word becomes a preterminal ``Tree("2", ["good"])``. A dependency node (a word
    and children) keeps its word among its children at its place in the sentence, so that
    ``to_nltk(t).leaves()`` is the sentence: ``Tree("root", [Tree("nsubj", ...), "sat"])``.
    """
    import nltk

    done: list[Any] = []
    for node in tree.postorder():
        label = "" if node.label is None else str(node.label)
        k = len(node.children)
        kids: list[Any] = done[len(done) - k :]
        del done[len(done) - k :]
        if node.word is not None:
            kids.insert(node.word_at, node.word)
        done.append(nltk.Tree(label, kids))
    return done[0]


def _postorder(t) -> list:
    """The ``nltk.Tree`` nodes of ``t``, children before parents, left to right."""
    import nltk

    post = []
    stack = [t]
    while stack:
        node = stack.pop()
        post.append(node)
        stack.extend(c for c in node if isinstance(c, nltk.Tree))
    post.reverse()
    return post


def _word_and_arity(node, at) -> tuple[str | None, int]:
    """(the node's word or None, its number of subtrees); ValueError unless it is a leaf with
    at most one word or a node with subtrees only."""
    import nltk

    words = []
    k = 0
    for c in node:
        if isinstance(c, nltk.Tree):
            k += 1
        elif isinstance(c, str):
            words.append(c)
        else:
            raise ValueError(f"child {c!r} {at} is neither a str nor an nltk.Tree")
    if words and k:
        raise ValueError(
            f"node {at} mixes words and subtrees (a dependency tree? from_nltk reads "
            "constituency trees; build dependency trees with Tree.from_parents)"
        )
    if len(words) > 1:
        raise ValueError(f"node {at} has {len(words)} words {words[:3]!r}; a leaf has one")
    return (words[0] if words else None), k


class _NltkPlace:
    """Formats as "at nltk position (0, 1)" of ``node`` in ``root``; found only when shown."""

    __slots__ = ("root", "node")

    def __init__(self, root, node):
        self.root, self.node = root, node

    def __str__(self) -> str:
        import nltk

        stack: list[tuple[Any, Any]] = [(self.root, None)]
        while stack:
            n, link = stack.pop()
            if n is self.node:
                path = []
                while link is not None:
                    link, i = link
                    path.append(i)
                return f"at nltk position {tuple(reversed(path))}"
            stack.extend((c, (link, i)) for i, c in enumerate(n) if isinstance(c, nltk.Tree))
        return "at an unknown nltk position"
