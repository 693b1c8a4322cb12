"""Every executor strategy computes the per-node evaluator's function: values and gradients.

The module runs twice: once with the pure-PyTorch level kernels (the path on every device) and
once with the native ones (the CPU default when they build), see `kernel_path`.
"""

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm import kernels
from treelstm.cells import ChildSumCell, NaryCell
from treelstm.executor import STRATEGIES, evaluate_tree, run
from treelstm.kernels import build
from treelstm.models import TreeLSTM
from treelstm.schedule import build_schedule
from treelstm.tree import Tree

from .strategies import CELL_SWITCHES as SWITCHES
from .strategies import binary_trees, forests

pytestmark = pytest.mark.usefixtures("float64", "kernel_path")

IN, H = 3, 4


def make_cell(kind, **sw):
    torch.manual_seed(0)
    return ChildSumCell(IN, H, **sw) if kind == "childsum" else NaryCell(IN, H, n_ary=2, **sw)


def loss_of(h, c):
    """A loss that weights every node and both states differently."""
    w = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)
    return (h * w).sum() + 0.3 * (c * c.flip(0)).sum()


def oracle(cell, trees, sched, x):
    """Per tree, the per-node evaluator; results placed in schedule order."""
    h = x.new_zeros(sched.num_nodes, H)
    c = x.new_zeros(sched.num_nodes, H)
    for b, t in enumerate(trees):
        rows = torch.nonzero(sched.node_tree == b).flatten()
        rows = rows[torch.argsort(sched.post_index[rows])]  # the tree's post-order
        hb, cb = evaluate_tree(cell, t, x[rows])
        h = h.index_put((rows,), hb)
        c = c.index_put((rows,), cb)
    return h, c


def grads(cell, trees, sched, x, strategy):
    cell.zero_grad()
    x = x.detach().clone().requires_grad_()
    h, c = oracle(cell, trees, sched, x) if strategy == "oracle" else run(cell, sched, x, strategy)
    loss = loss_of(h, c)
    loss.backward()
    return [h.detach(), c.detach(), loss.detach(), x.grad] + [
        p.grad.clone() for p in cell.parameters()
    ]


def assert_all_close(got, want, what):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(
            a, b, rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{what}[{k}]: {m}"
        )


@settings(max_examples=20, deadline=None)
@given(forests(max_size=6, max_children=6), st.integers(0, len(SWITCHES) - 1))
def test_childsum_strategies_match_per_node_evaluator(trees, switch):
    """Child-Sum: every strategy equals the per-node evaluator in h, c, loss and all gradients."""
    cell = make_cell("childsum", **SWITCHES[switch])
    sched = build_schedule(trees)
    x = torch.randn(sched.num_nodes, IN)
    want = grads(cell, trees, sched, x, "oracle")
    for strategy in STRATEGIES:
        assert_all_close(grads(cell, trees, sched, x, strategy), want, strategy)


@settings(max_examples=20, deadline=None)
@given(st.lists(binary_trees(), min_size=1, max_size=6), st.integers(0, len(SWITCHES) - 1))
def test_nary_strategies_match_per_node_evaluator(trees, switch):
    """N-ary: every strategy equals the per-node evaluator in h, c, loss and all gradients."""
    cell = make_cell("nary", **SWITCHES[switch])
    sched = build_schedule(trees, n_ary=2)
    x = torch.randn(sched.num_nodes, IN)
    want = grads(cell, trees, sched, x, "oracle")
    for strategy in STRATEGIES:
        assert_all_close(grads(cell, trees, sched, x, strategy), want, strategy)


