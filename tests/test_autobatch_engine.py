"""dynamic.autobatch's fast paths keep every promise of the slow ones.

The module-call hook (`nn.Module._call_impl` wrapped for the duration of a map only, inert for
other threads), examples that are rows of one data tensor (a strided view instead of a stack),
a lone lane group (its calls run at once, never pausing), fused groups that wait on their
inputs' producers as a unit: each is compared with the examples run alone in float64 (values
and gradients, 1e-9), and no run leaves objects, cycles or hooks behind.
"""

from __future__ import annotations

import gc
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dynamic.autobatch import autobatch, engine, state, values
from dynamic.autobatch.fused import Group
from dynamic.autobatch.lanes import stacked_rows
from dynamic.autobatch.nodes import Node
from dynamic.autobatch.values import Lazy
from tests.strategies import trees
from tests.test_autobatch import (  # (recording: a fixture)
    NET,
    H,
    TreeModel,
    assert_batched_equals_alone,
    halting,
    recording,  # noqa: F401
)
from treelstm import ChildSumCell, Tree

pytestmark = pytest.mark.usefixtures("float64", "one_thread", "recording")
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _per_sample(example):
    """The seed's halting loop on (image row, label): a per-sample loss."""
    x, y = example
    h = F.relu(NET.inp(x))
    steps = 0
    while steps < 4 and h.norm() < 2.0:
        h = torch.tanh(NET.hid(h)) * 1.7
        steps += 1
    return F.nll_loss(F.log_softmax(NET.out(h), dim=-1), y)


# ----------------------------------------------------------------------------------------
# Rows of one data tensor
# ----------------------------------------------------------------------------------------
@FAST
@given(st.integers(2, 9), st.sampled_from(["plain", "strided", "reversed", "grad", "copied"]))
def test_examples_that_are_rows_of_a_tensor_equal_alone(n, kind):
    """``zip(x, y)`` rows become one group at once (their stack, no per-example keys) when
    they are alike: plain tensors of one shape and dtype that all need a gradient or none;
    else the general lane keys decide. Both equal running alone."""
    torch.manual_seed(n)
    base = torch.randn(n, 12) * 0.5
    x = base[:, ::2] if kind == "strided" else base[:, :6]
    if kind == "grad":
        x = x.clone().requires_grad_()
    rows = list(x)
    if kind == "reversed":
        rows = rows[::-1]
    y = torch.randint(0, 3, (n,))
    examples = list(zip(rows, y, strict=True))
    if kind == "copied":  # one row rounded and copied: no view of the others, still alike
        rows[0] = rows[0].float().double()
        examples[0] = (rows[0], y[0])
    group = stacked_rows(examples)
    assert group is not None and torch.equal(group[0].src, torch.stack(rows))
    assert group[0].src.requires_grad == (kind == "grad")
    params = list(NET.parameters()) + ([x] if kind == "grad" else [])
    assert_batched_equals_alone(_per_sample, examples, params)


def test_stacked_rows_only_for_alike_tensors_and_equal_plain_values():
    x = torch.randn(4, 6)
    assert stacked_rows(list(x)) is not None
    assert stacked_rows([(r, 1) for r in x]) is not None
    assert stacked_rows([(r, i) for i, r in enumerate(x)]) is None  # plain values differ
    assert stacked_rows([(r, None) for r in x]) is not None
    assert stacked_rows([[r] for r in x]) is not None
    assert stacked_rows([{"x": r} for r in x]) is None  # (dicts go the general way)
    assert stacked_rows([x[0], x[1, :5]]) is None  # shapes differ
    assert stacked_rows([x[0], x[1].to(torch.float32)]) is None  # dtypes differ (x: float64)
    assert stacked_rows([x[0], x[1].clone().requires_grad_()]) is None  # gradient or not
    assert stacked_rows([nn.Parameter(x[0]), nn.Parameter(x[1])]) is None  # not plain tensors


# ----------------------------------------------------------------------------------------
# A lone lane group runs its calls at once
# ----------------------------------------------------------------------------------------
def test_a_lone_lane_group_never_pauses_and_equals_alone():
    torch.manual_seed(3)
    x = torch.rand(16, 6) * 0.1  # every sample takes all 4 steps: one group, never split
    examples = list(zip(x, torch.randint(0, 3, (16,)), strict=True))
    f = assert_batched_equals_alone(_per_sample, examples, list(NET.parameters()), profile=True)
    f.map(examples)
    p = f.profile
    assert p.lane_groups == 1 and p.splits == 0
    assert p.demands == 0 and p.rounds == 0  # values were ready when asked: no pause, no flush
    assert sum(s.calls for s in p.signatures.values()) == 16 * sum(
        s.batches for s in p.signatures.values()
    )


