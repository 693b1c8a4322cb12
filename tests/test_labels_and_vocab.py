"""Labels and words into a schedule: label maps, the ignore index, vocabulary mistakes named
clearly, and per-tree views of a batch's outputs."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm import (
    IGNORE_INDEX,
    ChildSumCell,
    Factored,
    LabelMap,
    NaryCell,
    Tree,
    TreeLSTM,
    binarize,
    build_schedule,
    collate,
)

from .strategies import WORDS, forests, trees
from .test_no_host_sync import SyncSpy

FAST = settings(max_examples=40, deadline=None)
PTB = ["S", "NP", "VP", "DT", "NN", "VBD"]
MAYBE_PTB = st.one_of(st.none(), st.sampled_from(PTB))


def ptb_tree():
    return Tree.from_ptb("(S (NP (DT the) (NN cat)) (VP (VBD sat)))", label_type=str)


def rows_by_tree(s, values):
    """values [N] in schedule order -> per tree, a list in the tree's post-order."""
    return [v.tolist() for v in s.split(values)]


# ---------------------------------------------------------------------------------- LabelMap


def test_label_map_basics():
    """fit sorts the labels; unlabelled nodes are IGNORE_INDEX; decode inverts; it pickles."""
    lm = LabelMap.fit([ptb_tree(), binarize(Tree.from_ptb("(S (A a) (B b) (C c))", str))])
    assert list(lm) == ["A", "B", "C", "DT", "NN", "NP", "S", "VBD", "VP"]
    assert lm["NP"] == 5 and "NP" in lm and len(lm) == 9
    assert lm[None] == IGNORE_INDEX == -100 and lm[Factored("S")] == IGNORE_INDEX
    assert lm.decode([5, IGNORE_INDEX, 0]) == ["NP", None, "A"]
    assert pickle.loads(pickle.dumps(lm)) == lm
    assert repr(LabelMap(["x"], unknown=0)) == "LabelMap(['x'], unknown=0)"
    with pytest.raises(KeyError, match="'ADJP' is not in the label map.*unknown=IGNORE_INDEX"):
        lm["ADJP"]
    assert LabelMap(PTB, unknown=IGNORE_INDEX)["ADJP"] == IGNORE_INDEX
    with pytest.raises(ValueError, match="listed twice"):
        LabelMap(["NP", "NP"])
    with pytest.raises(ValueError, match="'no label'"):
        LabelMap(["NP", None])
    with pytest.raises(ValueError, match="unknown must be"):
        LabelMap(["NP"], unknown=-1)


@FAST
@given(forests(max_size=5, labels=MAYBE_PTB))
def test_label_map_ids_follow_their_nodes(forest):
    """Every node's class id is the map's id of its label, IGNORE_INDEX where it has none."""
    lm = LabelMap.fit(forest)
    s = build_schedule(forest, labels=lm)
    assert s.labels is not None
    assert rows_by_tree(s, s.labels) == [[lm[x] for x in t.flat().labels] for t in forest]
    assert pickle.loads(pickle.dumps(collate(labels=lm)))(forest).labels.equal(s.labels)


def test_label_schemes_in_build_schedule():
    """auto: ints kept, strings give None (documented); a map or callable; None = no labels."""
    t = ptb_tree()
    assert build_schedule([t]).labels is None  # "auto" and string labels
    assert build_schedule([Tree.from_ptb("(3 (2 a) (1 b))")], labels=None).labels is None
    by_dict = build_schedule([t], labels={x: i for i, x in enumerate(PTB)}).labels
    by_call = build_schedule([t], labels=PTB.index).labels
    assert by_dict.equal(by_call) and sorted(by_dict.tolist()) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="label 'VBD' \\(tree 1\\) is not in the label map"):
        build_schedule([Tree("NP", "x"), t], labels=LabelMap(["S", "NP", "VP", "DT", "NN"]))
    with pytest.raises(ValueError, match="label 'DT' \\(tree 0\\) is not in the label map"):
        build_schedule([t], labels={"S": 0})
    with pytest.raises(TypeError, match="gave str '0' for label 'DT' \\(tree 0\\)"):
        build_schedule([t], labels=lambda x: "0")
    with pytest.raises(ValueError, match="gave id -1 for label"):
        build_schedule([t], labels=lambda x: -1)
    with pytest.raises(ValueError, match='labels must be "auto"'):
        build_schedule([t], labels="yes")


