"""Top-down passes (issue 12): the depth layout of a schedule, every strategy against the
per-node evaluator going from the roots to the leaves, and the bidirectional encoder against
its per-node reference -- float64, values and every gradient, on hypothesis forests.

The module runs twice, once per implementation of the fused kernels (PyTorch ops, native C)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm import (
    BiTreeLSTM,
    ChildSumCell,
    NaryCell,
    SentimentModel,
    Tree,
    build_schedule,
    evaluate_bidirectional,
    explain,
    kernels,
    run,
)
from treelstm.executor import STRATEGIES

from .oracle import assert_all_close, outputs_and_grads, strategy_fn
from .strategies import CELL_SWITCHES as SWITCHES
from .strategies import forests
from .user_cells import TreeGRU

pytestmark = pytest.mark.usefixtures("float64", "one_thread", "kernel_path")

IN, H = 3, 4


def depths(s):
    """Each row's depth, by walking up the parents (slow and obviously right)."""
    parent = s.parent.tolist()
    out = []
    for j in range(s.num_nodes):
        d, p = 0, parent[j]
        while p >= 0:
            d, p = d + 1, parent[p]
        out.append(d)
    return out


@settings(max_examples=40, deadline=None)
@given(forests(max_size=8, max_children=5))
def test_the_depth_layout(trees):
    """depth_order is a permutation, depth-major (roots first, in batch order among equals),
    depth_bounds cut it by depth, and the layout's parents are one depth up; per tree too."""
    s = build_schedule(trees)
    d = depths(s)
    order = s.depth_order.tolist()
    assert sorted(order) == list(range(s.num_nodes))
    assert s.num_depths == max(d) + 1 == max(t.height for t in trees) + 1
    for k, (a, b) in enumerate(zip(s.depth_bounds[:-1], s.depth_bounds[1:], strict=True)):
        assert all(d[j] == k for j in order[a:b])
    assert set(order[: s.depth_bounds[1]]) == set(s.roots.tolist())
    lay = s.down_layout
    assert torch.equal(lay.order[lay.pos], torch.arange(s.num_nodes))
    for q, j in enumerate(order):
        p = int(s.parent[j])
        assert int(lay.parent[q]) == (s.num_nodes if p < 0 else int(lay.pos[p]))
    hand = dataclasses.replace(s, depth_order=None, depth_bounds=())  # derived on first use
    assert torch.equal(hand.down_layout.order, lay.order) and hand.down_layout.bounds == lay.bounds
    for nodes, sub in s.per_tree:
        sub_d = depths(sub)
        assert [d[j] for j in nodes.tolist()] == sub_d
        assert sub.depth_bounds[-1] == sub.num_nodes


def test_deep_chains_and_wide_batches_get_every_depth():
    """A 3,000-node chain (the row loop) beside a wide batch (the per-level numpy sweep, more
    than 64 rows a level) gets every depth right, and a top-down pass runs over it (no
    recursion anywhere)."""
    node = Tree(0, "w")
    for _ in range(2_999):
        node = Tree(0, "w", [node])
    s = build_schedule([node, Tree(1, None, [Tree(2, "a"), Tree(3, "b")])])
    assert s.num_depths == 3_000
    want = depths(s)
    wide = build_schedule([Tree.from_ptb("(1 (2 (3 a) (4 b)) (5 c))")] * 200)
    assert wide.num_nodes > 64 * wide.num_levels
    got = [0] * wide.num_nodes
    for k, (a, b) in enumerate(zip(wide.depth_bounds[:-1], wide.depth_bounds[1:], strict=True)):
        for j in wide.depth_order[a:b].tolist():
            got[j] = k
    assert got == depths(wide)
    got = [0] * s.num_nodes
    for k, (a, b) in enumerate(zip(s.depth_bounds[:-1], s.depth_bounds[1:], strict=True)):
        for j in s.depth_order[a:b].tolist():
            got[j] = k
    assert got == want
    with torch.no_grad():
        h, _ = run(ChildSumCell(2, 2), s, torch.ones(s.num_nodes, 2), direction="down")
    assert torch.isfinite(h).all()


def _cell(kind, switch):
    torch.manual_seed(0)
    sw = SWITCHES[switch]
    if kind == "childsum":
        return ChildSumCell(IN, H, **sw)
    if kind == "nary1":
        return NaryCell(IN, H, n_ary=1, **sw)
    return TreeGRU(IN, H)


@settings(max_examples=25, deadline=None)
@given(
    forests(max_size=6, max_children=5),
    st.sampled_from(["childsum", "nary1", "gru"]),
    st.integers(0, len(SWITCHES) - 1),
)
def test_top_down_strategies_match_the_per_node_evaluator(trees, kind, switch):
    """direction="down": every strategy (the fused top-down kernel for the built-in cells, the
    generic depth loop for a user's) equals the per-node evaluator, values and gradients."""
    cell = _cell(kind, switch)
    s = build_schedule(trees)
    x = torch.randn(s.num_nodes, IN, generator=torch.Generator().manual_seed(2))
    want = outputs_and_grads(cell, strategy_fn(cell, trees, s, "oracle", "down"), x)
    for strategy in STRATEGIES:
        got = outputs_and_grads(cell, strategy_fn(cell, trees, s, strategy, "down"), x)
        assert_all_close(got, want, f"{kind} {SWITCHES[switch]} {strategy}")
    assert explain(cell, direction="down").startswith("generic" if kind == "gru" else "fused")


