"""Users' cells (issue 12): the cell protocol, the same child slots K on every strategy, the
fused kernels only where the cell class declares them and changes nothing they stand in for,
and one clear error for each protocol mistake."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from treelstm import (
    ChildSumCell,
    NaryCell,
    Tree,
    TreeLSTM,
    build_schedule,
    explain,
    fused_kernel,
    run,
)
from treelstm.executor import STRATEGIES
from treelstm.kernels import ChildSumKernel, NaryKernel, TopDownKernel

from .oracle import assert_all_close, outputs_and_grads, strategy_fn
from .strategies import forests
from .user_cells import Answer42, Nary42, OrderedBinaryCell, TreeGRU

pytestmark = pytest.mark.usefixtures("float64", "one_thread")

IN, H = 3, 4
TREES = [
    "(3 (2 (1 a) (2 b)) (4 (3 c) (1 (2 d) (2 e))))",
    "(1 (0 f) (2 g) (2 h))",  # three children
    "(2 h)",
    "(1 (2 (3 a)))",  # a unary chain
]


def trees(widest=3):
    out = [Tree.from_ptb(s) for s in TREES]
    return (
        out if widest >= 3 else [t for t in out if max(len(n.children) for n in t.preorder()) <= 2]
    )


def seeded(make, *args, **kw):
    torch.manual_seed(0)
    return make(*args, **kw)


def check_every_strategy(cell, ts, direction="up", n_ary=None):
    """Every strategy equals the per-node evaluator: h, c, loss, x's and every weight's grad."""
    sched = build_schedule(ts, n_ary=n_ary)
    x = torch.randn(sched.num_nodes, cell.input_size, generator=torch.Generator().manual_seed(1))
    want = outputs_and_grads(cell, strategy_fn(cell, ts, sched, "oracle", direction), x)
    for strategy in STRATEGIES:
        got = outputs_and_grads(cell, strategy_fn(cell, ts, sched, strategy, direction), x)
        assert_all_close(got, want, f"{type(cell).__name__} {strategy} {direction}")
    return want


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of every fused kernel (their own code still runs)."""
    calls = []
    for k in (ChildSumKernel, NaryKernel, TopDownKernel):
        original = k.run

        def counted(cell, schedule, x, k=k, original=original):
            calls.append(k.__name__)
            return original(cell, schedule, x)

        monkeypatch.setattr(k, "run", staticmethod(counted))
    return calls


# ----------------------------------------------------------------------------- the case


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("make", [Answer42, Nary42])
def test_a_subclass_overriding_forward_gets_its_own_result_on_every_strategy(make, direction):
    """The issue: ChildSumCell subclass returning 42 gave 0.010 on "level" (the kernel was
    picked by isinstance). Now every strategy, both directions, calls the override."""
    n = 1 if direction == "down" else 2
    cell = make(IN, H) if make is Answer42 else make(IN, H, n_ary=n)
    ts = trees(widest=2 if make is Nary42 else 3)
    sched = build_schedule(ts)
    x = torch.randn(sched.num_nodes, IN)
    for strategy in STRATEGIES:
        h, _ = run(cell, sched, x, strategy, direction=direction)
        assert torch.equal(h, torch.full_like(h, 42.0)), strategy
    assert fused_kernel(cell, direction)[0] is None
    assert explain(cell, direction=direction).startswith("generic")
    assert "redefines forward" in explain(cell, direction=direction)
    enc = TreeLSTM(10, cell, direction=direction)  # the encoder's default strategy too
    assert torch.equal(enc(sched).h, torch.full((sched.num_nodes, H), 42.0))


def _shift_project(self, x, is_leaf=None):
    return type(self).__mro__[1].project(self, x, is_leaf) + 0.25


def _shift_input_parts(self, x, num_leaves):
    parts = type(self).__mro__[1].input_parts(self, x, num_leaves)
    return parts._replace(b_main=parts.b_main + 0.25)


def _halve_finish(self, a_main, fc):
    h, c = type(self).__mro__[1]._finish(self, a_main, fc)
    return 0.5 * h, c


