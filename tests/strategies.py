"""Shared hypothesis strategies for trees, forests and parent arrays.

Trees are built bottom-up from a row of leaves (never by recursive strategies), so they stay small
and shrink well: repeatedly replace a run of adjacent nodes by a new parent. The default word
alphabet holds the awkward SST cases: an accented letter, a token with a NO-BREAK SPACE inside and
PTB escapes.
"""

from __future__ import annotations

from hypothesis import strategies as st

from treelstm.tree import Tree

__all__ = [
    "WORDS",
    "LABELS",
    "trees",
    "binary_trees",
    "chains",
    "forests",
    "dependency_parents",
]

#: Words the strategies draw from; every one is a single PTB token (no ASCII space or bracket).
WORDS = st.sampled_from(["a", "good", "film", "not", "é", "8\xa01\\/2", "-LRB-", "\\*", "."])
#: SST-style 5-class labels.
LABELS = st.integers(0, 4)


def _leaf(draw, labels, words) -> Tree:
    return Tree(draw(labels), draw(words))


def _internal(draw, labels, words, internal_words, kids) -> Tree:
    return Tree(draw(labels), draw(words) if internal_words else None, kids)


@st.composite
def trees(
    draw,
    max_leaves: int = 10,
    max_children: int = 4,
    labels: st.SearchStrategy = LABELS,
    words: st.SearchStrategy = WORDS,
    internal_words: bool = False,
    max_unary: int = 3,
) -> Tree:
    """A tree with 1..``max_leaves`` leaves, internal nodes of 1..``max_children`` children.

    At most ``max_unary`` one-child nodes, so at most ``2 * max_leaves - 1 + max_unary`` nodes
    (about 20 by default). Leaves have words; internal nodes have ``word=None`` (constituency
    style, PTB round-trippable) unless ``internal_words`` (dependency style: every node a word).
    """
    n = draw(st.integers(1, max_leaves))
    row = [_leaf(draw, labels, words) for _ in range(n)]
    unary = draw(st.integers(0, max_unary))
    while len(row) > 1 or unary:
        low = 1 if unary else 2
        high = max(low, min(max_children, len(row)))
        k = draw(st.integers(low, high))
        if k == 1:
            unary -= 1
        i = draw(st.integers(0, len(row) - k))
        row[i : i + k] = [_internal(draw, labels, words, internal_words, row[i : i + k])]
    return row[0]


@st.composite
def binary_trees(
    draw,
    max_leaves: int = 10,
    labels: st.SearchStrategy = LABELS,
    words: st.SearchStrategy = WORDS,
    internal_words: bool = False,
) -> Tree:
    """A full binary tree (every internal node exactly two children), for N-ary cells."""
    n = draw(st.integers(1, max_leaves))
    row = [_leaf(draw, labels, words) for _ in range(n)]
    while len(row) > 1:
        i = draw(st.integers(0, len(row) - 2))
        row[i : i + 2] = [_internal(draw, labels, words, internal_words, row[i : i + 2])]
    return row[0]


@st.composite
def chains(
    draw,
    max_len: int = 12,
    labels: st.SearchStrategy = LABELS,
    words: st.SearchStrategy = WORDS,
    internal_words: bool = False,
) -> Tree:
    """A chain of 1..``max_len`` nodes, each with one child; the bottom one a leaf with a word."""
    node = _leaf(draw, labels, words)
    for _ in range(draw(st.integers(1, max_len)) - 1):
        node = _internal(draw, labels, words, internal_words, [node])
    return node


@st.composite
def _bushes(draw, max_children, labels, words, internal_words) -> Tree:
    """One root over 1..``max_children`` leaves."""
    k = draw(st.integers(1, max_children))
    kids = [_leaf(draw, labels, words) for _ in range(k)]
    return _internal(draw, labels, words, internal_words, kids)


def forests(
    min_size: int = 1,
    max_size: int = 8,
    max_leaves: int = 10,
    max_children: int = 4,
    labels: st.SearchStrategy = LABELS,
    words: st.SearchStrategy = WORDS,
    internal_words: bool = False,
) -> st.SearchStrategy[list[Tree]]:
    """Lists of trees of mixed shapes: single leaves, chains, bushes and general trees."""
    kw = dict(labels=labels, words=words, internal_words=internal_words)
    one = st.one_of(
        st.builds(Tree, labels, words),
        chains(max_len=max_leaves, **kw),
        _bushes(max_children, **kw),
        trees(max_leaves=max_leaves, max_children=max_children, **kw),
    )
    return st.lists(one, min_size=min_size, max_size=max_size)


@st.composite
def dependency_parents(draw, max_len: int = 12) -> list[int]:
    """A valid dependency parent array: 1-based heads, exactly one 0 (the root), no cycle."""
    n = draw(st.integers(1, max_len))
    order = draw(st.permutations(range(1, n + 1)))  # order[0] is the root
    heads = [0] * n
    for j in range(1, n):
        heads[order[j] - 1] = order[draw(st.integers(0, j - 1))]
    return heads


#: One setting of each cell switch (the paper's cell first), for tests that cover every variant.
CELL_SWITCHES = [
    {},
    {"output_gate": False},
    {"forget_input": False},
    {"double_bias": True},
    {"input_at": "leaves"},
]
