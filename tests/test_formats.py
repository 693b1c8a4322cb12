"""treelstm.formats beyond the PTB basics of test_tree.py: dependency trees shown and stored
faithfully, parent arrays both ways, index-base and label hints, and binarisation with its
inverse."""

from __future__ import annotations

import gc
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm import Collapsed, Factored, Tree, binarize, unbinarize, write_ptb
from treelstm.formats import from_nltk, to_cparents, to_nltk, to_parents

from .strategies import binary_trees, chains, dependency_parents, trees

FAST = settings(max_examples=60, deadline=None)

PTB_LABELS = st.sampled_from(["S", "NP", "VP", "PP", "DT", "NN"])


# ------------------------------------------------------------------------ dependency trees


def sentence_tree():
    """'the cat sat on the mat' with its dependency relations as labels."""
    words = "the cat sat on the mat".split()
    heads = [2, 3, 0, 3, 6, 4]
    labels = ["det", "nsubj", "root", "prep", "det", "pobj"]
    return Tree.from_parents(heads, words, labels), heads, words, labels


def test_dependency_tree_shows_every_word_in_order():
    """The issue's example: cat, sat, on and mat are no longer lost in the text or in nltk."""
    t, _, words, _ = sentence_tree()
    text = "(root (nsubj (det the) cat) sat (prep on (pobj (det the) mat)))"
    assert t.to_ptb() == str(t) == text
    nt = t.to_nltk()
    assert nt.leaves() == words
    assert str(nt) == text
    assert repr(t) == f"<Tree size=6 height=3 {text!r}>"  # not from_ptb: it cannot read it back


def projective(heads: list[int]) -> bool:
    """Every token between a dependent and its head hangs (transitively) under that head."""

    def under(j: int, h: int) -> bool:
        while j != 0:
            if j == h:
                return True
            j = heads[j - 1]
        return False

    return all(
        under(j, h) for i, h in enumerate(heads, 1) if h for j in range(min(i, h) + 1, max(i, h))
    )


@FAST
@given(dependency_parents())
def test_to_parents_inverts_from_parents(heads):
    """The same tree comes back from its arrays; for a projective tree (every parse in SICK)
    the arrays themselves come back, and the text and nltk leaves are the sentence."""
    n = len(heads)
    words = [f"w{i}" for i in range(1, n + 1)]
    labels = [f"L{i}" for i in range(1, n + 1)]
    t = Tree.from_parents(heads, words, labels)
    back = to_parents(t)
    assert Tree.from_parents(*back) == t
    assert pickle.loads(pickle.dumps(t)) == t
    if projective(heads):
        assert back == (heads, words, labels)
        assert to_nltk(t).leaves() == words
        shown = [tok.rstrip(")") for tok in t.to_ptb().split() if tok.startswith("w")]
        assert shown == words
    else:  # brackets cannot show a non-projective order: the words come in bracket order
        assert sorted(back[1], key=lambda w: int(w[1:])) == words and back[1] != words


def test_to_parents_needs_words_and_to_cparents_refuses_dependency_trees():
    t, *_ = sentence_tree()
    with pytest.raises(ValueError, match="has no word; a dependency tree"):
        to_parents(Tree.from_ptb("(3 (2 a) (1 b))"))
    with pytest.raises(ValueError, match="for a dependency tree use to_parents"):
        to_cparents(t)


def test_deep_dependency_chain_never_recurses():
    """100,000 tokens, each the head of the next: text, arrays and nltk without recursion."""
    n = 100_000
    heads = [0, *range(1, n)]
    words = ["w"] * n
    gc.freeze()
    try:
        t = Tree.from_parents(heads, words)
        assert to_parents(t) == (heads, words, [None] * n)
        assert t.to_ptb().count("w") == n
        # nltk's own leaves() recurses; count the words of the nltk tree with a stack instead.
        stack, found = [to_nltk(t)], 0
        while stack:
            node = stack.pop()
            found += sum(isinstance(c, str) for c in node)
            stack.extend(c for c in node if not isinstance(c, str))
        assert found == n
    finally:
        gc.unfreeze()


@FAST
@given(trees(max_children=5))
def test_to_cparents_inverts_from_cparents(t):
    """A constituency tree written as parent pointers reads back equal."""
    parents, words, labels = to_cparents(t)
    assert words == t.words() and len(parents) == t.size
    assert Tree.from_cparents(parents, words, labels) == t


ZERO_BASED = [
    ("from_parents", [1, 2, -1, 2], "token 3: head -1 out of range"),
    ("from_cparents", [3, 3, -1], "node 3: parent -1 out of range"),
]


@pytest.mark.parametrize(("method", "heads", "fragment"), ZERO_BASED)
def test_zero_based_arrays_say_heads_are_one_based(method, heads, fragment):
    """A -1 in the array (the root of 0-based heads) gets a hint, after the usual message."""
    words = ["A", "dog", "runs", "fast"][: len(heads) if method == "from_parents" else 2]
    with pytest.raises(ValueError) as info:
        getattr(Tree, method)(heads, words, where="a.parents:1")
    message = str(info.value)
    assert message.startswith("a.parents:1: " + fragment), message
    assert "heads are 1-based, 0 = root" in message and "[h + 1 for h in heads]" in message