def test_a_lone_group_after_others_finished_still_batches_with_their_pending_calls():
    """Groups that finished without pausing leave pending calls: the last group is not
    'alone' until they ran, so one batch still serves all of them."""
    lin = nn.Linear(4, 3)
    examples = [(torch.randn(r, 4),) for r in (1, 1, 2, 2, 3, 3)]
    f = autobatch(lambda e: lin(e[0]).sum() * 2, profile=True)
    f.map(examples)
    out = f.map(examples)
    by_name = {s.name.split(" ")[0]: s for s in f.profile.signatures.values()}
    assert by_name["Linear"].batches == 1 and by_name["Linear"].calls == 6
    for o, e in zip(out, examples, strict=True):
        torch.testing.assert_close(o, lin(e[0]).sum() * 2, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------
# Trees: fused groups wait as a unit
# ----------------------------------------------------------------------------------------
@FAST
@given(st.lists(trees(max_leaves=7), min_size=2, max_size=6), st.sampled_from(["agenda", "depth"]))
def test_trees_recorded_in_pieces_across_pauses_equal_alone(forest, policy):
    """Each tree pauses once in the middle (a value of its first leaf), so groups are
    recorded over two flushes and consumers link to groups of earlier flushes."""
    model = TreeModel(ChildSumCell(4, H))

    def paused(tree):
        first = model.emb(torch.tensor([0]))
        if first.sum() > 100:  # never true, but it needs the value: a pause
            return model(tree)
        return model(tree)

    assert_batched_equals_alone(paused, forest, list(model.parameters()), policy=policy)


# ----------------------------------------------------------------------------------------
# Nothing is left behind
# ----------------------------------------------------------------------------------------
def _engine_objects() -> int:
    return sum(1 for o in gc.get_objects() if type(o) in (Node, Group, Lazy))


def _states(model, t, x, hs):
    """A tree's (h, c) by plain recursion (a module-level function: no closure cycle)."""
    if t.children:
        kids = [_states(model, k, x, hs) for k in t.children]
        h, c = model.cell(
            model.zero_x,
            torch.stack([h for h, _ in kids], 1),
            torch.stack([c for _, c in kids], 1),
            torch.ones(1, len(kids), dtype=torch.bool),
        )
    else:
        j = len([v for v in hs if v is not None])
        pad = torch.zeros(1, 0, H)
        h, c = model.cell(x[j : j + 1], pad, pad, torch.zeros(1, 0, dtype=torch.bool))
    hs.append(h)
    return h, c


def test_a_run_leaves_no_cycles_and_no_graph_behind():
    """The engine breaks its own cycles: a map makes no cyclic garbage (the collector has
    nothing to do after it), and once the results are dropped no node, group or lazy value
    of it survives."""
    model = TreeModel(ChildSumCell(4, H))
    forest = [Tree.from_ptb("(3 (2 good) (4 (2 not) (1 (2 a) (2 film))))"), Tree.from_ptb("(1 a)")]

    def tree_fn(tree):
        x = model.emb(torch.arange(len(tree.words())) % 9)
        hs: list = []
        _states(model, tree, x, hs)
        return model.head(torch.cat(hs)).sum()

    examples = [torch.rand(6) * s for s in (0.1, 1.0, 3.0)]
    f, g = autobatch(halting), autobatch(tree_fn)
    f.map(examples)
    g.map(forest)
    gc.collect()
    before = _engine_objects()
    was = gc.isenabled()
    gc.disable()
    try:
        out = f.map(examples)
        out2 = g.map(forest)
        assert gc.collect() == 0  # no cyclic garbage was made
    finally:
        if was:
            gc.enable()
    del out, out2
    assert _engine_objects() == before


def test_module_calls_outside_a_map_and_on_other_threads_are_untouched():
    """The hook is on only during a map, and another thread's module call during a map runs
    as if no map were running (its result is a tensor, computed at once)."""
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 6)
    expected = lin(x)
    seen: list = []
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait(5)
        seen.append(lin(x))
        done.set()

    th = threading.Thread(target=other)
    th.start()

    def fn(v):
        started.set()
        done.wait(5)  # the other thread calls the module while this map is active
        return lin(v)

    autobatch(fn).map([torch.randn(6), torch.randn(6)])
    th.join(5)
    assert type(seen[0]) is torch.Tensor and torch.equal(seen[0], expected)
    assert nn.Module._call_impl is state._original_impl
    assert nn.Module.__call__ is nn.Module._wrapped_call_impl
    assert torch.equal(lin(x), expected)