def test_nary_with_missing_child_slots():
    """N-ary cells with unary nodes (a missing second child) match the per-node evaluator."""
    trees = [
        Tree(0, None, [Tree(1, "a")]),
        Tree(0, None, [Tree(0, None, [Tree(1, "b")]), Tree(2, "c")]),
    ]
    cell = NaryCell(IN, H, n_ary=3)
    sched = build_schedule(trees)  # K = 2 < n_ary: the executor pads the slots
    x = torch.randn(sched.num_nodes, IN)
    want = grads(cell, trees, sched, x, "oracle")
    for strategy in STRATEGIES:
        assert_all_close(grads(cell, trees, sched, x, strategy), want, strategy)


def test_wide_childsum_nodes():
    """Child-Sum nodes with up to 32 children match the per-node evaluator."""
    g = torch.Generator().manual_seed(3)
    leaves = [Tree(1, "w") for _ in range(32)]
    trees = [
        Tree(0, None, leaves),
        Tree(0, None, [Tree(0, None, leaves[:7]), Tree(1, "x"), Tree(0, None, leaves[:32])]),
        Tree(2, "single"),
    ]
    cell = make_cell("childsum")
    sched = build_schedule(trees)
    assert sched.max_children == 32
    x = torch.randn(sched.num_nodes, IN, generator=g)
    want = grads(cell, trees, sched, x, "oracle")
    for strategy in STRATEGIES:
        assert_all_close(grads(cell, trees, sched, x, strategy), want, strategy)


