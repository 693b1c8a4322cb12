"""Immutable ordered trees for Tree-LSTMs: the tree itself, its traversals and its flat form.

Tree-LSTMs (Tai, Socher & Manning 2015, "Improved Semantic Representations From Tree-Structured
Long Short-Term Memory Networks") run over two kinds of tree: constituency trees such as the
Stanford Sentiment Treebank, where words sit at the leaves and every node has a label, and
dependency trees such as SICK's, where every node is a word. Both are a :class:`Tree`.

The formats (Penn Treebank bracket text, parent arrays, ``nltk.Tree``) and binarisation live in
:mod:`treelstm.formats`; ``Tree.from_ptb``, ``Tree.from_parents``, ``Tree.from_cparents``,
``Tree.from_nltk`` and ``Tree.to_nltk`` are kept here as entry points that call them.

Nothing here recurses in Python: a 100,000-node chain can be built, compared, hashed, printed,
pickled and garbage-collected. No torch here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Tree", "FlatTree"]


@dataclass(frozen=True, eq=False)
class FlatTree:
    """A tree as post-order arrays (children before parents, children left to right).

    Node ``i`` is the ``i``-th node of :meth:`Tree.postorder`; the root is the last, ``n - 1``.

    - ``parent``: int64 ``[n]``, post-order index of the parent, ``-1`` for the root.
    - ``child_rank``: int64 ``[n]``, position among the parent's children (0-based); root 0.
    - ``height``: int64 ``[n]``, 0 for a leaf, else 1 + the highest child's.
    - ``words``, ``labels``: tuples of length ``n`` (``None`` where a node has none).

    The arrays are read-only: a FlatTree is cached on its Tree and shared.
    """

    parent: np.ndarray
    child_rank: np.ndarray
    height: np.ndarray
    words: tuple
    labels: tuple

    def __len__(self) -> int:
        return len(self.parent)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlatTree):
            return NotImplemented
        return (
            np.array_equal(self.parent, other.parent)
            and np.array_equal(self.child_rank, other.child_rank)
            and np.array_equal(self.height, other.height)
            and self.words == other.words
            and self.labels == other.labels
        )

    __hash__ = None  # type: ignore[assignment]  # arrays: equal but not hashable


def _unflatten(labels: tuple, words: tuple, arity: tuple, word_at: tuple | None = None) -> Tree:
    """Rebuild a tree from its post-order labels, words, child counts and word places (the
    pickle form; pickles made before ``word_at`` existed have no fourth entry)."""
    if word_at is None:
        word_at = (0,) * len(labels)
    if not (len(labels) == len(words) == len(arity) == len(word_at)) or not labels:
        raise ValueError("corrupt flat tree encoding: lengths differ or empty")
    done: list[Tree] = []
    for label, word, k, at in zip(labels, words, arity, word_at, strict=True):
        if k > len(done):
            raise ValueError("corrupt flat tree encoding: too few children")
        kids = done[len(done) - k :]
        del done[len(done) - k :]
        done.append(Tree(label, word, kids, word_at=at))
    if len(done) != 1:
        raise ValueError("corrupt flat tree encoding: more than one root")
    return done[0]


class Tree:
    """An immutable ordered tree: ``Tree(label=None, word=None, children=(), word_at=0)``.

    ``label`` is an int, a str, None or any hashable value (e.g. a binarisation mark);
    ``word`` a str or None. In a constituency tree the leaves carry the words and internal
    nodes have ``word=None``; in a dependency tree every node has a word, and ``word_at`` says
    where a node's own word sits among its children in the sentence: after the first
    ``word_at`` of them (``Tree.from_parents`` sets it; 0, the default, puts the word first).
    Equality and hashing are structural. Height, size and hash are computed once, at
    construction, from the children's (so building is bottom-up and never recurses).
    """

    __slots__ = ("label", "word", "children", "word_at", "_height", "_size", "_hash", "_flat")

    label: Any
    word: str | None
    children: tuple[Tree, ...]
    word_at: int

    def __init__(
        self,
        label: Any = None,
        word: str | None = None,
        children: Iterable[Tree] = (),
        word_at: int = 0,
    ):
        if word is not None and not isinstance(word, str):
            raise TypeError(f"Tree word must be a str or None, not {type(word).__name__}")
        if isinstance(children, Tree):
            raise TypeError("Tree children must be an iterable of Trees, not one Tree")
        kids = tuple(children)
        if word_at and (word is None or type(word_at) is not int or not 0 < word_at <= len(kids)):
            raise ValueError(
                f"Tree word_at={word_at!r}: the place of a node's word among its {len(kids)} "
                "children must be 0..number of children, and the node must have a word"
            )
        height = -1
        size = 1
        key = [label, word, word_at, len(kids)]
        for c in kids:
            if not isinstance(c, Tree):
                raise TypeError(f"Tree child must be a Tree, not {type(c).__name__}")
            if c._height > height:
                height = c._height
            size += c._size
            key.append(c._hash)
        # Slot descriptors set directly: __setattr__ is closed, and this is the hot path.
        _set_label(self, label)
        _set_word(self, word)
        _set_children(self, kids)
        _set_word_at(self, word_at)
        _set_height(self, height + 1)
        _set_size(self, size)
        _set_hash(self, hash(tuple(key)))
        _set_flat(self, None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Tree is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Tree is immutable: cannot delete {name!r}")

    # ----------------------------------------------------------------- shape

    @property
    def is_leaf(self) -> bool:
        """True when the node has no children."""
        return not self.children

    @property
    def height(self) -> int:
        """0 for a leaf, else 1 + the highest child's height (the node's level in a schedule)."""
        return self._height

    @property
    def size(self) -> int:
        """Number of nodes."""
        return self._size

    def preorder(self) -> list[Tree]:
        """Nodes parent first, children left to right; the root first."""
        out = []
        stack = [self]
        while stack:
            node = stack.pop()
            out.append(node)
            if node.children:
                stack.extend(reversed(node.children))
        return out

    def postorder(self) -> list[Tree]:
        """Nodes children first (left to right), parents after; the root last."""
        # A pre-order that visits children right to left, reversed, is this post-order.
        out = []
        stack = [self]
        while stack:
            node = stack.pop()
            out.append(node)
            if node.children:
                stack.extend(node.children)
        out.reverse()
        return out

    def leaves(self) -> list[Tree]:
        """The leaves, left to right."""
        return [node for node in self.preorder() if not node.children]

    def words(self) -> list[str | None]:
        """The leaves' words, left to right: the sentence of a constituency tree.

        For a dependency tree (words on every node) ``treelstm.formats.to_parents(tree)``
        gives every word in sentence order.
        """
        return [leaf.word for leaf in self.leaves()]

    def flat(self) -> FlatTree:
        """This tree as post-order arrays (:class:`FlatTree`); computed once and cached."""
        if self._flat is not None:
            return self._flat
        order = self.postorder()
        n = len(order)
        parent = [-1] * n
        rank = [0] * n
        done: list[int] = []  # post-order indices of subtrees not yet given to a parent
        for i, node in enumerate(order):
            k = len(node.children)
            if k:
                for r, c in enumerate(done[-k:]):
                    parent[c] = i
                    rank[c] = r
                del done[-k:]
            done.append(i)
        arrays = []
        for values in (parent, rank, [node._height for node in order]):
            a = np.array(values, dtype=np.int64)
            a.setflags(write=False)
            arrays.append(a)
        flat = FlatTree(
            parent=arrays[0],
            child_rank=arrays[1],
            height=arrays[2],
            words=tuple(node.word for node in order),
            labels=tuple(node.label for node in order),
        )
        _set_flat(self, flat)
        return flat

    # ------------------------------------------------------ equality, copying

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Tree):
            return NotImplemented
        stack = [(self, other)]
        while stack:
            a, b = stack.pop()
            if a is b:
                continue
            if (
                a._hash != b._hash
                or a._size != b._size
                or len(a.children) != len(b.children)
                or a.word != b.word
                or a.word_at != b.word_at
                or a.label != b.label
            ):
                return False
            stack.extend(zip(a.children, b.children, strict=True))
        return True

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        # A flat post-order encoding, so that pickle never recurses into children.
        order = self.postorder()
        return (
            _unflatten,
            (
                tuple(node.label for node in order),
                tuple(node.word for node in order),
                tuple(len(node.children) for node in order),
                tuple(node.word_at for node in order),
            ),
        )

    def __copy__(self) -> Tree:
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> Tree:
        return self  # immutable, and labels/words are immutable too

    # ---------------------------------------------- text (treelstm.formats.ptb)

    def to_ptb(self) -> str:
        """PTB bracket text on one line, e.g. ``"(3 (2 good) (4 film))"``.

        A dependency node writes its word among its children at its place in the sentence,
        ``"(root (nsubj (det the) cat) sat)"``: every word, in order (a display; PTB readers do
        not take it back, parent arrays do). See :func:`treelstm.formats.ptb.to_ptb`.
        """
        return _format("ptb").to_ptb(self)

    __str__ = to_ptb

    def __repr__(self) -> str:
        return _format("ptb").tree_repr(self)

    # ----------------------- readers and writers (thin entry points into formats)

    @classmethod
    def from_ptb(
        cls, text: str, label_type: Callable[[str], Any] | None = int, where: str | None = None
    ) -> Tree:
        """Parse one PTB bracketed tree, e.g. ``"(3 (2 good) (4 film))"``.

        ``label_type`` (``int`` by default) is applied to every label; Penn Treebank labels
        ("NP") need ``label_type=str``. See :func:`treelstm.formats.ptb.from_ptb`.
        """
        return _format("ptb").from_ptb(text, label_type, where, cls=cls)

    @classmethod
    def from_nltk(cls, t: Any, label_type: Callable[[str], Any] | None = int) -> Tree:
        """Convert an ``nltk.Tree``; see :func:`treelstm.formats.nltk_tree.from_nltk`."""
        return _format("nltk_tree").from_nltk(t, label_type, cls=cls)

    def to_nltk(self):
        """This tree as an ``nltk.Tree``; see :func:`treelstm.formats.nltk_tree.to_nltk`."""
        return _format("nltk_tree").to_nltk(self)

    @classmethod
    def from_parents(
        cls,
        parents: Sequence[int],
        words: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        where: str | None = None,
    ) -> Tree:
        """A dependency tree from 1-based heads (0 = root), as in SICK ``*.parents``.

        See :func:`treelstm.formats.parents.from_parents`.
        """
        return _format("parents").from_parents(parents, words, labels, where, cls=cls)

    @classmethod
    def from_cparents(
        cls,
        parents: Sequence[int],
        words: Sequence[str],
        labels: Sequence[Any] | None = None,
        where: str | None = None,
    ) -> Tree:
        """A constituency tree from parent pointers, as in SICK ``*.cparents``.

        See :func:`treelstm.formats.parents.from_cparents`.
        """
        return _format("parents").from_cparents(parents, words, labels, where, cls=cls)


def _format(name: str):
    """The module ``treelstm.formats.<name>`` (imported on first use: formats build on Tree)."""
    return importlib.import_module(f".formats.{name}", __package__)


_set_label = Tree.label.__set__  # type: ignore[attr-defined]
_set_word = Tree.word.__set__  # type: ignore[attr-defined]
_set_children = Tree.children.__set__  # type: ignore[attr-defined]
_set_word_at = Tree.word_at.__set__  # type: ignore[attr-defined]
_set_height = Tree._height.__set__  # type: ignore[attr-defined]
_set_size = Tree._size.__set__  # type: ignore[attr-defined]
_set_hash = Tree._hash.__set__  # type: ignore[attr-defined]
_set_flat = Tree._flat.__set__  # type: ignore[attr-defined]