# ----------------------------------------------------------------------------------------
# The shortcuts past PyTorch's dispatch: torch.stack / torch.cat and fast module classes
# ----------------------------------------------------------------------------------------
_ORIGINAL_STACK, _ORIGINAL_CAT = torch.stack, torch.cat


def _no_shortcuts_left() -> None:
    assert torch.stack is _ORIGINAL_STACK and torch.cat is _ORIGINAL_CAT
    assert F.handle_torch_function is torch.overrides.handle_torch_function
    assert "__call__" not in ChildSumCell.__dict__ and "__call__" not in nn.Linear.__dict__
    assert Lazy.__dict__["__getitem__"] is values._getitem  # (the C extension's hook: gone)
    assert not state._installed


@FAST
@given(st.lists(trees(max_leaves=5), min_size=1, max_size=4), st.booleans())
def test_stack_and_cat_of_every_kind_through_the_shortcut_equal_alone(forest, second):
    """stack/cat along dims 0, 1, -1, with keywords, tuples, plain tensors among the lazy
    parts, and a stack of plain tensors only, inside examples: equal to running alone (the
    second map of a function also takes the fast module classes)."""
    lin = nn.Linear(4, 4)
    plain = torch.randn(1, 4)

    def fn(x):
        a, b = lin(x), torch.tanh(lin(x))
        s = torch.stack([a, b], 1).sum(1) + torch.stack((a, plain), dim=-1).sum(-1)
        c = torch.cat([a, b], 0).sum(0, keepdim=True) + torch.cat((a, plain), dim=1)[:, :4]
        k = torch.stack(tensors=[a, b], dim=0).sum(0) + torch.stack([plain, plain]).sum(0)
        f = F.softmax(a, dim=-1) + F.linear(b, lin.weight) + F.relu(plain)  # F's shortcut
        return (s + c + k + f).sum()

    xs = [torch.randn(1, 4) * len(t.words()) for t in forest]
    f = assert_batched_equals_alone(fn, xs, list(lin.parameters()))
    if second:
        f.map(xs)
        assert_batched_equals_alone(fn, xs, list(lin.parameters()))
    _no_shortcuts_left()


def test_shortcuts_are_inert_on_other_threads_and_gone_after_a_map():
    """During a map, another thread's torch.stack / torch.cat and calls of a module class
    the map has hooked compute at once, as without autobatch; afterwards nothing is left."""
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 6)
    expected = (lin(x), torch.stack([x, x]), torch.cat([x, x]))
    seen: list = []
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait(5)
        seen.extend([lin(x), torch.stack([x, x]), torch.cat([x, x])])
        done.set()

    def fn(v):
        started.set()
        done.wait(5)
        return torch.stack([lin(v), lin(v)]).sum()

    f = autobatch(fn)
    f.map([torch.randn(6), torch.randn(6)])  # learns that fn calls nn.Linear
    th = threading.Thread(target=other)
    th.start()
    f.map([torch.randn(6), torch.randn(6)])  # nn.Linear.__call__ is the shortcut now
    th.join(5)
    for got, want in zip(seen, expected, strict=True):
        assert type(got) is torch.Tensor and torch.equal(got, want)
    _no_shortcuts_left()


def test_a_failing_example_leaves_no_shortcut_behind():
    lin = nn.Linear(3, 3)

    def fn(x):
        h = torch.stack([lin(x), lin(x)], 1)
        if x.sum() > 100:
            raise ValueError("too big")
        return h

    f = autobatch(fn)
    f.map([torch.randn(3)])
    with pytest.raises(Exception, match="too big"):
        f.map([torch.randn(3), torch.full((3,), 50.0)])
    _no_shortcuts_left()