@settings(max_examples=15, deadline=None)
@given(forests(min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_result_independent_of_tree_order(trees, rnd):
    """Permuting the trees of a batch permutes the roots' states and changes nothing else."""
    cell = make_cell("childsum")
    order = list(range(len(trees)))
    rnd.shuffle(order)
    enc_x = {}

    def roots(ts):
        s = build_schedule(ts)
        # Inputs depend on the node only (tree identity + post-order index), not on the batch.
        x = torch.stack(
            [
                enc_x.setdefault((id(ts[int(b)]), int(j)), torch.randn(IN))
                for b, j in zip(s.node_tree, s.post_index, strict=True)
            ]
        )
        h, _ = run(cell, s, x)
        return h[s.roots]

    a = roots(trees)
    b = roots([trees[k] for k in order])
    torch.testing.assert_close(b, a[order], rtol=0, atol=1e-12)


def test_long_chain_and_many_trees():
    """A 100,000-node chain and a batch of 10,000 small trees run without recursion errors."""
    torch.set_default_dtype(torch.float32)
    try:
        node = Tree(0, "w")
        for _ in range(99_999):
            node = Tree(0, "w", [node])
        cell = ChildSumCell(2, 2)
        s = build_schedule([node])
        assert s.num_levels == 100_000
        with torch.no_grad():
            h, _ = run(cell, s, torch.ones(s.num_nodes, 2))
        assert torch.isfinite(h).all()
        small = [Tree(0, None, [Tree(1, "a"), Tree(2, "b", [Tree(3, "c")])])] * 10_000
        s = build_schedule(small)
        enc = TreeLSTM(3, ChildSumCell(2, 3))
        out = enc(s)
        out.root_h.sum().backward()
        assert out.root_h.shape == (10_000, 3)
    finally:
        torch.set_default_dtype(torch.float64)


def test_bad_inputs_give_clear_errors():
    """Empty batch, mismatched devices, too many children, unknown strategy: ValueError."""
    with pytest.raises(ValueError, match="empty batch"):
        build_schedule([])
    t = Tree(0, None, [Tree(1, "a"), Tree(2, "b"), Tree(3, "c")])
    with pytest.raises(ValueError, match="more than n_ary=2"):
        build_schedule([t], n_ary=2)
    s = build_schedule([t])
    with pytest.raises(ValueError, match="NaryCell\\(n_ary=2\\) takes at most 2"):
        run(NaryCell(IN, H), s, torch.zeros(4, IN))
    cell = ChildSumCell(IN, H)
    with pytest.raises(ValueError, match="unknown strategy"):
        run(cell, s, torch.zeros(4, IN), "magic")
    with pytest.raises(ValueError, match=r"x must be \[N=4"):
        run(cell, s, torch.zeros(5, IN))
    with pytest.raises(ValueError, match="move them to one device"):
        run(cell, s.to("meta"), torch.zeros(4, IN))


def test_encoder_roots_and_padding():
    """TreeLSTM gives all nodes' states, the roots' h in batch order; word-less nodes read zeros."""
    trees = [Tree(0, None, [Tree(1, "a"), Tree(2, "b")]), Tree(3, "b")]
    vocab = {"a": 0, "b": 1}
    s = build_schedule(trees, vocab)
    enc = TreeLSTM(2, ChildSumCell(IN, H))
    out = enc(s)
    assert out.h.shape == (s.num_nodes, H) and out.root_h.shape == (2, H)
    torch.testing.assert_close(out.root_h, out.h[s.roots])
    x = enc.embed(s)
    assert torch.equal(x[s.tokens < 0], torch.zeros_like(x[s.tokens < 0]))
    with pytest.raises(ValueError, match="embeddings must be"):
        TreeLSTM(2, ChildSumCell(IN, H), embeddings=torch.zeros(3, IN))


@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_backward_twice_and_strided_gradients(kind):
    """retain_graph: a second backward gives the same gradients (the kernels keep what they
    saved); gradients that arrive strided or expanded (h.sum(), c[:, ::2]) are handled."""
    trees = [Tree.from_ptb("(1 (2 (3 a) (4 b)) (1 c))"), Tree.from_ptb("(0 (1 d) (2 e))")]
    cell = make_cell(kind)
    sched = build_schedule(trees, n_ary=2 if kind == "nary" else None)
    x = torch.randn(sched.num_nodes, IN, generator=torch.Generator().manual_seed(5))

    def loss(h, c):
        return h.sum() + c[:, ::2].square().sum()

    want_h, want_c = oracle(cell, trees, sched, x)
    want = torch.autograd.grad(loss(want_h, want_c), list(cell.parameters()))
    h, c = run(cell, sched, x)
    torch.testing.assert_close(h, want_h, rtol=1e-6, atol=1e-6)
    first = torch.autograd.grad(loss(h, c), list(cell.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss(h, c), list(cell.parameters()))
    assert_all_close(first, want, "first backward")
    assert_all_close(second, want, "second backward")


@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_input_enters_on_input_rows_only(kind):
    """input_at="leaves": the internal rows of x are never read (NaN there changes nothing, and
    their gradient is zero); input_at="all" reads them."""
    trees = [Tree.from_ptb("(1 (2 (3 a) (4 b)) (1 c))"), Tree.from_ptb("(0 d)")]
    sched = build_schedule(trees, n_ary=2 if kind == "nary" else None)
    n0 = sched.num_leaves
    x = torch.randn(sched.num_nodes, IN, generator=torch.Generator().manual_seed(6))
    cell = make_cell(kind, input_at="leaves")
    want_h, _ = oracle(cell, trees, sched, x)
    x_nan = x.clone()
    x_nan[n0:] = float("nan")
    x_nan.requires_grad_()
    h, c = run(cell, sched, x_nan)
    torch.testing.assert_close(h, want_h, rtol=1e-6, atol=1e-6)
    loss_of(h, c).backward()
    assert torch.equal(x_nan.grad[n0:], torch.zeros_like(x_nan.grad[n0:]))
    parts = cell.input_parts(x, n0)
    assert parts.leaf.shape == (n0, cell.n_main * H) and parts.inner is None
    parts = make_cell(kind).input_parts(x, n0)
    assert parts.inner.shape == (sched.num_nodes - n0, (cell.n_main + 1) * H)


def test_native_float32_matches_pytorch_float32(kernel_path):
    """float32: the native kernels (own exp/tanh) are as close to float64 as PyTorch's ops."""
    if kernel_path != "native":
        pytest.skip("compares the native path with the PyTorch one")
    from benchmarks.batching import synthetic_trees

    trees = synthetic_trees(30, seed=2)
    for kind in ("childsum", "nary"):
        sched = build_schedule(trees, n_ary=2 if kind == "nary" else None)
        x = torch.randn(sched.num_nodes, IN, generator=torch.Generator().manual_seed(7))
        got = {}
        for name, native, dtype in [("ref", False, torch.float64), ("torch", False, torch.float32),
                                    ("native", True, torch.float32)]:  # fmt: skip
            kernels.set_native(native)
            cell = make_cell(kind).to(dtype)
            got[name] = grads(cell, trees, sched, x.to(dtype), "level")
        kernels.set_native(True)
        for name in ("torch", "native"):
            err = max(
                ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(got[name], got["ref"], strict=True)
            )
            assert err < 5e-6, f"{kind} {name} float32: relative error {err:.1e}"


def test_native_build_failure_falls_back_with_one_line(tmp_path, monkeypatch, caplog):
    """No compiler: one line on the treelstm logger, and the level strategy still runs (on the
    PyTorch kernels) with the same results; a later build is cached and reused."""
    monkeypatch.setenv("TREELSTM_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    old = kernels.set_native(None)
    try:
        with caplog.at_level(logging.WARNING, logger="treelstm"):
            assert not kernels.native_available()
        assert len(caplog.records) == 1 and "native level kernels unavailable" in caplog.text
        trees = [Tree.from_ptb("(1 (2 a) (3 b))")]
        sched = build_schedule(trees)
        cell = make_cell("childsum")
        x = torch.randn(sched.num_nodes, IN)
        assert_all_close(
            grads(cell, trees, sched, x, "level"), grads(cell, trees, sched, x, "oracle"), "lvl"
        )
        monkeypatch.delenv("CC")
        monkeypatch.setattr(build, "_state", {})
        if build.shutil.which("cc") is None and build.shutil.which("gcc") is None:
            return
        assert kernels.native_available()
        (built,) = (tmp_path / "native").glob("levels-*.so")
        stamp = built.stat().st_mtime_ns
        monkeypatch.setattr(build, "_state", {})
        assert kernels.native_available()
        assert built.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    finally:
        kernels.set_native(old)


def test_forcing_native_where_it_cannot_run_says_why():
    """set_native(True) with a dtype the native kernels lack is a one-line RuntimeError."""
    old = kernels.set_native(True)
    try:
        sched = build_schedule([Tree.from_ptb("(1 (2 a) (3 b))")])
        cell = ChildSumCell(IN, H).to(torch.bfloat16)
        with pytest.raises(RuntimeError, match="cannot run: x is torch.bfloat16 on cpu"):
            run(cell, sched, torch.zeros(sched.num_nodes, IN, dtype=torch.bfloat16))
    finally:
        kernels.set_native(old)


@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_large_levels_on_two_threads(kind):
    """Levels big enough to be split across threads (n * H >= 65536 in the native loops) give
    the same values and gradients as the PyTorch kernels on one thread (float64)."""
    from benchmarks.batching import synthetic_trees

    trees = synthetic_trees(150, seed=5)  # ~3,400 leaves: level 0 alone is 3400 x 32 rows
    sched = build_schedule(trees, n_ary=2 if kind == "nary" else None)
    torch.manual_seed(1)
    make = ChildSumCell if kind == "childsum" else NaryCell
    cell = make(IN, 32, input_at="leaves")
    x = torch.randn(sched.num_nodes, IN, generator=torch.Generator().manual_seed(8))
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        old = kernels.set_native(False)
        want = grads(cell, trees, sched, x, "level")
        kernels.set_native(old)
        torch.set_num_threads(2)
        got = grads(cell, trees, sched, x, "level")
    finally:
        torch.set_num_threads(old_threads)
    assert_all_close(got, want, f"{kind} on two threads")