def test_top_down_reaches_the_leaves_from_the_root():
    """What a top-down pass is for: a leaf's state depends on the root's input (and on its
    ancestors' only), where bottom-up it depends on its own input alone."""
    t = Tree.from_ptb("(0 (0 (0 a) (0 b)) (0 c))")
    s = build_schedule([t])
    cell = _cell("childsum", 0)
    x = torch.randn(s.num_nodes, IN, requires_grad=True)
    for direction, reach in (("up", "own"), ("down", "ancestors")):
        h, _ = run(cell, s, x, direction=direction)
        leaf = 0  # row 0: the first leaf, 'a'
        (g,) = torch.autograd.grad(h[leaf].sum(), x)
        touched = set(torch.nonzero(g.abs().sum(1)).flatten().tolist())
        ancestors = {0}
        p = int(s.parent[0])
        while p >= 0:
            ancestors.add(p)
            p = int(s.parent[p])
        assert touched == ({0} if reach == "own" else ancestors), direction


@settings(max_examples=15, deadline=None)
@given(forests(max_size=5, max_children=4), st.sampled_from(["childsum", "gru"]))
def test_the_bidirectional_encoder_matches_its_per_node_reference(trees, down_kind):
    """BiTreeLSTM (every strategy) equals `evaluate_bidirectional` per tree: h = [up, down],
    c, and the gradients of the embedding and of both cells."""
    torch.manual_seed(0)
    words = sorted({w for t in trees for w in t.words()})
    vocab = {w: i for i, w in enumerate(words)}
    s = build_schedule(trees, vocab)
    up = ChildSumCell(IN, H)
    down = ChildSumCell(H, 5) if down_kind == "childsum" else TreeGRU(H, 5)
    enc = BiTreeLSTM(len(vocab), up, down)
    assert enc.hidden_size == H + 5

    def reference(_):
        x = enc.embed(s)
        h = c = None
        for t, rows in zip(trees, s.per_tree_rows(), strict=True):
            hb, cb = evaluate_bidirectional(up, down, t, x[rows])
            h = (hb.new_zeros(s.num_nodes, H + 5) if h is None else h).index_put((rows,), hb)
            if cb is not None:
                c = (cb.new_zeros(s.num_nodes, H + 5) if c is None else c).index_put((rows,), cb)
        return h, c

    dummy = torch.zeros(1)
    want = outputs_and_grads(enc, reference, dummy)
    for strategy in STRATEGIES:
        got = outputs_and_grads(enc, lambda _, st=strategy: enc(s, st)[:2], dummy)
        assert_all_close(got, want, f"bi {down_kind} {strategy}")
        out = enc(s, strategy)
        assert torch.equal(out.root_h, out.h[s.roots])
    assert (want[1] is None) == (down_kind == "gru")


def test_the_bidirectional_encoder_under_a_head_and_its_errors():
    """BiTreeLSTM drops into SentimentModel (hidden_size = H_up + H_down); a down cell whose
    input is not the up cell's h is refused."""
    trees = [Tree.from_ptb("(3 (2 good) (4 (2 not) (1 bad)))"), Tree.from_ptb("(1 dull)")]
    vocab = {"good": 0, "not": 1, "bad": 2, "dull": 3}
    s = build_schedule(trees, vocab)
    model = SentimentModel(BiTreeLSTM(4, ChildSumCell(IN, H), ChildSumCell(H, H)), 5)
    assert model(s).shape == (s.num_nodes, 5)
    with pytest.raises(ValueError, match="down_cell.input_size must be up_cell.hidden_size = 4"):
        BiTreeLSTM(4, ChildSumCell(IN, H), ChildSumCell(IN, H))


def test_the_root_value_example_runs_dry(capsys, monkeypatch):
    """examples/topdown_root_value.py (bottom-up vs bidirectional on "label every node with the
    root's value") runs with --dry-run and reports both models."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "topdown_root_value.py"
    spec = importlib.util.spec_from_file_location("topdown_root_value", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        results = module.main(["--dry-run"])
    finally:
        torch.set_default_dtype(old)
    assert set(results) == {"bottom-up", "bidirectional"}
    assert all(0 <= v <= 1 for r in results.values() for v in r.values())
    out = capsys.readouterr().out
    assert "bottom-up: test accuracy" in out and "bidirectional: test accuracy" in out


def test_native_float32_top_down_is_as_close_as_pytorch_float32(kernel_path):
    """float32: the native top-down loop is as close to float64 as the PyTorch ops are."""
    if kernel_path != "native":
        pytest.skip("compares the native path with the PyTorch one")
    from benchmarks.batching import synthetic_trees

    trees = synthetic_trees(30, seed=3)
    s = build_schedule(trees)
    x = torch.randn(s.num_nodes, IN, generator=torch.Generator().manual_seed(4))
    got = {}
    for name, native, dtype in [("ref", False, torch.float64), ("torch", False, torch.float32),
                                ("native", True, torch.float32)]:  # fmt: skip
        kernels.set_native(native)
        cell = _cell("childsum", 0).to(dtype)
        got[name] = outputs_and_grads(
            cell, strategy_fn(cell, trees, s, "level", "down"), x.to(dtype)
        )
    kernels.set_native(True)
    for name in ("torch", "native"):
        err = max(
            ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
            for a, b in zip(got[name], got["ref"], strict=True)
        )
        assert err < 5e-6, f"{name} float32: relative error {err:.1e}"