def test_unlabelled_nodes_are_skipped_by_the_default_loss():
    """The issue's crash: a tree with unlabelled nodes (a dependency tree, a binarised node)
    and the README's plain cross_entropy: the loss is the one over the labelled nodes."""
    trees = [
        Tree.from_ptb("(3 (2 good) (4 (2 not) (1 bad)))"),
        Tree(None, None, [Tree(1, "dull"), Tree(None, "film")]),
        binarize(Tree.from_ptb("(2 (1 a) (2 b) (3 c))")),
    ]
    s = build_schedule(trees)
    labelled = [x for t in trees for x in t.flat().labels if isinstance(x, int)]
    assert sorted(s.labels[s.labels != IGNORE_INDEX].tolist()) == sorted(labelled)
    assert (s.labels == IGNORE_INDEX).sum() == 3  # two in tree 1, one added by binarize
    logits = torch.randn(s.num_nodes, 5, dtype=torch.float64)
    keep = s.labels != IGNORE_INDEX
    loss = torch.nn.functional.cross_entropy(logits, s.labels)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[keep], s.labels[keep]))


# ------------------------------------------------------------------------------- vocabularies


VOCAB_MISTAKES = [
    (["good", "film"], TypeError, "vocab is a list; pass a dict from word to id"),
    ({"good": 0}, ValueError, "word 'film' \\(tree 1\\) is not in the vocab.*unk=<id>"),
    ({"good": "0", "film": "1"}, TypeError, "gave str '0' for word 'good' \\(tree 0\\)"),
    ({"good": 0, "film": -5}, ValueError, "gave id -5 for word 'film'"),
    ({"good": 0, "film": 1.0}, TypeError, "gave float 1.0 for word 'film'"),
    ({"good": True, "film": 1}, TypeError, "gave bool True for word 'good'"),
    ({"good": 0}.__getitem__, ValueError, "word 'film' \\(tree 1\\) is not in the vocab"),
    ({"good", "film"}, TypeError, "vocab must be a mapping"),
]


@pytest.mark.parametrize(("vocab", "error", "message"), VOCAB_MISTAKES)
def test_vocabulary_mistakes_are_named(vocab, error, message):
    trees = [Tree(1, "good"), Tree(2, None, [Tree(1, "good"), Tree(3, "film")])]
    with pytest.raises(error, match=message):
        build_schedule(trees, vocab)


def test_unk_maps_unknown_words():
    trees = [Tree(2, None, [Tree(1, "good"), Tree(3, "film")])]
    s = build_schedule(trees, {"<unk>": 0, "good": 1}, unk=0)
    assert s.split(s.tokens)[0].tolist() == [1, 0, -1] and s.max_token == 1
    assert collate({"good": 1}, unk=0)(trees).tokens.equal(s.tokens)
    assert build_schedule(trees, {"good": 1}.__getitem__, unk=0).tokens.equal(s.tokens)
    with pytest.raises(ValueError, match="unk must be an id >= 0"):
        build_schedule(trees, {"good": 1}, unk="<unk>")


def test_n_ary_error_names_binarize():
    t = Tree.from_ptb("(2 (1 a) (2 b) (3 c))")
    with pytest.raises(ValueError, match="treelstm.binarize\\(tree\\) gives every node at most 2"):
        build_schedule([t], n_ary=2)
    assert build_schedule([binarize(t)], n_ary=2).max_children == 2


def test_model_mistakes_are_named():
    """A list of trees instead of a schedule; a vocabulary size one short (the padding row)."""
    trees = [Tree.from_ptb("(3 (2 good) (4 (2 not) (1 bad)))"), Tree.from_ptb("(1 dull)")]
    vocab = {"good": 0, "not": 1, "bad": 2, "dull": 3}
    encoder = TreeLSTM(len(vocab) - 1, ChildSumCell(4, 3))
    with pytest.raises(TypeError, match="not a list of trees: batch the trees first with build_"):
        encoder(trees)
    with pytest.raises(TypeError, match="not a Tree: batch"):
        encoder(trees[0])
    with pytest.raises(ValueError, match="token id 3 .*num_embeddings=3.*len\\(vocab\\)"):
        encoder(build_schedule(trees, vocab))
    encoder = TreeLSTM(len(vocab), ChildSumCell(4, 3))
    assert encoder(build_schedule(trees, vocab)).root_h.shape == (2, 3)


