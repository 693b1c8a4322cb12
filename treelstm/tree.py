"""Immutable parse trees for Tree-LSTMs, and the readers that build them.

Tree-LSTMs (Tai, Socher & Manning 2015, "Improved Semantic Representations From Tree-Structured
Long Short-Term Memory Networks") run over two kinds of tree: constituency trees such as the
Stanford Sentiment Treebank, where words sit at the leaves and every node has a label, and
dependency trees such as SICK's, where every node is a word. Both are a :class:`Tree`.

This module reads Penn Treebank bracket text (``"(3 (2 good) (4 film))"``), the parent-pointer
arrays of the Tree-LSTM SICK layout (``*.parents``, ``*.cparents``) and ``nltk.Tree`` objects,
and flattens a tree into post-order integer arrays (:class:`FlatTree`) for the scheduler.

Nothing here recurses in Python: a 100,000-node chain can be built, compared, hashed, printed,
parsed, pickled and garbage-collected. Malformed input raises ``ValueError`` saying what is wrong
and where. No torch here.
"""

from __future__ import annotations

import gc
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Tree", "FlatTree", "read_ptb", "write_ptb", "read_parents", "normalize_token"]

# Only ASCII whitespace separates tokens: SST has leaves such as "8\xa01\/2" (a NO-BREAK SPACE
# inside one word), which Unicode-aware splitting would cut in two.
# The reader is our own loop rather than nltk.Tree.fromstring: nltk (3.10) refuses nesting deeper
# than MAX_TREE_DEPTH = 500 and runs custom token patterns under a wall-clock regex timeout, and
# the checks below, needed for clear messages, already are a full parse. The tests hold this
# reader to nltk's (ASCII-whitespace patterns) on generated trees and on SST.
_ASCII_WS = " \t\n\r\f\v"
_TOKEN_RE = re.compile(r"\(|\)|[^ \t\n\r\f\v()]+")
_INT_RE = re.compile(r"[-+]?[0-9]+")
_SNIPPET = 24


def _fail(where: str | None, message: str) -> ValueError:
    return ValueError(f"{where}: {message}" if where else message)