OVERRIDES = {"project": _shift_project, "input_parts": _shift_input_parts, "_finish": _halve_finish}


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("base", [ChildSumCell, NaryCell])
@pytest.mark.parametrize("method", sorted(OVERRIDES))
def test_a_subclass_redefining_what_a_kernel_bypasses_takes_the_generic_path(
    method, base, direction, kernel_calls
):
    """project / input_parts / _finish redefined: the kernel would skip or mix them, so the
    cell runs on the generic path and matches the per-node evaluator (which calls forward)."""
    sub = type(f"My{base.__name__}", (base,), {method: OVERRIDES[method]})
    n_ary = {"n_ary": 1 if direction == "down" else 2} if base is NaryCell else {}
    cell = seeded(sub, IN, H, **n_ary)
    assert fused_kernel(cell, direction)[0] is None
    why = explain(cell, direction=direction)
    assert why.startswith("generic") and f"redefines {method}" in why, why
    check_every_strategy(cell, trees(widest=3 if base is ChildSumCell else 2), direction)
    assert kernel_calls == []
    # The base class itself still takes the kernel, and the override really changes the result.
    plain = seeded(base, IN, H, **n_ary)
    assert fused_kernel(plain, direction)[0] is not None
    sched = build_schedule(trees(widest=3 if base is ChildSumCell else 2))
    x = torch.randn(sched.num_nodes, IN)
    h_sub = run(cell, sched, x, direction=direction)[0]
    h_plain = run(plain, sched, x, direction=direction)[0]
    if method != "input_parts":  # forward never calls input_parts: the same function there
        assert not torch.allclose(h_sub, h_plain)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_subclass_that_only_configures_keeps_the_fused_kernel(direction, kernel_calls):
    """A subclass that only sets switches in __init__ computes ChildSumCell's function: fused."""

    class Relatedness(ChildSumCell):
        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size, output_gate=False)

    cell = seeded(Relatedness, IN, H)
    assert explain(cell, direction=direction).startswith("fused")
    check_every_strategy(cell, trees(), direction)
    assert kernel_calls and set(kernel_calls) == {
        "ChildSumKernel" if direction == "up" else "TopDownKernel"
    }


def test_redeclaring_the_kernel_opts_back_in_and_none_opts_out(kernel_calls):
    """A subclass that redefines forward but declares level_kernel itself says it still
    computes the base function: fused. A base declaring level_kernel = None opts out."""

    class Traced(ChildSumCell):
        level_kernel = ChildSumKernel  # forward below adds nothing to the function

        def forward(self, x, child_h, child_c, child_mask):
            return super().forward(x, child_h, child_c, child_mask)

    class NoKernel:
        level_kernel = None

    class Plain(NoKernel, ChildSumCell):
        pass

    assert fused_kernel(Traced(IN, H))[0] is ChildSumKernel
    assert fused_kernel(Traced(IN, H), "down")[0] is None  # down_kernel was not redeclared
    cell = seeded(Traced, IN, H)
    check_every_strategy(cell, trees())
    assert "ChildSumKernel" in kernel_calls
    assert explain(Plain(IN, H)).startswith("generic: one Plain call per level")
    assert "declares no level_kernel" in explain(Plain(IN, H))


class Doubled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_instance_changes_the_kernel_would_skip_take_the_generic_path(kernel_calls):
    """Hooks on the cell or on W, a W that is not a plain Linear, a forward set on the
    instance: the kernel would skip each, so the generic path runs (and the hook fires)."""
    seen = []
    hooked = seeded(ChildSumCell, IN, H)
    hooked.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    w_hooked = seeded(ChildSumCell, IN, H)
    w_hooked.W.register_forward_pre_hook(lambda m, i: None)
    replaced = seeded(ChildSumCell, IN, H)
    doubled = Doubled(IN, replaced.W.out_features)
    doubled.load_state_dict(replaced.W.state_dict())
    replaced.W = doubled
    patched = seeded(ChildSumCell, IN, H)
    patched.forward = lambda *a: ChildSumCell.forward(patched, *a)
    for cell, why in [(hooked, "hooks"), (w_hooked, "its W has forward hooks"),
                      (replaced, "its W is a Doubled"), (patched, "forward is set")]:  # fmt: skip
        text = explain(cell)
        assert text.startswith("generic") and why in text, text
        check_every_strategy(cell, trees())
    assert kernel_calls == [] and seen
    sched = build_schedule(trees())
    seen.clear()
    run(hooked, sched, torch.zeros(sched.num_nodes, IN))
    assert seen == [
        b - a for a, b in zip(sched.level_bounds[:-1], sched.level_bounds[1:], strict=True)
    ]


# ----------------------------------------------------------------------------- users' cells


@settings(max_examples=12, deadline=None)
@given(forests(max_size=5, max_children=4), st.sampled_from(["up", "down"]))
def test_a_tree_gru_matches_the_per_node_evaluator_on_every_strategy(ts, direction):
    """A user's Child-Sum Tree-GRU (h alone): every strategy, both directions, float64,
    values and every gradient; c is None throughout."""
    cell = seeded(TreeGRU, IN, H)
    want = check_every_strategy(cell, ts, direction)
    assert want[1] is None