# ---------------------------------------------------------------------------- per-tree views


@FAST
@given(forests(max_size=6, words=WORDS))
def test_split_gives_each_tree_in_its_own_post_order(forest):
    """Tokens and labels split per tree are the tree's own, in flat() order; the last row of
    each tree is its root; per_tree_rows agree with split."""
    vocab: dict[str, int] = {}
    s = build_schedule(forest, lambda w: vocab.setdefault(w, len(vocab)))
    want_tokens = [[-1 if w is None else vocab[w] for w in t.flat().words] for t in forest]
    assert rows_by_tree(s, s.tokens) == want_tokens
    assert rows_by_tree(s, s.labels) == [list(t.flat().labels) for t in forest]
    rows = s.per_tree_rows()
    assert [r[-1].item() for r in rows] == s.roots.tolist()
    assert [len(r) for r in rows] == [t.size for t in forest]
    assert sorted(torch.cat(rows).tolist()) == list(range(s.num_nodes))
    x = torch.arange(s.num_nodes * 2).view(-1, 2)
    assert all(a.equal(x[r]) for a, r in zip(s.split(x), rows, strict=True))


@pytest.mark.usefixtures("float64")
@settings(max_examples=15, deadline=None)
@given(forests(max_size=5), st.sampled_from(["childsum", "nary"]))
def test_split_of_a_batch_equals_each_tree_alone(forest, kind):
    """Per-tree views of a batch's h (and gradients through them) equal each tree's own
    schedule, run alone, in float64."""
    if kind == "nary":
        forest = [binarize(t) for t in forest]
    vocab = {w: i for i, w in enumerate(sorted({w for t in forest for w in t.flat().words if w}))}
    torch.manual_seed(0)
    cell = ChildSumCell(3, 4) if kind == "childsum" else NaryCell(3, 4, n_ary=2)
    encoder = TreeLSTM(max(len(vocab), 1), cell)
    n_ary = 2 if kind == "nary" else None
    s = build_schedule(forest, vocab, n_ary=n_ary)
    batch = encoder(s)
    parts = s.split(batch.h)
    for t, part in zip(forest, parts, strict=True):
        alone = build_schedule([t], vocab, n_ary=n_ary)
        (h_alone,) = alone.split(encoder(alone).h)
        assert torch.allclose(part, h_alone, atol=1e-12)
    params = list(cell.parameters())
    grads = torch.autograd.grad(sum(p.square().sum() for p in parts), params, retain_graph=True)
    again = torch.autograd.grad(batch.h.square().sum(), params)
    assert all(torch.allclose(a, b) for a, b in zip(grads, again, strict=True))


def test_split_checks_its_input_and_never_syncs():
    s = build_schedule([Tree.from_ptb("(3 (2 a) (1 b))"), Tree(1, "c")])
    with pytest.raises(ValueError, match="one row per node \\[4, ...\\].*got \\(3, 2\\)"):
        s.split(torch.zeros(3, 2))
    h = torch.randn(4, 2, requires_grad=True)
    fresh = build_schedule([Tree.from_ptb("(3 (2 a) (1 b))"), Tree(1, "c")])
    with SyncSpy() as spy:
        parts = fresh.split(h)
        sum(p.sum() for p in parts).backward()
    assert spy.calls and spy.syncing == []


@FAST
@given(trees(labels=MAYBE_PTB))
def test_auto_labels_none_only_for_non_integer_labels(t):
    """labels="auto" is None exactly when some label is a string; else ints and IGNORE_INDEX."""
    s = build_schedule([t])
    has_str = any(isinstance(x, str) for x in t.flat().labels)
    assert (s.labels is None) == has_str
    if not has_str:
        assert (s.labels == IGNORE_INDEX).all()
