"""Parent arrays: dependency heads (``*.parents``) and constituency parents (``*.cparents``).

The Tree-LSTM SICK layout stores a sentence's tree as one line of integers, 1-based, ``0`` for
the root: in a dependency array entry ``i`` is the head of token ``i``; in a constituency array
nodes ``1..n`` are the tokens (leaves) and the nodes above ``n`` are the constituents. Both are
read back and written here; errors name the place (``where``, e.g. ``"a.parents:3"``).
Nothing recurses.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from typing import Any

from ..tree import Tree
from ._text import INT_RE, fail, read_lines, short

__all__ = ["from_parents", "from_cparents", "to_parents", "to_cparents", "read_parents"]

# Added to errors about an array that holds -1: the usual cause is 0-based heads.
_BASE_HINT = (
    " (heads are 1-based, 0 = root; for 0-based heads with -1 at the root pass "
    "[h + 1 for h in heads])"
)


def from_parents(
    parents: Sequence[int],
    words: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    where: str | None = None,
    *,
    cls: type[Tree] = Tree,
) -> Tree:
    """A dependency tree from 1-based heads (0 = root), as in SICK ``*.parents``.

    Node ``i`` (1-based) has word ``words[i-1]`` and label ``labels[i-1]`` (None when not
    given); its children are its dependents in sentence order, and its ``word_at`` is the
    number of them before it, so that ``to_ptb``, ``to_nltk`` and ``to_parents`` give the
    sentence back. That holds for projective trees (every subtree a contiguous span; every
    SICK parse is one); brackets cannot show a non-projective order, so for those the words
    come back in the order of the brackets (the same tree, another word order). Heads are
    1-based: an array holding -1 (0-based heads) gets a hint in its error. Raises ValueError
    on a non-integer or out-of-range head, no root or several, a cycle, or a length mismatch.
    """
    heads = _int_list(parents, where)
    n = len(heads)
    _check_lengths(n, words, labels, where, "parent entries")
    hint = _BASE_HINT if -1 in heads else ""
    for i, h in enumerate(heads, 1):
        if not 0 <= h <= n:
            raise fail(where, f"token {i}: head {h} out of range 0..{n}{hint}")
    _check_one_root(heads, where, hint)
    _check_acyclic(heads, where)
    return _build(cls, _children(heads), words, labels, dependency=True)


def from_cparents(
    parents: Sequence[int],
    words: Sequence[str],
    labels: Sequence[Any] | None = None,
    where: str | None = None,
    *,
    cls: type[Tree] = Tree,
) -> Tree:
    """A constituency tree from parent pointers, as in SICK ``*.cparents``.

    Nodes ``1..n`` (``n = len(words)``) are the tokens, leaves with ``word = words[i-1]``;
    nodes above ``n`` are internal (word None); 0 marks the root. ``labels``, if given, has
    one entry per node. Children are ordered by their leftmost token, so the leaves read
    left to right are the sentence. Raises ValueError on bad pointers (as in
    :func:`from_parents`), a token with children, an internal node without children, or a
    constituent whose tokens are not contiguous.
    """
    if words is None:
        raise TypeError("Tree.from_cparents needs the words (nodes 1..n are the tokens)")
    heads = _int_list(parents, where)
    m = len(heads)
    n = _check_lengths(m, words, None, where, "parent entries", at_least=True)
    if labels is not None:
        _check_lengths(m, None, labels, where, "parent entries")
    hint = _BASE_HINT if -1 in heads else ""
    for i, h in enumerate(heads, 1):
        if not 0 <= h <= m:
            raise fail(where, f"node {i}: parent {h} out of range 0..{m}{hint}")
        if 1 <= h <= n:
            raise fail(where, f"node {i} has token {h} as its parent; tokens 1..{n} must be leaves")
    _check_one_root(heads, where, hint)
    _check_acyclic(heads, where)
    kids = _children(heads)
    for i in range(n + 1, m + 1):
        if not kids[i]:
            raise fail(where, f"internal node {i} has no children")
    _order_by_tokens(kids, n, where)
    return _build(cls, kids, words, labels, n_words=n)


def to_parents(tree: Tree) -> tuple[list[int], list[str], list[Any]]:
    """A dependency tree as ``(heads, words, labels)``, the inverse of :func:`from_parents`.

    Words are in reading order: each node's word after its first ``word_at`` children's
    subtrees, which is the sentence order of a tree that ``from_parents`` read from a
    projective array (for a non-projective one, see there). ``heads`` are 1-based, 0 for the
    root. Every node must have a word.
    """
    nodes, up, order = _sentence_order(tree)
    position = [0] * len(nodes)
    for i, inst in enumerate(order, 1):
        position[inst] = i
    heads, words, labels = [], [], []
    for inst in order:
        node = nodes[inst]
        if node.word is None:
            raise ValueError(
                f"to_parents: node {short(str(node))} has no word; a dependency tree has a word "
                "on every node (for a constituency tree use to_cparents)"
            )
        heads.append(position[up[inst]] if up[inst] >= 0 else 0)
        words.append(node.word)
        labels.append(node.label)
    return heads, words, labels


def to_cparents(tree: Tree) -> tuple[list[int], list[str], list[Any]]:
    """A constituency tree as ``(parents, words, labels)``, the inverse of :func:`from_cparents`.

    Nodes ``1..n`` are the leaves left to right, then the internal nodes, the root last.
    Leaves must have words and internal nodes none.
    """
    nodes, up = _preorder_instances(tree)
    leaves = [i for i, node in enumerate(nodes) if not node.children]
    inner = [i for i, node in enumerate(nodes) if node.children]
    inner.reverse()  # reverse pre-order: every node after its descendants, the root last
    number = [0] * len(nodes)
    for k, inst in enumerate(leaves + inner, 1):
        number[inst] = k
    for inst in leaves + inner:
        node = nodes[inst]
        if (node.word is None) != bool(node.children):
            what = "a word and children" if node.children else "no word"
            raise ValueError(
                f"to_cparents: node {short(str(node))} has {what}; a constituency tree has "
                "words on its leaves only (for a dependency tree use to_parents)"
            )
    parents = [number[up[inst]] if up[inst] >= 0 else 0 for inst in leaves + inner]
    words = [nodes[inst].word for inst in leaves]
    labels = [nodes[inst].label for inst in leaves + inner]
    return parents, words, labels


def read_parents(path) -> list[list[int]]:
    """Read one parent array per line (SICK ``*.parents`` / ``*.cparents``).

    Entries are whitespace-separated integers; errors name ``path:lineno``. Only the syntax is
    checked here; :func:`from_parents` / :func:`from_cparents` check the structure.
    """
    return [_int_list(line.split(), where) for _, where, line in read_lines(path)]


# ----------------------------------------------------------------------------------- checks


def _int_list(values: Sequence[Any], where: str | None) -> list[int]:
    if isinstance(values, str | bytes):
        raise TypeError("parent array must be a sequence of integers, not a string")
    out = []
    for i, x in enumerate(values, 1):
        if isinstance(x, str):
            if not INT_RE.fullmatch(x):
                raise fail(where, f"entry {i} ({short(x)}) is not an integer")
            out.append(int(x))
            continue
        try:
            out.append(operator.index(x))
        except TypeError:
            raise fail(where, f"entry {i} ({x!r}) is not an integer") from None
    return out


def _check_lengths(n, words, labels, where, what, at_least=False) -> int:
    """Check words/labels against ``n`` entries; return the number of words (or ``n``)."""
    if n == 0:
        raise fail(where, "empty parent array: no root")
    if words is not None:
        if isinstance(words, str):
            raise TypeError("words must be a sequence of str, not one str")
        nw = len(words)
        if (nw > n) if at_least else (nw != n):
            need = "at least as many" if at_least else "as many"
            raise fail(where, f"{n} {what} but {nw} words (need {need})")
        if at_least and nw == 0:
            raise fail(where, "no words")
    if labels is not None and len(labels) != n:
        raise fail(where, f"{n} {what} but {len(labels)} labels")
    return len(words) if words is not None else n


def _check_one_root(heads: list[int], where, hint: str = "") -> None:
    roots = [i for i, h in enumerate(heads, 1) if h == 0]
    if not roots:
        raise fail(where, f"no root: no entry is 0{hint}")
    if len(roots) == 2:
        raise fail(where, f"two roots: tokens {roots[0]} and {roots[1]}{hint}")
    if len(roots) > 2:
        shown = ", ".join(map(str, roots[:10])) + (", ..." if len(roots) > 10 else "")
        raise fail(where, f"{len(roots)} roots: tokens {shown}{hint}")


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
            raise fail(where, "cycle through nodes " + " -> ".join(map(str, shown)) + tail)
        for u in path:
            state[u] = 2


def _order_by_tokens(kids: list[list[int]], n: int, where) -> None:
    """Sort every constituent's children by their first token; fail on a split constituent."""
    m = len(kids) - 1
    first = list(range(m + 1))  # leftmost token, token count of every subtree
    last = list(range(m + 1))
    count = [1] * (m + 1)
    for v in _postorder_ids(kids):
        if v <= n:
            continue
        first[v] = min(first[c] for c in kids[v])
        last[v] = max(last[c] for c in kids[v])
        count[v] = sum(count[c] for c in kids[v])
        if last[v] - first[v] + 1 != count[v]:
            raise fail(
                where,
                f"node {v} spans tokens {first[v]}..{last[v]} but holds only "
                f"{count[v]} of them: its tokens are not contiguous",
            )
        kids[v].sort(key=first.__getitem__)