def test_tensor_attributes_of_lazy_values_are_methods_data_or_refused():
    """Lazy values answer every Tensor attribute without ``__getattr__``: methods are
    recorded, data attributes (.T, .requires_grad) wait for the value (each example's own:
    a lane group's .T was the group's transposed before), in-place methods raise, names
    Tensor lacks are AttributeErrors."""
    lin = nn.Linear(3, 3)

    def fn(x):
        h = lin(x)
        flag = h.requires_grad
        return (h.T * torch.arange(1.0, 3.0)).sum() + h.sum(dim=-1).mean() * float(flag)

    xs = [torch.randn(2, 3), torch.randn(2, 3)]
    assert_batched_equals_alone(fn, xs, list(lin.parameters()))
    with pytest.raises(Exception, match="immutable"):
        autobatch(lambda x: lin(x).mul_(2)).map(xs)
    with pytest.raises(Exception, match="no attribute"):
        autobatch(lambda x: lin(x).no_such_tensor_attribute).map(xs)


@FAST
@given(st.lists(trees(max_leaves=6, max_children=2), min_size=1, max_size=4), st.booleans())
def test_second_map_of_trees_through_the_cell_shortcut_equals_alone(forest, nary):
    """From its second map a function's cell calls go through the cell classes' shortcut
    (`__call__` straight to the run's cell path): values and gradients still equal alone."""
    from treelstm import NaryCell

    cell = NaryCell(4, H, n_ary=2) if nary else ChildSumCell(4, H)
    model = TreeModel(cell)
    params = list(model.parameters())
    seen: list = []

    def fn(tree):
        seen.append(type(cell).__dict__.get("__call__"))
        return model(tree)

    f = autobatch(fn)
    f.map(forest)
    seen.clear()
    batched = f.map(forest)
    native = engine.run_class().native_hooks  # (the C extension's hook, or state.py's)
    want = native[1] if native else state._fast_cell_call
    assert seen and all(s is want for s in seen)
    alone = [model(t) for t in forest]
    for (bs, bh), (as_, ah) in zip(batched, alone, strict=True):
        torch.testing.assert_close(bs, as_, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(bh, ah, rtol=1e-9, atol=1e-9)
    sb = sum(s + h.sum() * 0.5 for s, h in batched)
    sa = sum(s + h.sum() * 0.5 for s, h in alone)
    for gb, ga in zip(torch.autograd.grad(sb, params, allow_unused=True),
                      torch.autograd.grad(sa, params, allow_unused=True), strict=True):  # fmt: skip
        if ga is None:
            assert gb is None or not gb.abs().max() > 0
        else:
            torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-9)
    _no_shortcuts_left()


@FAST
@given(
    st.lists(trees(max_leaves=6), min_size=1, max_size=4),
    st.sampled_from(["plain", "grad", "lazy"]),
)
def test_fused_inputs_at_leaves_with_any_internal_x_equal_alone(forest, inner):
    """A cell with input at the leaves ignores internal nodes' x: the fused call gives them
    zero rows when their x is plain and needs no gradient, else gathers them (their
    gradient is zero, not absent, as when each node runs alone)."""
    model = TreeModel(ChildSumCell(4, H, input_at="leaves"))
    extra = torch.randn(1, 4, requires_grad=inner == "grad")
    model.zero_x = extra
    params = list(model.parameters()) + ([extra] if inner == "grad" else [])

    def fn(tree):
        if inner == "lazy":  # every internal x is a lazy value needing a gradient
            model.zero_x = torch.tanh(model.emb(torch.tensor([0])))
        return model(tree)

    assert_batched_equals_alone(fn, forest, params)


@FAST
@given(st.lists(trees(max_leaves=6), min_size=1, max_size=4))
def test_fused_inputs_at_leaves_from_frozen_vectors_equal_alone(forest):
    """Leaves' x that needs no gradient (frozen word vectors, as in the benchmark): the
    fused call writes them into one zero buffer instead of a concatenation."""
    model = TreeModel(ChildSumCell(4, H, input_at="leaves"))
    model.emb.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    assert_batched_equals_alone(model, forest, params)


def test_a_module_class_that_refuses_the_shortcut_still_runs():
    """A module class whose metaclass forbids setting ``__call__`` keeps PyTorch's path."""

    class Frozen(type(nn.Module)):
        def __setattr__(cls, name, value):
            if name == "__call__":
                raise TypeError("frozen class")
            super().__setattr__(name, value)

    class Scale(nn.Module, metaclass=Frozen):
        def forward(self, x):
            return x * 2.0

    mod = Scale()
    f = autobatch(lambda x: mod(x).sum())
    xs = [torch.randn(3), torch.randn(3)]
    f.map(xs)
    out = f.map(xs)  # Scale is one of the function's module classes now
    for o, x in zip(out, xs, strict=True):
        torch.testing.assert_close(o, (x * 2.0).sum())
    assert "__call__" not in Scale.__dict__
    _no_shortcuts_left()
