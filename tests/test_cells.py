"""Tree-LSTM cells against the paper's equations, torch.nn.LSTMCell and hand-derived numbers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm.cells import ChildSumCell, NaryCell
from treelstm.executor import evaluate_tree
from treelstm.tree import Tree

from .strategies import CELL_SWITCHES as SWITCHES
from .strategies import binary_trees, trees

pytestmark = pytest.mark.usefixtures("float64")


def chain(n: int) -> Tree:
    t = Tree(0, "w0")
    for k in range(1, n):
        t = Tree(k, f"w{k}", [t])
    return t


def make_cell(kind: str, in_size=3, hidden=4, **sw):
    torch.manual_seed(0)
    if kind == "childsum":
        return ChildSumCell(in_size, hidden, **sw)
    return NaryCell(in_size, hidden, n_ary=2, **sw)


def node_inputs(tree: Tree, in_size=3, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tree.size, in_size, generator=g)


def test_parameter_count_independent_of_tree():
    """The parameter count is a property of the cell, whatever the tree it is applied to."""
    for kind in ("childsum", "nary"):
        cell = make_cell(kind)
        n0 = sum(p.numel() for p in cell.parameters())
        for t in (Tree(1, "a"), chain(7), Tree(0, None, [Tree(1, "a"), Tree(2, "b")])):
            evaluate_tree(cell, t, node_inputs(t))[0].sum().backward()
            assert sum(p.numel() for p in cell.parameters()) == n0


def test_childsum_chain_equals_lstmcell():
    """Child-Sum on a chain is an ordinary LSTM: nn.LSTMCell unrolled with mapped weights."""
    in_size, H, T = 3, 5, 6
    cell = ChildSumCell(in_size, H, double_bias=True)
    lstm = torch.nn.LSTMCell(in_size, H)
    # LSTMCell rows are [i, f, g, o]; ours are [i, o, u, f] (g = u).
    order = [0, 3, 2, 1]

    def remap(w):
        return torch.cat([w.view(4, H, *w.shape[1:])[k] for k in order])

    with torch.no_grad():
        cell.W.weight.copy_(remap(lstm.weight_ih))
        cell.W.bias.copy_(remap(lstm.bias_ih))
        cell.U.weight.copy_(remap(lstm.weight_hh))
        cell.U.bias.copy_(remap(lstm.bias_hh))
    t = chain(T)
    x = node_inputs(t, in_size)  # post-order of a chain: leaf (time 0) first, root last
    h, c = evaluate_tree(cell, t, x)
    hx = cx = torch.zeros(1, H)
    for step in range(T):
        hx, cx = lstm(x[step : step + 1], (hx, cx))
        torch.testing.assert_close(h[step : step + 1], hx, rtol=0, atol=1e-12)
        torch.testing.assert_close(c[step : step + 1], cx, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_golden_numbers_zero_weights(kind):
    """Zero weights, bias b on u: gates are 1/2, leaf c = tanh(b)/2, parent c = that + sum c_k/2."""
    cell = make_cell(kind, in_size=2, hidden=3)
    b = torch.tensor([0.3, -1.2, 2.0])
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        H = 3
        cell.W.bias[2 * H : 3 * H] = b  # blocks [i, o, u, f]
    leaf = [Tree(0, "a"), Tree(0, "b")]
    t = Tree(0, None, [Tree(0, None, leaf), Tree(0, "c")])
    h, c = evaluate_tree(cell, t, node_inputs(t, 2))
    half_tb = 0.5 * torch.tanh(b)
    c_leaf = half_tb
    c_mid = half_tb + 0.5 * (c_leaf + c_leaf)
    c_root = half_tb + 0.5 * (c_mid + c_leaf)
    expected_c = torch.stack([c_leaf, c_leaf, c_mid, c_leaf, c_root])  # post-order
    torch.testing.assert_close(c, expected_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, 0.5 * torch.tanh(expected_c), rtol=0, atol=1e-12)
    # By hand: c_leaf = t/2, c_mid = t/2 + t/2 = t, c_root = t/2 + (t + t/2)/2 = 5t/4.
    assert math.isclose(float(c_root[0]), 1.25 * math.tanh(0.3), abs_tol=1e-12)


@settings(max_examples=25, deadline=None)
@given(trees(max_children=4), st.integers(0, 4))
def test_childsum_invariant_to_child_order(tree, switch):
    """Child-Sum output at every node is unchanged when the children of every node are reversed."""
    cell = make_cell("childsum", **SWITCHES[switch])
    rev = _reverse_children(tree)
    x = node_inputs(tree)
    h, _ = evaluate_tree(cell, tree, x)
    # Same inputs per node: map x by each node's word-independent identity via post-order ids.
    h_rev, _ = evaluate_tree(cell, rev, _permute_inputs(tree, rev, x))
    torch.testing.assert_close(h[-1], h_rev[-1], rtol=0, atol=1e-10)


def test_nary_depends_on_child_order():
    """N-ary output changes when two different children are swapped."""
    cell = make_cell("nary")
    t = Tree(0, None, [Tree(1, "a"), Tree(2, "b")])
    x = node_inputs(t)
    h, _ = evaluate_tree(cell, t, x)
    t2 = Tree(0, None, [Tree(2, "b"), Tree(1, "a")])
    x2 = x[[1, 0, 2]]
    h2, _ = evaluate_tree(cell, t2, x2)
    assert (h[-1] - h2[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["childsum", "nary"])
@pytest.mark.parametrize("switch", range(len(SWITCHES)))
def test_gradcheck_small_tree(kind, switch):
    """torch.autograd.gradcheck passes for the per-node evaluator on a small tree (float64)."""
    cell = make_cell(kind, in_size=2, hidden=3, **SWITCHES[switch])
    t = Tree(0, None, [Tree(0, None, [Tree(0, "a"), Tree(0, "b")]), Tree(0, "c")])
    x = node_inputs(t, 2).requires_grad_()
    params = list(cell.parameters())

    names = ["cell." + n for n, _ in cell.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(_Eval(cell, t), dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


@settings(max_examples=15, deadline=None)
@given(binary_trees(), st.sampled_from(["childsum", "nary"]))
def test_shared_gradient_is_sum_of_per_node_contributions(tree, kind):
    """Each shared weight's gradient equals the sum over nodes of per-node copies' gradients."""
    cell = make_cell(kind)
    x = node_inputs(tree)
    h, _ = evaluate_tree(cell, tree, x)
    h.sum().backward()
    shared = {n: p.grad.clone() for n, p in cell.named_parameters()}
    # Unshared: one copy of the cell per node, same values; the sum of their grads.
    n = tree.size
    copies = [make_cell(kind) for _ in range(n)]
    for cp in copies:
        cp.load_state_dict(cell.state_dict())
    flat = tree.flat()
    kids = [[] for _ in range(n)]
    for j in range(n - 1):
        kids[int(flat.parent[j])].append(j)
    hs, cs = [], []
    K = 2 if kind == "nary" else max(map(len, kids))  # the slots every strategy gives
    from treelstm.executor import _node_step, _Step

    calls = []
    for j in range(n):
        hj, cj = _node_step(
            _Step(copies[j]), x[j : j + 1], [hs[k] for k in kids[j]], [cs[k] for k in kids[j]], K
        )
        hs.append(hj)
        cs.append(cj)
        calls.append(j)
    torch.cat(hs).sum().backward()
    assert len(calls) == n  # a cell evaluated at k nodes contributes exactly k terms
    for name, g in shared.items():
        total = sum(dict(cp.named_parameters())[name].grad for cp in copies)
        torch.testing.assert_close(g, total, rtol=0, atol=1e-10)


def test_cell_counts_one_term_per_node():
    """A cell evaluated at k nodes is called exactly k times (k gradient terms)."""
    cell = make_cell("childsum")
    calls = []
    cell.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    t = chain(9)
    evaluate_tree(cell, t, node_inputs(t))
    assert calls == [1] * 9


def test_bad_arguments_raise_value_error():
    """Wrong shapes and unknown switches give ValueError naming the problem."""
    with pytest.raises(ValueError, match="input_at"):
        ChildSumCell(3, 4, input_at="internal")
    cell = NaryCell(3, 4, n_ary=2)
    with pytest.raises(ValueError, match="K=2"):
        cell(
            torch.zeros(1, 3),
            torch.zeros(1, 3, 4),
            torch.zeros(1, 3, 4),
            torch.ones(1, 3, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match=r"x must have shape"):
        cell(
            torch.zeros(1, 5),
            torch.zeros(1, 2, 4),
            torch.zeros(1, 2, 4),
            torch.ones(1, 2, dtype=torch.bool),
        )


class _Eval(torch.nn.Module):
    """evaluate_tree as a module, so functional_call can swap the cell's parameters."""

    def __init__(self, cell, tree):
        super().__init__()
        self.cell = cell
        self.tree = tree

    def forward(self, x):
        return evaluate_tree(self.cell, self.tree, x)


def _reverse_children(tree: Tree) -> Tree:
    built = {}
    for node in tree.postorder():
        built[id(node)] = Tree(
            node.label, node.word, [built[id(k)] for k in reversed(node.children)]
        )
    return built[id(tree)]


def _permute_inputs(tree: Tree, rev: Tree, x: torch.Tensor) -> torch.Tensor:
    """x rows follow tree's post-order; return rows in rev's post-order for the same nodes."""
    # Pre-order positions identify nodes across the two trees (reversal mirrors them).
    pos = {id(n): k for k, n in enumerate(tree.postorder())}
    mirror = {}
    stack = [(tree, rev)]
    while stack:
        a, b = stack.pop()
        mirror[id(b)] = pos[id(a)]
        stack.extend(zip(a.children, reversed(b.children), strict=True))
    return x[[mirror[id(n)] for n in rev.postorder()]]
