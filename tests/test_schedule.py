"""Structural properties of the level schedule."""

import pickle

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm.labels import IGNORE_INDEX
from treelstm.schedule import Schedule, build_schedule, collate
from treelstm.tree import Tree

from .strategies import forests


def _levels(s: Schedule) -> torch.Tensor:
    return torch.searchsorted(s.level_ptr, torch.arange(s.num_nodes), right=True) - 1


@settings(max_examples=60, deadline=None)
@given(forests(max_size=8, max_children=6))
def test_schedule_properties(trees):
    """Each node in one level; children below parents; L = max height + 1; per-tree sizes kept."""
    s = build_schedule(trees)
    N = sum(t.size for t in trees)
    assert s.num_nodes == N and s.tree_sizes == tuple(t.size for t in trees)
    assert s.num_levels == max(t.height for t in trees) + 1
    assert s.level_bounds[0] == 0 and list(s.level_ptr) == list(s.level_bounds)
    level = _levels(s)
    # Level = height: recompute each node's height from the children table.
    for j in range(N):
        kids = [k for k in s.children[j].tolist() if k >= 0]
        assert level[j] == (1 + max(level[k] for k in kids) if kids else 0)
        for r, k in enumerate(kids):
            assert s.parent[k] == j and level[k] < level[j]
            assert kids == s.children[j, : len(kids)].tolist()  # no holes before the last child
            del r
    assert torch.bincount(s.node_tree, minlength=len(trees)).tolist() == list(s.tree_sizes)
    for b, t in enumerate(trees):
        root = int(s.roots[b])
        assert s.parent[root] == -1 and s.node_tree[root] == b and s.post_index[root] == t.size - 1
        assert level[root] == t.height
    assert (s.parent == -1).sum() == len(trees)


@settings(max_examples=30, deadline=None)
@given(forests(max_size=5, labels=st.one_of(st.none(), st.integers(0, 4))))
def test_children_keep_their_order_and_labels(trees):
    """The k-th child slot of a node holds its k-th child; labels and words follow their nodes."""
    vocab = {}
    s = build_schedule(trees, lambda w: vocab.setdefault(w, len(vocab)))
    for j in range(s.num_nodes):
        t = trees[int(s.node_tree[j])]
        flat = t.flat()
        node = t.postorder()[int(s.post_index[j])]
        assert s.labels[j] == (node.label if node.label is not None else IGNORE_INDEX)
        assert s.tokens[j] == (-1 if node.word is None else vocab[node.word])
        kid_posts = [int(s.post_index[k]) for k in s.children[j].tolist() if k >= 0]
        want = [q for q in range(len(flat.parent)) if flat.parent[q] == s.post_index[j]]
        want.sort(key=lambda q: flat.child_rank[q])
        assert kid_posts == want


def test_non_numeric_labels_and_no_vocab():
    """Non-integer labels give labels=None; without a vocab every token is -1."""
    t = Tree.from_ptb("(S (NP (DT the) (NN film)) (VP (VBZ works)))", label_type=str)
    s = build_schedule([t])
    assert s.labels is None and (s.tokens == -1).all()
    assert s.max_children == 2 and s.num_levels == 3  # preterminals are the leaves


def test_schedule_pickles_and_collates():
    """A schedule survives pickling and a DataLoader builds one per batch through `collate`."""
    trees = [Tree.from_ptb("(3 (2 good) (4 film))"), Tree.from_ptb("(1 bad)")]
    s = build_schedule(trees, {"good": 0, "film": 1, "bad": 2})
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.level_bounds == s.level_bounds and torch.equal(s2.children, s.children)
    loader = torch.utils.data.DataLoader(
        trees, batch_size=2, collate_fn=collate({"good": 0, "film": 1, "bad": 2})
    )
    (batch,) = list(loader)
    assert torch.equal(batch.tokens, s.tokens) and batch.batch_size == 2
    pickle.dumps(collate({"a": 1}, n_ary=2))  # workers need to pickle it


def test_per_tree_split_matches_single_schedules():
    """Splitting a batch schedule per tree gives each tree's own schedule."""
    trees = [Tree.from_ptb("(3 (2 good) (4 (1 not) (2 film)))"), Tree.from_ptb("(1 bad)")]
    s = build_schedule(trees)
    for b, (nodes, sub) in enumerate(s.per_tree):
        alone = build_schedule([trees[b]])
        assert sub.level_bounds == alone.level_bounds
        k = alone.max_children
        assert torch.equal(sub.children[:, :k], alone.children)
        assert (sub.children[:, k:] == -1).all()
        assert torch.equal(s.post_index[nodes], alone.post_index)