def _short(text: str, limit: int = _SNIPPET) -> str:
    """repr of ``text``, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _convert_label(raw: str, label_type: Callable[[str], Any] | None, where, at: str):
    """Apply ``label_type`` to a label string; ``at`` says where the label is, for messages."""
    if label_type is None or label_type is str:
        return raw
    if label_type is int:
        # Stricter than int(): no "٣", "1_0" or "\xa02", so that to_ptb gives the text back.
        if not _INT_RE.fullmatch(raw):
            raise _fail(where, f"label {_short(raw)} {at} is not an integer")
    try:
        return label_type(raw)
    except Exception as e:  # any failure of a user callable is bad input, reported as such
        name = getattr(label_type, "__name__", repr(label_type))
        raise _fail(where, f"label {_short(raw)} {at} rejected by {name}: {e}") from e


def normalize_token(token: str) -> str:
    """Undo PTB escapes for vocabulary lookup: ``-LRB-`` -> ``(``, ``1\\/2`` -> ``1/2``, ...

    Trees keep the raw form; only the embedding lookup should see the plain one.
    """
    plain = _BRACKET_ESCAPES.get(token)
    if plain is not None:
        return plain
    if "\\" in token:
        token = token.replace("\\/", "/").replace("\\*", "*")
    return token


_BRACKET_ESCAPES = {
    "-LRB-": "(",
    "-RRB-": ")",
    "-LSB-": "[",
    "-RSB-": "]",
    "-LCB-": "{",
    "-RCB-": "}",
}


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


def _unflatten(labels: tuple, words: tuple, arity: tuple) -> Tree:
    """Rebuild a tree from its post-order labels, words and child counts (the pickle form)."""
    if not (len(labels) == len(words) == len(arity)) or not labels:
        raise ValueError("corrupt flat tree encoding: lengths differ or empty")
    done: list[Tree] = []
    for label, word, k in zip(labels, words, arity, strict=True):
        if k:
            if k > len(done):
                raise ValueError("corrupt flat tree encoding: too few children")
            node = Tree(label, word, done[-k:])
            del done[-k:]
        else:
            node = Tree(label, word)
        done.append(node)
    if len(done) != 1:
        raise ValueError("corrupt flat tree encoding: more than one root")
    return done[0]


class Tree:
    """An immutable ordered tree: ``Tree(label=None, word=None, children=())``.

    ``label`` is an int, a str or None; ``word`` a str or None. In a constituency tree the leaves
    carry the words and internal nodes have ``word=None``; in a dependency tree every node has a
    word. Equality and hashing are structural. Height, size and hash are computed once, at
    construction, from the children's (so building is bottom-up and never recurses).
    """

    __slots__ = ("label", "word", "children", "_height", "_size", "_hash", "_flat")

    label: Any
    word: str | None
    children: tuple[Tree, ...]

    def __init__(self, label: Any = None, word: str | None = None, children: Iterable[Tree] = ()):
        if word is not None and not isinstance(word, str):
            raise TypeError(f"Tree word must be a str or None, not {type(word).__name__}")
        if isinstance(children, Tree):
            raise TypeError("Tree children must be an iterable of Trees, not one Tree")
        kids = tuple(children)
        height = -1
        size = 1
        key = [label, word, len(kids)]
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

        For a dependency tree (words on every node) use ``flat().words`` instead.
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
            ),
        )

    def __copy__(self) -> Tree:
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> Tree:
        return self  # immutable, and labels/words are immutable too

    # ------------------------------------------------------------ PTB output

    def _ptb_pieces(self) -> Iterable[str]:
        stack: list[Tree | str] = [self]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                yield item
                continue
            head = "(" if item.label is None else f"({item.label}"
            if item.children:
                yield head
                stack.append(")")
                for child in reversed(item.children):
                    stack.append(child)
                    stack.append(" ")
            elif item.word is None:
                yield head + ")"
            else:
                yield f"{head} {item.word})"

    def to_ptb(self) -> str:
        """PTB bracket text on one line, e.g. ``"(3 (2 good) (4 film))"``.

        A leaf writes its label and word; an internal node its label and children (its word, if
        any, is not written: dependency trees do not survive this). A None label writes nothing.
        Labels and words must not contain ASCII whitespace or brackets to be read back.
        """
        return "".join(self._ptb_pieces())

    __str__ = to_ptb

    def _ptb_faithful(self) -> str | None:
        """The from_ptb keyword for reading to_ptb() back exactly ('' or 'str'); None if lossy."""
        kinds = set()
        for node in self.preorder():
            if node.children and node.word is not None:
                return None
            for text in (node.label, node.word):
                if isinstance(text, str) and (not text or any(c in text for c in "() \t\n\r\f\v")):
                    return None
            kinds.add(type(node.label))
        if kinds == {int}:
            return ""
        if kinds == {str}:
            return ", label_type=str"
        return None

    def __repr__(self) -> str:
        limit = 160
        text = ""
        for piece in self._ptb_pieces():
            text += piece
            if len(text) > limit:
                break
        if len(text) <= limit:
            keyword = self._ptb_faithful()
            if keyword is not None:
                return f"Tree.from_ptb({text!r}{keyword})"
        else:
            text = text[:limit] + "..."
        return f"<Tree size={self._size} height={self._height} {text!r}>"

    # ---------------------------------------------------------------- readers

    @classmethod
    def from_ptb(
        cls, text: str, label_type: Callable[[str], Any] | None = int, where: str | None = None
    ) -> Tree:
        """Parse one PTB bracketed tree, e.g. ``"(3 (2 good) (4 film))"``.

        A preterminal ``(2 good)`` becomes a leaf ``Tree(2, "good")``. Tokens are separated by
        ASCII whitespace only. ``label_type`` is applied to every label (``int`` by default;
        ``str`` or None keep the strings). A root without a label and with a single subtree,
        the PTB wrapper ``"( (S ...))"``, is removed. ``where`` (e.g. ``"train.txt:12"``) is
        put in front of error messages, which give character offsets within ``text``.

        Raises ValueError on malformed text.
        """
        if not isinstance(text, str):
            raise TypeError(f"Tree.from_ptb expects a str, not {type(text).__name__}")
        # A frame is an open node: [offset of "(", label or None, label offset, word, children].
        stack: list[list[Any]] = []
        root = None
        after_open = False
        for match in _TOKEN_RE.finditer(text):
            tok = match.group()
            pos = match.start()
            if root is not None:
                if tok == ")":
                    raise _fail(
                        where, f"unbalanced brackets: ')' at offset {pos} has no matching '('"
                    )
                raise _fail(where, f"text after the tree at offset {pos}: {_short(text[pos:])}")
            if tok == "(":
                if stack and stack[-1][3] is not None:
                    raise _fail(
                        where,
                        f"node at offset {stack[-1][0]} mixes a word and subtrees "
                        f"(subtree at offset {pos})",
                    )
                stack.append([pos, None, -1, None, []])
                after_open = True
            elif tok == ")":
                if not stack:
                    raise _fail(
                        where,
                        f"unbalanced brackets: ')' at offset {pos} has no matching '('",
                    )
                start, raw, label_pos, word, kids = stack.pop()
                if raw is None:
                    if not stack and word is None and len(kids) == 1:
                        node = kids[0]  # the PTB wrapper "( (S ...))"
                    elif word is None and not kids:
                        raise _fail(where, f"empty node at offset {start}")
                    else:
                        raise _fail(
                            where,
                            f"missing label: node at offset {start} has none (only a root "
                            "wrapping a single subtree may omit it)",
                        )
                else:
                    label = _convert_label(raw, label_type, where, f"at offset {label_pos}")
                    node = cls(label, word, kids)
                if stack:
                    stack[-1][4].append(node)
                else:
                    root = node
                after_open = False
            else:
                if not stack:
                    raise _fail(where, f"expected '(' at offset {pos}, got {_short(tok)}")
                frame = stack[-1]
                if after_open:
                    frame[1] = tok
                    frame[2] = pos
                elif frame[4]:
                    raise _fail(
                        where,
                        f"node at offset {frame[0]} mixes subtrees and a word "
                        f"({_short(tok)} at offset {pos})",
                    )
                elif frame[3] is not None:
                    raise _fail(
                        where,
                        f"node at offset {frame[0]} has two words, {_short(frame[3])} and "
                        f"{_short(tok)} (offset {pos}); a leaf has one word",
                    )
                else:
                    frame[3] = tok
                after_open = False
        if stack:
            more = f" ({len(stack)} unclosed)" if len(stack) > 1 else ""
            raise _fail(
                where,
                f"unbalanced brackets: '(' at offset {stack[-1][0]} is never closed{more}",
            )
        if root is None:
            raise _fail(where, "empty line: no tree")
        return root

    @classmethod
    def from_nltk(cls, t: Any, label_type: Callable[[str], Any] | None = int) -> Tree:
        """Convert an ``nltk.Tree``: string children are words, ``(2 good)`` is a leaf.

        String labels go through ``label_type`` as in :meth:`from_ptb`; other labels are kept.
        An empty-label root with a single subtree is unwrapped. Raises ValueError on a node that
        mixes words and subtrees, has two words, or lacks a label.
        """
        import nltk

        if not isinstance(t, nltk.Tree):
            raise TypeError(f"Tree.from_nltk expects an nltk.Tree, not {type(t).__name__}")
        done: list[Tree] = []
        post = []
        stack = [t]
        while stack:
            node = stack.pop()
            post.append(node)
            stack.extend(c for c in node if isinstance(c, nltk.Tree))
        post.reverse()
        for node in post:
            at = _NltkPlace(t, node)
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
                raise ValueError(f"node {at} mixes words and subtrees")
            if len(words) > 1:
                raise ValueError(f"node {at} has {len(words)} words {words[:3]!r}; a leaf has one")
            kids = done[-k:] if k else []
            if k:
                del done[-k:]
            raw = node.label()
            if raw is None or raw == "":
                if node is t and k == 1:
                    done.append(kids[0])
                    continue
                what = "empty node" if not (k or words) else "missing label"
                raise ValueError(f"{what} {at}")
            label = _convert_label(raw, label_type, None, at) if isinstance(raw, str) else raw
            done.append(cls(label, words[0] if words else None, kids))
        return done[0]

    def to_nltk(self):
        """This tree as an ``nltk.Tree`` (labels through ``str()``, None as ``""``).

        A leaf with a word becomes a preterminal ``Tree("2", ["good"])``. Raises ValueError for
        an internal node with a word (dependency trees): nltk.Tree cannot hold both.
        """
        import nltk

        done: list[Any] = []
        for node in self.postorder():
            label = "" if node.label is None else str(node.label)
            k = len(node.children)
            if k:
                if node.word is not None:
                    raise ValueError(
                        f"to_nltk: node {label!r} has both a word ({node.word!r}) and children"
                    )
                nt = nltk.Tree(label, done[-k:])
                del done[-k:]
            else:
                nt = nltk.Tree(label, [] if node.word is None else [node.word])
            done.append(nt)
        return done[0]

    @classmethod
    def from_parents(
        cls,
        parents: Sequence[int],
        words: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        where: str | None = None,
    ) -> Tree:
        """A dependency tree from 1-based heads (0 = root), as in SICK ``*.parents``.

        Node ``i`` (1-based) has word ``words[i-1]`` and label ``labels[i-1]`` (None when not
        given); its children are its dependents in sentence order. Raises ValueError on a
        non-integer or out-of-range head, no root or several, a cycle, or length mismatch.
        """
        heads = _int_list(parents, where)
        n = len(heads)
        _check_lengths(n, words, labels, where, "parent entries")
        for i, h in enumerate(heads, 1):
            if not 0 <= h <= n:
                raise _fail(where, f"token {i}: head {h} out of range 0..{n}")
        _check_one_root(heads, where)
        _check_acyclic(heads, where)
        kids: list[list[int]] = [[] for _ in range(n + 1)]
        for i, h in enumerate(heads, 1):
            kids[h].append(i)
        return _build(cls, kids, words, labels)

    @classmethod
    def from_cparents(
        cls,
        parents: Sequence[int],
        words: Sequence[str],
        labels: Sequence[Any] | None = None,
        where: str | None = None,
    ) -> Tree:
        """A constituency tree from parent pointers, as in SICK ``*.cparents``.

        Nodes ``1..n`` (``n = len(words)``) are the tokens, leaves with ``word = words[i-1]``;
        nodes above ``n`` are internal (word None); 0 marks the root. ``labels``, if given, has
        one entry per node. Children are ordered by their leftmost token, so the leaves read
        left to right are the sentence. Raises ValueError on bad pointers (as in
        :meth:`from_parents`), a token with children, an internal node without children, or a
        constituent whose tokens are not contiguous.
        """
        if words is None:
            raise TypeError("Tree.from_cparents needs the words (nodes 1..n are the tokens)")
        heads = _int_list(parents, where)
        m = len(heads)
        n = _check_lengths(m, words, None, where, "parent entries", at_least=True)
        if labels is not None:
            _check_lengths(m, None, labels, where, "parent entries")
        for i, h in enumerate(heads, 1):
            if not 0 <= h <= m:
                raise _fail(where, f"node {i}: parent {h} out of range 0..{m}")
            if 1 <= h <= n:
                raise _fail(
                    where, f"node {i} has token {h} as its parent; tokens 1..{n} must be leaves"
                )
        _check_one_root(heads, where)
        _check_acyclic(heads, where)
        kids: list[list[int]] = [[] for _ in range(m + 1)]
        for i, h in enumerate(heads, 1):
            kids[h].append(i)
        for i in range(n + 1, m + 1):
            if not kids[i]:
                raise _fail(where, f"internal node {i} has no children")
        # Leftmost token and token count of every subtree, children before parents.
        first = list(range(m + 1))
        last = list(range(m + 1))
        count = [1] * (m + 1)
        for v in _postorder_ids(kids):
            if v > n:
                first[v] = min(first[c] for c in kids[v])
                last[v] = max(last[c] for c in kids[v])
                count[v] = sum(count[c] for c in kids[v])
                if last[v] - first[v] + 1 != count[v]:
                    raise _fail(
                        where,
                        f"node {v} spans tokens {first[v]}..{last[v]} but holds only "
                        f"{count[v]} of them: its tokens are not contiguous",
                    )
                kids[v].sort(key=first.__getitem__)
        return _build(cls, kids, words, labels, n_words=n)


_set_label = Tree.label.__set__  # type: ignore[attr-defined]
_set_word = Tree.word.__set__  # type: ignore[attr-defined]
_set_children = Tree.children.__set__  # type: ignore[attr-defined]
_set_height = Tree._height.__set__  # type: ignore[attr-defined]
_set_size = Tree._size.__set__  # type: ignore[attr-defined]
_set_hash = Tree._hash.__set__  # type: ignore[attr-defined]
_set_flat = Tree._flat.__set__  # type: ignore[attr-defined]


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


# ----------------------------------------------------------- parent arrays


def _int_list(values: Sequence[Any], where: str | None) -> list[int]:
    if isinstance(values, str | bytes):
        raise TypeError("parent array must be a sequence of integers, not a string")
    out = []
    for i, x in enumerate(values, 1):
        if isinstance(x, str):
            if not _INT_RE.fullmatch(x):
                raise _fail(where, f"entry {i} ({_short(x)}) is not an integer")
            out.append(int(x))
            continue
        try:
            out.append(operator.index(x))
        except TypeError:
            raise _fail(where, f"entry {i} ({x!r}) is not an integer") from None
    return out


def _check_lengths(n, words, labels, where, what, at_least=False) -> int:
    """Check words/labels against ``n`` entries; return the number of words (or ``n``)."""
    if n == 0:
        raise _fail(where, "empty parent array: no root")
    if words is not None:
        if isinstance(words, str):
            raise TypeError("words must be a sequence of str, not one str")
        nw = len(words)
        if (nw > n) if at_least else (nw != n):
            need = "at least as many" if at_least else "as many"
            raise _fail(where, f"{n} {what} but {nw} words (need {need})")
        if at_least and nw == 0:
            raise _fail(where, "no words")
    if labels is not None and len(labels) != n:
        raise _fail(where, f"{n} {what} but {len(labels)} labels")
    return len(words) if words is not None else n


def _check_one_root(heads: list[int], where) -> None:
    roots = [i for i, h in enumerate(heads, 1) if h == 0]
    if not roots:
        raise _fail(where, "no root: no entry is 0")
    if len(roots) == 2:
        raise _fail(where, f"two roots: tokens {roots[0]} and {roots[1]}")
    if len(roots) > 2:
        shown = ", ".join(map(str, roots[:10])) + (", ..." if len(roots) > 10 else "")
        raise _fail(where, f"{len(roots)} roots: tokens {shown}")


def _check_acyclic(heads: list[int], where) -> None:
    """Every node must reach the root by following heads; report the first cycle found."""
    n = len(heads)
    state = [0] * (n + 1)  # 0 unseen, 1 on the current walk, 2 reaches the root
    state[0] = 2
    for start in range(1, n + 1):
        path = []
        v = start
        while state[v] == 0:
            state[v] = 1
            path.append(v)
            v = heads[v - 1]
        if state[v] == 1:
            cycle = path[path.index(v) :]
            shown = cycle[:12]
            tail = " -> ..." if len(cycle) > 12 else f" -> {cycle[0]}"
            raise _fail(where, "cycle through nodes " + " -> ".join(map(str, shown)) + tail)
        for u in path:
            state[u] = 2


def _postorder_ids(kids: list[list[int]]) -> list[int]:
    """Post-order of node ids under virtual node 0 (whose only child is the root); 0 excluded."""
    out = []
    stack = list(kids[0])
    while stack:
        v = stack.pop()
        out.append(v)
        stack.extend(kids[v])
    out.reverse()
    return out


def _build(cls, kids, words, labels, n_words=None) -> Tree:
    """Build Trees bottom-up from child lists (``kids[0]`` holds the root)."""
    made: dict[int, Tree] = {}
    for v in _postorder_ids(kids):
        word = None
        if words is not None and (n_words is None or v <= n_words):
            word = words[v - 1]
        label = labels[v - 1] if labels is not None else None
        made[v] = cls(label, word, [made.pop(c) for c in kids[v]])
    (root,) = made.values()
    return root


# ------------------------------------------------------------------- files


def _read_lines(path) -> Iterable[tuple[int, str, str]]:
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
            if not line.strip(_ASCII_WS):
                if blank_at is None:
                    blank_at = lineno
                continue
            if blank_at is not None:
                raise ValueError(f"{path}:{blank_at}: empty line")
            yield lineno, where, line


def read_ptb(path, label_type: Callable[[str], Any] | None = int) -> list[Tree]:
    """Read one PTB tree per line (SST ``train.txt`` etc.); errors name ``path:lineno``.

    A blank line before the last tree is an error; a trailing newline is fine.
    """
    # Trees hold no reference cycles, but building thousands of them triggers the cyclic
    # collector over every live object (torch's included): pause it while reading.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return [
            Tree.from_ptb(line, label_type=label_type, where=where)
            for _, where, line in _read_lines(path)
        ]
    finally:
        if enabled:
            gc.enable()


def write_ptb(path, trees: Iterable[Tree]) -> None:
    """Write one tree per line in PTB bracket form (UTF-8, ``\\n`` line ends)."""
    lines = []
    for i, t in enumerate(trees):
        if not isinstance(t, Tree):
            raise TypeError(f"write_ptb: item {i} is a {type(t).__name__}, not a Tree")
        text = t.to_ptb()
        if "\n" in text or "\r" in text:
            raise ValueError(f"write_ptb: tree {i} has a line break in a label or word")
        lines.append(text + "\n")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


def read_parents(path) -> list[list[int]]:
    """Read one parent array per line (SICK ``*.parents`` / ``*.cparents``).

    Entries are whitespace-separated integers; errors name ``path:lineno``. Only the syntax is
    checked here; :meth:`Tree.from_parents` / :meth:`Tree.from_cparents` check the structure.
    """
    return [_int_list(line.split(), where) for _, where, line in _read_lines(path)]