# ---------------------------------------------------------------------------------- building


def _children(heads: list[int]) -> list[list[int]]:
    """Child lists by node id (0 = a virtual node above the root), in increasing id order."""
    kids: list[list[int]] = [[] for _ in range(len(heads) + 1)]
    for i, h in enumerate(heads, 1):
        kids[h].append(i)
    return kids


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


def _build(cls, kids, words, labels, n_words=None, dependency=False) -> Tree:
    """Build Trees bottom-up from child lists (``kids[0]`` holds the root)."""
    made: dict[int, Tree] = {}
    for v in _postorder_ids(kids):
        word = None
        if words is not None and (n_words is None or v <= n_words):
            word = words[v - 1]
        label = labels[v - 1] if labels is not None else None
        # A dependency node's word sits after the dependents that precede it in the sentence.
        at = bisect.bisect_left(kids[v], v) if dependency and word is not None else 0
        made[v] = cls(label, word, [made.pop(c) for c in kids[v]], word_at=at)
    (root,) = made.values()
    return root


def _sentence_order(tree: Tree) -> tuple[list[Tree], list[int], list[int]]:
    """(nodes, parent, order): every node occurrence numbered as first met (the same subtree
    object may occur twice), its parent's number (-1 at the root), and the numbers in the
    order the words are read (a node's word after its first ``word_at`` children)."""
    nodes: list[Tree] = []
    up: list[int] = []
    order: list[int] = []
    stack: list[tuple[Tree, int, int]] = [(tree, -1, -1)]  # (node, parent, own number if met)
    while stack:
        node, parent, me = stack.pop()
        if me >= 0:
            order.append(me)
            continue
        me = len(nodes)
        nodes.append(node)
        up.append(parent)
        k = node.word_at
        stack.extend((c, me, -1) for c in reversed(node.children[k:]))
        stack.append((node, parent, me))
        stack.extend((c, me, -1) for c in reversed(node.children[:k]))
    return nodes, up, order


def _preorder_instances(tree: Tree) -> tuple[list[Tree], list[int]]:
    """Every node occurrence in pre-order, and the pre-order number of its parent (-1)."""
    nodes: list[Tree] = []
    up: list[int] = []
    stack: list[tuple[Tree, int]] = [(tree, -1)]
    while stack:
        node, parent = stack.pop()
        me = len(nodes)
        nodes.append(node)
        up.append(parent)
        stack.extend((c, me) for c in reversed(node.children))
    return nodes, up