def test_penn_treebank_labels_get_a_hint():
    """from_nltk / from_ptb on Penn Treebank labels say to pass label_type=str and a LabelMap."""
    import nltk

    text = "(S (NP (DT the) (NN cat)) (VP (VBD sat)))"
    for read in (lambda: from_nltk(nltk.Tree.fromstring(text)), lambda: Tree.from_ptb(text)):
        with pytest.raises(ValueError, match="not an integer") as info:
            read()
        assert "label_type=str" in str(info.value) and "LabelMap.fit" in str(info.value)
    assert from_nltk(nltk.Tree.fromstring(text), label_type=str) == Tree.from_ptb(
        text, label_type=str
    )


def test_write_ptb_is_atomic_and_refuses_dependency_trees(tmp_path):
    """A refused write leaves the old file whole and no temporary file behind."""
    path = tmp_path / "trees.txt"
    write_ptb(path, [Tree(1, "a")])
    t, *_ = sentence_tree()
    with pytest.raises(ValueError, match="dependency tree.*to_parents"):
        write_ptb(path, [Tree(2, "b"), t])
    with pytest.raises(TypeError, match="item 0 is a str"):
        write_ptb(path, ["(1 a)"])
    assert path.read_text() == "(1 a)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trees.txt"]


def test_word_at_is_checked():
    """word_at needs a word and must lie in 0..number of children."""
    leaf = Tree(None, "x")
    assert Tree(None, "w", [leaf, leaf], word_at=2).to_ptb() == "( ( x) ( x) w)"
    for bad in (dict(word_at=3), dict(word_at=-1), dict(word_at=1, word=None)):
        kw = {"word": "w", **bad}
        with pytest.raises(ValueError, match="word_at"):
            Tree(None, kw.pop("word"), [leaf, leaf], **kw)


# ----------------------------------------------------------------------------- binarisation


def max_fan_out(t: Tree) -> int:
    return max(len(n.children) for n in t.preorder())


GENERAL = st.one_of(
    trees(max_children=6, max_unary=4),
    trees(max_children=5, labels=PTB_LABELS),
    trees(max_children=4, labels=st.one_of(st.none(), PTB_LABELS)),
    chains(),
    binary_trees(),
)


@FAST
@given(GENERAL, st.sampled_from(["right", "left"]), st.booleans())
def test_unbinarize_inverts_binarize(t, factor, collapse):
    """Round trip on generated trees; at most 2 children (exactly 0 or 2 when collapsing);
    leaves, words and their order kept."""
    b = binarize(t, factor, collapse_unary=collapse)
    assert max_fan_out(b) <= 2
    if collapse:
        assert all(len(n.children) in (0, 2) for n in b.preorder())
    assert b.words() == t.words()
    assert unbinarize(b) == t
    assert binarize(b, factor, collapse_unary=collapse) == b  # nothing left to do


@FAST
@given(binary_trees())
def test_binary_trees_are_left_alone(t):
    assert binarize(t) == t == unbinarize(t)


def test_binarize_hand_examples():
    """Right and left factoring, unary chains collapsed into one node, as text."""
    t = Tree.from_ptb("(S (NP (DT a) (JJ b) (NN c) (NN d)) (VP (VB e)))", label_type=str)
    assert str(binarize(t)) == "(S (NP (DT a) (NP| (JJ b) (NP| (NN c) (NN d)))) (VP (VB e)))"
    left = "(S (NP (NP| (NP| (DT a) (JJ b)) (NN c)) (NN d)) (VP (VB e)))"
    assert str(binarize(t, "left")) == left
    collapsed = binarize(t, collapse_unary=True)
    assert str(collapsed) == "(S (NP (DT a) (NP| (JJ b) (NP| (NN c) (NN d)))) (VP+VB e))"
    assert collapsed.children[1] == Tree(Collapsed(("VP", "VB")), "e")
    assert collapsed.children[0].children[1].label == Factored("NP")
    chain = Tree.from_ptb("(S (VP (NP (DT a) (NN b) (NN c))))", label_type=str)
    once = binarize(chain, collapse_unary=True)
    assert once.label == Collapsed(("S", "VP", "NP")) and len(once.children) == 2
    assert unbinarize(once) == chain


def test_binarize_errors_name_the_way_out():
    t, *_ = sentence_tree()
    with pytest.raises(ValueError, match="dependency tree.*Child-Sum"):
        binarize(t)
    with pytest.raises(ValueError, match="factor must be 'right' or 'left'"):
        binarize(Tree(1, "a"), "middle")
    with pytest.raises(TypeError, match="expects a Tree"):
        binarize("(1 a)")
    with pytest.raises(ValueError, match="the root is labelled"):
        unbinarize(Tree(Factored("NP"), None, [Tree("A", "a"), Tree("B", "b")]))
    edited = Tree("VP", None, [Tree(Factored("NP"), None, [Tree("A", "a"), Tree("B", "b")])])
    with pytest.raises(ValueError, match="added for label 'NP' sits under label 'VP'"):
        unbinarize(edited)
    with pytest.raises(ValueError, match="2 or more labels"):
        Collapsed(("S",))


def test_binarize_wide_and_deep_trees_never_recurse():
    """A root over 20,000 leaves becomes a 20,000-deep chain of factored nodes, and back."""
    n = 20_000
    gc.freeze()
    try:
        t = Tree(1, None, [Tree(0, "w") for _ in range(n)])
        for factor in ("right", "left"):
            b = binarize(t, factor)
            assert b.height == n - 1 and max_fan_out(b) == 2
            assert unbinarize(b) == t
        deep = Tree(0, "w")
        for i in range(n):
            deep = Tree(i % 3, None, [deep])
        flat = binarize(deep, collapse_unary=True)
        assert flat.size == 1 and len(flat.label.labels) == n + 1
        assert unbinarize(flat) == deep
    finally:
        gc.unfreeze()