@settings(max_examples=12, deadline=None)
@given(forests(max_size=5, max_children=2))
def test_an_ordered_binary_cell_matches_the_per_node_evaluator_on_every_strategy(ts):
    """A user's cell with n_ary = 2 that unpacks exactly two slots: leaves and unary nodes get
    two slots too on every strategy (the per-node path used to pass 0 or 1 and fail)."""
    cell = seeded(OrderedBinaryCell, IN, H)
    check_every_strategy(cell, ts)


class SlotRecorder(nn.Module):
    """Records the K of every call; h = x projected + the children's masked sum."""

    def __init__(self, input_size, hidden_size, n_ary=None):
        super().__init__()
        self.input_size, self.hidden_size, self.n_ary = input_size, hidden_size, n_ary
        self.W = nn.Linear(input_size, hidden_size)
        self.K: set[int] = set()
        self.child_c_zero = True

    def forward(self, x, child_h, child_c, child_mask):
        self.K.add(child_h.shape[1])
        assert child_mask.dtype == torch.bool and child_mask.shape == child_h.shape[:2]
        self.child_c_zero &= bool((child_c == 0).all())
        return torch.tanh(self.W(x) + (child_h * child_mask.unsqueeze(-1)).sum(1))


@pytest.mark.parametrize(
    "n_ary, widest, want",
    [(None, 3, {3}), (None, 2, {2}), (3, 2, {3}), (5, 3, {5})],
)
def test_every_strategy_gives_the_same_child_slots(n_ary, widest, want):
    """K = n_ary when the cell declares it, else the batch's widest node, on every strategy
    (the per-node strategy included), every call; top-down K = 1; an h-only cell's child_c
    is zeros."""
    for strategy in STRATEGIES:
        cell = SlotRecorder(IN, H, n_ary)
        sched = build_schedule(trees(widest))
        h, c = run(cell, sched, torch.randn(sched.num_nodes, IN), strategy)
        assert cell.K == want and c is None and cell.child_c_zero, strategy
        down = SlotRecorder(IN, H)
        run(down, sched, torch.randn(sched.num_nodes, IN), strategy, direction="down")
        assert down.K == {1}, strategy


# ----------------------------------------------------------------------------- clear errors


class NoSizes(nn.Module):
    def forward(self, x, child_h, child_c, child_mask):
        return x


class Returns(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.input_size, self.hidden_size, self.what = IN, H, what
        self.calls = 0

    def forward(self, x, child_h, child_c, child_mask):
        self.calls += 1
        h = torch.zeros(x.shape[0], H)
        return {
            "three": (h, h, h),
            "dict": {"h": h},
            "narrow": h[:, :2],
            "flip": h if self.calls == 1 else (h, h),
        }[self.what]


def test_protocol_mistakes_are_one_clear_line():
    """Each mistake the issue lists names what the protocol needs."""
    sched = build_schedule(trees())
    x = torch.zeros(sched.num_nodes, IN)
    with pytest.raises(
        TypeError,
        match=r"NoSizes has no attribute 'input_size'.*input_size and "
        r"hidden_size.*cell\(x, child_h, child_c, child_mask\) -> h or \(h, c\)",
    ):
        run(NoSizes(), sched, x)
    with pytest.raises(TypeError, match="NoSizes has no attribute 'input_size'"):
        TreeLSTM(5, NoSizes())
    with pytest.raises(TypeError, match=r"returned 3 values; a cell returns h or \(h, c\)"):
        run(Returns("three"), sched, x)
    with pytest.raises(TypeError, match="returned dict; a cell returns h or"):
        run(Returns("dict"), sched, x)
    with pytest.raises(ValueError, match=r"returned h of shape \(\d+, 2\) for \d+ nodes"):
        run(Returns("narrow"), sched, x)
    with pytest.raises(TypeError, match=r"returned \(h, c\) after returning h alone"):
        run(Returns("flip"), sched, x)
    bad = Returns("three")
    bad.n_ary = "2"
    with pytest.raises(ValueError, match="n_ary is '2'"):
        run(bad, sched, x)
    bad.hidden_size = 4.0
    with pytest.raises(ValueError, match="hidden_size is 4.0, not a positive int"):
        run(bad, sched, x)
    with pytest.raises(ValueError, match=r"NaryCell\(n_ary=2\) takes 2 ordered children, but a "
                       "top-down step has one child slot"):  # fmt: skip
        run(NaryCell(IN, H), sched, x, direction="down")
    with pytest.raises(ValueError, match=r"OrderedBinaryCell\(n_ary=2\) takes at most 2"):
        run(OrderedBinaryCell(IN, H), sched, x)
    with pytest.raises(ValueError, match="unknown direction 'sideways'"):
        run(ChildSumCell(IN, H), sched, x, direction="sideways")
