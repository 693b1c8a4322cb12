"""Tests for treelstm.tree: parsing, shape, flattening, parent arrays, and no Python recursion."""

from __future__ import annotations

import copy
import gc
import os
import pickle
from collections import Counter
from pathlib import Path

import nltk
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm.formats import normalize_token, read_parents, read_ptb, write_ptb
from treelstm.tree import FlatTree, Tree

from .strategies import binary_trees, chains, dependency_parents, forests, trees

FAST = settings(max_examples=60, deadline=None)
FUZZ = settings(max_examples=200, deadline=None)

DATA = os.environ.get("TREELSTM_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="TREELSTM_DATA is not set")

# nltk's own reader, told to split on ASCII whitespace only: the oracle for our parser.
_ASCII_TOKEN = r"[^ \t\n\r\f\v()]+"


def nltk_parse(text: str) -> nltk.Tree:
    return nltk.Tree.fromstring(text, node_pattern=_ASCII_TOKEN, leaf_pattern=_ASCII_TOKEN)


# ------------------------------------------ small, obviously right recursive versions


def ref_height(t):
    return 1 + max(ref_height(c) for c in t.children) if t.children else 0


def ref_size(t):
    return 1 + sum(ref_size(c) for c in t.children)


def ref_leaves(t):
    return [x for c in t.children for x in ref_leaves(c)] if t.children else [t]


def ref_postorder(t):
    return [x for c in t.children for x in ref_postorder(c)] + [t]


def ref_preorder(t):
    return [t] + [x for c in t.children for x in ref_preorder(c)]


def ref_ptb(t):
    if not t.children:
        return f"({t.label} {t.word})"
    return f"({t.label}" + "".join(" " + ref_ptb(c) for c in t.children) + ")"


def ref_flat(t, parent=-1, rank=0, out=None):
    """(parent, rank, height, word, label) rows in post-order, parent as a post-order index."""
    out = [] if out is None else out
    kids = [ref_flat(c, None, r, out) for r, c in enumerate(t.children)]
    me = len(out)
    out.append([parent, rank, ref_height(t), t.word, t.label])
    for k in kids:
        out[k][0] = me
    return me if parent is None else out


def same_nodes(a, b):
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- round trips


@FAST
@given(trees())
def test_ptb_round_trip(t):
    """from_ptb(to_ptb(t)) == t, and to_ptb matches the recursive writer."""
    text = t.to_ptb()
    assert text == ref_ptb(t) == str(t)
    assert Tree.from_ptb(text) == t


@FAST
@given(trees(labels=st.sampled_from(["S", "NP", "VP", "-NONE-", "3"])))
def test_ptb_round_trip_string_labels(t):
    """With label_type=str, Penn Treebank style labels survive a write/read round trip."""
    assert Tree.from_ptb(t.to_ptb(), label_type=str) == t
    assert Tree.from_ptb(t.to_ptb(), label_type=None) == t


@FAST
@given(trees())
def test_parser_agrees_with_nltk(t):
    """Our parser and nltk's (ASCII-whitespace tokens) read the same text to the same tree."""
    text = t.to_ptb()
    assert Tree.from_nltk(nltk_parse(text)) == Tree.from_ptb(text)


@FAST
@given(trees())
def test_nltk_round_trip(t):
    """from_nltk(to_nltk(t)) == t; nltk labels are the str() of ours."""
    nt = t.to_nltk()
    assert isinstance(nt, nltk.Tree) and nt.label() == str(t.label)
    assert Tree.from_nltk(nt) == t


@FAST
@given(forests())
def test_pickle_and_copy_round_trip(forest):
    """pickle gives back equal trees; copy and deepcopy return the (immutable) tree itself."""
    back = pickle.loads(pickle.dumps(forest))
    assert back == forest
    assert [hash(t) for t in back] == [hash(t) for t in forest]
    assert all(copy.copy(t) is t and copy.deepcopy(t) is t for t in forest)


@FAST
@given(forests(max_size=5))
def test_write_read_file_round_trip(tmp_path_factory, forest):
    """write_ptb then read_ptb gives the same trees, one per line."""
    path = tmp_path_factory.mktemp("ptb") / "trees.txt"
    write_ptb(path, forest)
    assert path.read_text(encoding="utf-8").count("\n") == len(forest)
    assert read_ptb(path) == forest


@FAST
@given(trees())
def test_repr_evaluates_back(t):
    """A tree's repr is Python that rebuilds it, or (when long) a truncated summary."""
    text = repr(t)
    if len(t.to_ptb()) <= 160:
        assert eval(text, {"Tree": Tree}) == t
    else:
        assert text.startswith(f"<Tree size={t.size} height={t.height} '(") and len(text) < 220


# ------------------------------------------------------------- shape and order


@FAST
@given(st.one_of(trees(), binary_trees(), chains(), trees(internal_words=True)))
def test_shape_matches_recursive_reference(t):
    """height, size, leaves, words, pre-/post-order agree with plain recursive versions."""
    assert t.height == ref_height(t)
    assert t.size == ref_size(t) == len(t.postorder())
    assert same_nodes(t.leaves(), ref_leaves(t))
    assert t.words() == [leaf.word for leaf in ref_leaves(t)]
    assert same_nodes(t.postorder(), ref_postorder(t))
    assert same_nodes(t.preorder(), ref_preorder(t))
    assert t.is_leaf == (t.size == 1)


@FAST
@given(st.one_of(trees(), chains(), trees(internal_words=True)))
def test_flat_matches_recursive_reference(t):
    """flat() equals a recursive post-order flattening, and is cached."""
    rows = ref_flat(t)
    f = t.flat()
    assert isinstance(f, FlatTree) and len(f) == t.size
    assert f.parent.tolist() == [r[0] for r in rows]
    assert f.child_rank.tolist() == [r[1] for r in rows]
    assert f.height.tolist() == [r[2] for r in rows]
    assert f.words == tuple(r[3] for r in rows)
    assert f.labels == tuple(r[4] for r in rows)
    assert t.flat() is f


@FAST
@given(st.one_of(trees(max_children=5), binary_trees()))
def test_flat_is_consistent(t):
    """Parents come after children, the root is last, ranks count siblings, heights stack."""
    f = t.flat()
    n = len(f)
    assert all(a.dtype == np.int64 and a.shape == (n,) for a in (f.parent, f.child_rank, f.height))
    assert not f.parent.flags.writeable
    assert f.parent[-1] == -1 and (f.parent[:-1] > np.arange(n - 1)).all()
    assert f.child_rank[-1] == 0
    for p in range(n):
        kids = np.flatnonzero(f.parent == p)
        assert f.child_rank[kids].tolist() == list(range(len(kids)))
        expect = 1 + f.height[kids].max() if len(kids) else 0
        assert f.height[p] == expect
    assert f == Tree.from_ptb(t.to_ptb()).flat()


@FAST
@given(trees(), trees())
def test_equality_is_structural(a, b):
    """Trees are equal exactly when their PTB text is; equal trees hash equal."""
    assert (a == b) == (a.to_ptb() == b.to_ptb())
    assert (a != b) == (a.to_ptb() != b.to_ptb())
    twin = Tree.from_ptb(a.to_ptb())
    assert twin == a and hash(twin) == hash(a) and twin is not a


def test_equality_sees_every_field():
    """Changing the label, word or child order of one node breaks equality."""
    t = Tree.from_ptb("(3 (2 good) (4 film))")
    assert t != Tree.from_ptb("(3 (2 good) (3 film))")
    assert t != Tree.from_ptb("(3 (2 good) (4 movie))")
    assert t != Tree.from_ptb("(3 (4 film) (2 good))")
    assert t != Tree(3, None, [Tree(2, "good")])
    assert t != Tree(3, "x", t.children)
    assert t != "(3 (2 good) (4 film))"
    assert Tree(2, "a") != Tree("2", "a")
    assert len({t, Tree.from_ptb(t.to_ptb()), Tree(3, "x", t.children)}) == 2


def test_tree_is_immutable_and_checks_its_children():
    """Attributes cannot be set or deleted; children must be Trees and are kept as a tuple."""
    t = Tree(1, None, [Tree(2, "a")])
    assert isinstance(t.children, tuple)
    for name in ("label", "word", "children", "other"):
        with pytest.raises(AttributeError):
            setattr(t, name, 0)
    with pytest.raises(AttributeError):
        del t.label
    with pytest.raises(TypeError, match="not str"):
        Tree(1, None, ["a"])
    with pytest.raises(TypeError):
        Tree(1, None, Tree(2, "a"))
    with pytest.raises(TypeError):
        Tree(1, 5)
    assert Tree(1, None, (c for c in t.children)) == t


def test_small_examples():
    """Hand-checked values for one SST-style tree."""
    t = Tree.from_ptb("(3 (2 (2 The) (2 Rock)) (4 (3 is) (4 great)))")
    assert (t.height, t.size) == (2, 7)
    assert t.words() == ["The", "Rock", "is", "great"]
    assert [n.label for n in t.postorder()] == [2, 2, 2, 3, 4, 4, 3]
    assert [n.label for n in t.preorder()] == [3, 2, 2, 2, 4, 3, 4]
    f = t.flat()
    assert f.parent.tolist() == [2, 2, 6, 5, 5, 6, -1]
    assert f.child_rank.tolist() == [0, 1, 0, 0, 1, 1, 0]
    assert f.height.tolist() == [0, 0, 1, 0, 0, 1, 2]
    assert f.words == ("The", "Rock", None, "is", "great", None, None)
    leaf = Tree.from_ptb("(2 good)")
    assert leaf == Tree(2, "good") and leaf.is_leaf and leaf.height == 0
    assert Tree.from_ptb("(NP (DT a) (NN dog))", label_type=str).label == "NP"
    assert Tree.from_ptb("  (2 a)\n") == Tree(2, "a")
    assert Tree.from_ptb("( (2 a))") == Tree(2, "a")  # PTB wrapper, unwrapped
    assert Tree.from_ptb("(  (2 a))") == Tree(2, "a")
    assert Tree.from_ptb("(3)") == Tree(3)  # a leaf without a word round-trips too
    assert Tree(None, None, [Tree(2, "a")]).to_ptb() == "( (2 a))"
    assert repr(Tree(2, "a")) == "Tree.from_ptb('(2 a)')"


def test_normalize_token():
    """PTB escapes map to plain characters; other tokens are unchanged."""
    cases = {
        "-LRB-": "(",
        "-RRB-": ")",
        "-LSB-": "[",
        "-RSB-": "]",
        "-LCB-": "{",
        "-RCB-": "}",
        "\\/": "/",
        "\\*": "*",
        "1\\/2": "1/2",
        "8\xa01\\/2": "8\xa01/2",
        "\\*\\*": "**",
        "é": "é",
        "good": "good",
        "-LRB-s": "-LRB-s",
    }
    assert {k: normalize_token(k) for k in cases} == cases


# ------------------------------------------------------- deep trees, no recursion

N_DEEP = 100_000


@pytest.fixture
def frozen_gc():
    """Move objects that exist already (torch, imported by conftest) out of the collector's way,
    so that full collections during a 100,000-node build don't rescan them; unfrozen after."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_deep_chain_never_recurses(frozen_gc):
    """A 100,000-node chain: build, shape, flat, ==, hash, text, nltk, pickle, copy, gc."""
    a = Tree(0, "w")
    for i in range(N_DEEP - 1):
        a = Tree(i % 5, None, [a])
    b = Tree.from_ptb(a.to_ptb())
    assert (a.height, a.size) == (N_DEEP - 1, N_DEEP)
    assert len(a.postorder()) == len(a.preorder()) == N_DEEP and len(a.leaves()) == 1
    f = a.flat()
    assert f.parent[-1] == -1 and (f.parent[:-1] == np.arange(1, N_DEEP)).all()
    assert b == a and hash(b) == hash(a) and b != Tree(9, None, [a])
    assert str(a) == b.to_ptb() and len(repr(a)) < 200
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.copy(a) is a and copy.deepcopy(a) is a
    assert Tree.from_nltk(a.to_nltk()) == a
    chain = Tree.from_parents([*range(2, N_DEEP + 1), 0])
    assert chain.height == N_DEEP - 1 and chain.flat().parent[0] == 1
    del a, b, f, chain
    gc.collect()


def test_wide_tree(frozen_gc):
    """One root over 20,000 leaves works the same."""
    n = 20_000
    t = Tree(1, None, [Tree(0, "w") for _ in range(n)])
    assert (t.height, t.size) == (1, n + 1)
    assert Tree.from_ptb(t.to_ptb()) == t
    assert pickle.loads(pickle.dumps(t)) == t
    assert t.flat().child_rank[-2] == n - 1


# --------------------------------------------------------------- parent arrays


def to_cparents(t):
    """A tree as (cparents, words, labels): tokens 1..n left to right, internal nodes after."""
    leaves = t.leaves()
    index = {id(leaf): i for i, leaf in enumerate(leaves, 1)}
    for node in t.postorder():
        if node.children:
            index[id(node)] = len(index) + 1
    parents = [0] * len(index)
    labels = [None] * len(index)
    for node in t.preorder():
        labels[index[id(node)] - 1] = node.label
        for c in node.children:
            parents[index[id(c)] - 1] = index[id(node)]
    return parents, [leaf.word for leaf in leaves], labels


@FAST
@given(trees(max_children=5))
def test_from_cparents_inverts_to_cparents(t):
    """A constituency tree written as parent pointers reads back equal, in sentence order."""
    parents, words, labels = to_cparents(t)
    assert Tree.from_cparents(parents, words, labels) == t
    back = Tree.from_cparents(parents, words)
    assert back.words() == words and back.size == t.size


@FAST
@given(trees(max_children=5), st.randoms(use_true_random=False))
def test_from_cparents_ignores_internal_numbering(t, rnd):
    """Renumbering the internal nodes does not change the tree (children follow the tokens)."""
    parents, words, labels = to_cparents(t)
    n, m = len(words), len(parents)
    perm = list(range(n + 1, m + 1))
    rnd.shuffle(perm)
    new = dict(zip(range(m + 1), [*range(n + 1), *perm], strict=True))
    parents2, labels2 = [0] * m, [None] * m
    for i in range(1, m + 1):
        parents2[new[i] - 1] = new[parents[i - 1]]
        labels2[new[i] - 1] = labels[i - 1]
    assert Tree.from_cparents(parents2, words, labels2) == t


@FAST
@given(dependency_parents())
def test_from_parents_keeps_heads_and_sentence_order(heads):
    """Every token hangs under its head, dependents in sentence order; parents, labels kept."""
    n = len(heads)
    words = [f"w{i}" for i in range(1, n + 1)]
    t = Tree.from_parents(heads, words, labels=list(range(1, n + 1)))
    assert t.size == n and t.word == words[heads.index(0)] and t.label == heads.index(0) + 1
    seen = {}
    for node in t.preorder():
        ids = [c.label for c in node.children]
        assert ids == sorted(ids)
        for c in node.children:
            seen[c.label] = node.label
    assert [seen.get(i, 0) for i in range(1, n + 1)] == heads
    assert all(node.word == f"w{node.label}" for node in t.preorder())


def test_from_parents_hand_example():
    """'A dog runs fast': runs is the root over dog (over A) and fast, in order."""
    t = Tree.from_parents([2, 3, 0, 3], ["A", "dog", "runs", "fast"])
    # word_at: "dog" comes after its dependent "A", "runs" after "dog" and before "fast".
    dog = Tree(None, "dog", [Tree(None, "A")], word_at=1)
    assert t == Tree(None, "runs", [dog, Tree(None, "fast")], word_at=1)
    assert t != Tree(None, "runs", [dog, Tree(None, "fast")])  # "runs A dog fast"
    assert Tree.from_parents(["2", "0"]) == Tree(None, None, [Tree()])
    assert Tree.from_parents(np.array([0])) == Tree()


def test_from_cparents_hand_examples():
    """Children are ordered by their first token, whatever the node numbers say."""
    a, b, c = Tree(None, "a"), Tree(None, "b"), Tree(None, "c")
    assert Tree.from_cparents([3, 3, 0], ["a", "b"]) == Tree(None, None, [a, b])
    assert Tree.from_cparents([5, 4, 4, 5, 0], ["a", "b", "c"]) == Tree(
        None, None, [a, Tree(None, None, [b, c])]
    )
    # node 5's children are [3, 4] by number, but node 4 starts at token 1
    got = Tree.from_cparents([4, 4, 5, 5, 0], "a b c".split(), labels=[1, 2, 3, 4, 5])
    assert got.to_ptb() == "(5 (4 (1 a) (2 b)) (3 c))"
    assert Tree.from_cparents([0], ["a"]) == a


@needs_data
def test_sick_first_lines():
    """First 50 SICK train pairs (side a): trees of the right size, words in sentence order."""
    root = Path(DATA) / "sick" / "train"
    toks = (root / "a.toks").read_text(encoding="utf-8").splitlines()[:50]
    parents = read_parents(root / "a.parents")[:50]
    cparents = read_parents(root / "a.cparents")[:50]
    for i, (line, p, c) in enumerate(zip(toks, parents, cparents, strict=True)):
        words = line.split(" ")
        where = f"a.toks:{i + 1}"
        dep = Tree.from_parents(p, words, where=where)
        assert dep.size == len(words) and Counter(dep.flat().words) == Counter(words)
        con = Tree.from_cparents(c, words, where=where)
        assert con.words() == words and con.size == len(c)
        assert all(n.word is None for n in con.preorder() if n.children)
    first = Tree.from_parents(parents[0], toks[0].split(" "))
    assert first.word == "playing"  # "A group of kids is playing in a yard ..."


# -------------------------------------------------------------------- SST data


@pytest.fixture(scope="module")
def sst():
    """{split: (lines, trees)} for the three SST files, read once (collector frozen as above)."""
    out = {}
    gc.freeze()
    for split in ("train", "dev", "test"):
        path = Path(DATA) / "sst" / f"{split}.txt"
        lines = path.read_text(encoding="utf-8").split("\n")
        assert lines[-1] == ""  # one trailing newline, no blank lines
        out[split] = (lines[:-1], read_ptb(path))
    gc.unfreeze()
    return out


@needs_data
def test_sst_round_trip_every_line(sst):
    """Every SST line parses and writes back byte for byte; counts match the README."""
    expected = {"train": (8544, 318_582), "dev": (1101, 41_447), "test": (2210, 82_600)}
    for split, (n_lines, n_nodes) in expected.items():
        lines, ts = sst[split]
        assert len(ts) == len(lines) == n_lines
        assert [t.to_ptb() for t in ts] == lines
        assert sum(t.size for t in ts) == n_nodes
        assert all(isinstance(n.label, int) and 0 <= n.label <= 4 for t in ts for n in t.preorder())
    roots = Counter(t.label for t in sst["dev"][1])
    assert [roots[k] for k in range(5)] == [139, 289, 229, 279, 165]
    dev_lines, dev = sst["dev"]
    assert [Tree.from_nltk(nltk_parse(line)) for line in dev_lines] == dev


@needs_data
def test_sst_no_break_space_tokens_stay_whole(sst):
    """Train lines 4342, 5799, 7409 each keep their NO-BREAK SPACE token as one word."""
    lines, ts = sst["train"]
    found = {
        i + 1: [w for w in t.words() if "\xa0" in w] for i, t in enumerate(ts) if "\xa0" in str(t)
    }
    assert found == {4342: ["8\xa01\\/2"], 5799: ["2\xa01\\/2"], 7409: ["2\xa01\\/2"]}
    assert normalize_token("8\xa01\\/2") == "8\xa01/2"
    with pytest.raises(ValueError, match="2 words"):  # nltk's default split cuts it in two
        Tree.from_nltk(nltk.Tree.fromstring(lines[4341]))


# ------------------------------------------------------------------ bad input

BAD_PTB = [
    ("", "empty line"),
    (" \t ", "empty line"),
    ("()", "empty node at offset 0"),
    ("(3 ( ) )", "empty node at offset 3"),
    ("( (2 a) (3 b))", "missing label: node at offset 0"),
    ("(2 ( (3 a)))", "missing label: node at offset 3"),
    ("(2 a b)", "two words, 'a' and 'b'"),
    ("(2 (3 a) b)", "mixes subtrees and a word ('b' at offset 9)"),
    ("(2 a (3 b))", "mixes a word and subtrees (subtree at offset 5)"),
    ("(NP (2 a))", "label 'NP' at offset 1 is not an integer"),
    ("(2 (1.5 a))", "label '1.5' at offset 4 is not an integer"),
    ("(3 (2 a)", "'(' at offset 0 is never closed"),
    ("(3 (2 (1 a)", "'(' at offset 3 is never closed (2 unclosed)"),
    ("(3 (2 a)))", "')' at offset 9 has no matching '('"),
    (")", "')' at offset 0 has no matching '('"),
    ("(3 a) (2 b)", "text after the tree at offset 6"),
    ("(3 a) b", "text after the tree at offset 6: 'b'"),
    ("x (3 a)", "expected '(' at offset 0, got 'x'"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_PTB)
def test_from_ptb_rejects_malformed_text(text, fragment):
    """Each malformed line raises ValueError naming the problem, its offset and the place."""
    with pytest.raises(ValueError) as info:
        Tree.from_ptb(text, where="trees.txt:7")
    message = str(info.value)
    assert message.startswith("trees.txt:7: ") and fragment in message, message


def test_label_type_failures_become_value_errors():
    """A label_type that raises anything makes from_ptb raise ValueError saying which label."""

    def picky(s):
        raise KeyError(s)

    with pytest.raises(ValueError, match="label 'S' at offset 1 rejected by picky"):
        Tree.from_ptb("(S a)", label_type=picky)
    assert Tree.from_ptb("(1.5 a)", label_type=float).label == 1.5
    with pytest.raises(ValueError, match="label '9999.* at offset 1 rejected by int"):
        Tree.from_ptb("(" + "9" * 5000 + " a)")  # past int()'s digit limit


def test_from_nltk_rejects_what_from_ptb_rejects():
    """nltk trees with two words, mixed children or no label give ValueError."""
    for text, fragment in [
        ("(2 a b)", "2 words"),
        ("(2 a (3 b))", "mixes"),
        ("( (2 a) (2 b))", "missing label"),
        ("(NP a)", "not an integer"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Tree.from_nltk(nltk_parse(text))
    with pytest.raises(ValueError, match="empty node"):
        Tree.from_nltk(nltk.Tree("2", [nltk.Tree("", [])]))
    with pytest.raises(TypeError):
        Tree.from_nltk("(2 a)")
    with pytest.raises(ValueError, match="a dependency tree"):
        dependency = Tree.from_parents([0, 1], ["a", "b"], labels=["root", "obj"])
        Tree.from_nltk(dependency.to_nltk(), label_type=str)


BAD_PARENTS = [
    ([2, "x", 0], None, "entry 2 ('x') is not an integer"),
    ([1.5, 0], None, "entry 1 (1.5) is not an integer"),
    ([4, 0, 2], None, "token 1: head 4 out of range 0..3"),
    ([2, 0, -1], None, "token 3: head -1 out of range"),
    ([2, 3, 1], None, "no root"),
    ([0, 3, 0, 3], None, "two roots: tokens 1 and 3"),
    ([0, 0, 0], None, "3 roots: tokens 1, 2, 3"),
    ([2, 3, 2, 0], None, "cycle through nodes 2 -> 3 -> 2"),
    ([1, 0], None, "cycle through nodes 1 -> 1"),
    ([], None, "empty parent array"),
    ([2, 0], ["a"], "2 parent entries but 1 words"),
]


@pytest.mark.parametrize(("parents", "words", "fragment"), BAD_PARENTS)
def test_from_parents_rejects_bad_arrays(parents, words, fragment):
    """Bad dependency arrays raise ValueError saying what is wrong, prefixed by where."""
    with pytest.raises(ValueError) as info:
        Tree.from_parents(parents, words, where="a.parents:3")
    message = str(info.value)
    assert message.startswith("a.parents:3: ") and fragment in message, message
    with pytest.raises(ValueError, match="2 labels"):
        Tree.from_parents([2, 0, 2], labels=[1, 2])


BAD_CPARENTS = [
    ([3, 3, 0], ["a"], "internal node 2 has no children"),
    ([2, 0], ["a", "b"], "node 1 has token 2 as its parent"),
    ([0], ["a", "b"], "1 parent entries but 2 words"),
    ([4, 5, 4, 5, 0], ["a", "b", "c"], "node 4 spans tokens 1..3 but holds only 2"),
    ([3, 3, 0, 0], ["a", "b"], "two roots: tokens 3 and 4"),
    ([3, 3, 0, 5, 4], ["a", "b"], "cycle through nodes 4 -> 5 -> 4"),
    ([3, 3, 9], ["a", "b"], "node 3: parent 9 out of range 0..3"),
    ([3, 3, 0], [], "no words"),
]


@pytest.mark.parametrize(("parents", "words", "fragment"), BAD_CPARENTS)
def test_from_cparents_rejects_bad_arrays(parents, words, fragment):
    """Bad constituency arrays raise ValueError saying what is wrong, prefixed by where."""
    with pytest.raises(ValueError) as info:
        Tree.from_cparents(parents, words, where="a.cparents:5")
    message = str(info.value)
    assert message.startswith("a.cparents:5: ") and fragment in message, message


def test_file_errors_name_path_and_line(tmp_path):
    """read_ptb / read_parents errors start with path:lineno; trailing blank lines are fine."""
    cases = [
        ("(2 a)\n(3 b)\n\n\n", None),
        ("(2 a)\n(2 a b)\n", ":2: node at offset 0 has two words"),
        ("(2 a)\n\n(3 b)\n", ":2: empty line"),
        ("\n(3 b)\n", ":1: empty line"),
        ("(2 a)\n(3 b", ":2: unbalanced brackets"),
    ]
    for i, (text, fragment) in enumerate(cases):
        path = tmp_path / f"t{i}.txt"
        path.write_text(text, encoding="utf-8")
        if fragment is None:
            assert read_ptb(path) == [Tree(2, "a"), Tree(3, "b")]
            continue
        with pytest.raises(ValueError) as info:
            read_ptb(path)
        assert str(info.value).startswith(f"{path}{fragment}"), str(info.value)
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"(2 a)\n(2 caf\xe9)\n")
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not valid UTF-8"):
        read_ptb(path)
    path = tmp_path / "p.parents"
    path.write_text("2 0\n2 x 0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.parents:2: entry 2 \('x'\) is not an integer"):
        read_parents(path)
    path.write_text("2 0 2\n0\n", encoding="utf-8")
    assert read_parents(path) == [[2, 0, 2], [0]]


# ------------------------------------------------------------------------ fuzz

PTB_ALPHABET = "()()()(( ))0123452 abNP\t\n\xa0é-\\/"


def check_parse(text, **kw):
    try:
        t = Tree.from_ptb(text, **kw)
    except ValueError:
        return None
    assert isinstance(t, Tree)
    assert Tree.from_ptb(t.to_ptb(), **kw) == t  # whatever parses, re-reads from its own output
    return t


@FUZZ
@given(st.text(alphabet=PTB_ALPHABET, max_size=40))
def test_fuzz_bracket_soup_only_value_errors(text):
    """Text heavy in brackets, digits, letters and spaces parses or raises ValueError."""
    check_parse(text)
    check_parse(text, label_type=str)


@FUZZ
@given(st.text(max_size=60))
def test_fuzz_arbitrary_text_only_value_errors(text):
    """Arbitrary Unicode text parses or raises ValueError."""
    check_parse(text)


@FUZZ
@given(trees(), st.data())
def test_fuzz_damaged_trees_only_value_errors(t, data):
    """A valid tree's text with a character deleted or inserted parses or raises ValueError."""
    text = t.to_ptb()
    i = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.sampled_from(["", "(", ")", " ", "x", "7", "\xa0"]))
    check_parse(text[:i] + insert + text[i + 1 :])


@FUZZ
@given(st.lists(st.integers(-1, 7), max_size=8), st.integers(0, 8))
def test_fuzz_parent_arrays_only_value_errors(parents, n_words):
    """Random parent arrays build a tree of the right size or raise ValueError."""
    words = [f"w{i}" for i in range(n_words)]
    try:
        t = Tree.from_parents(parents)
        assert t.size == len(parents)
    except ValueError:
        pass
    try:
        t = Tree.from_cparents(parents, words)
        assert t.size == len(parents) and t.words() == words
    except ValueError:
        pass
