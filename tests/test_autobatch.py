"""dynamic.autobatch: per-example code run batched equals each example run alone.

Every test compares the batched run with the same function called on each example eagerly
(plain PyTorch), in float64: the results and the gradient of every parameter and input, to
1e-9. Trees come from the shared hypothesis strategies; loops have data-dependent trip counts;
branches and random choices differ per example; batches mix all of them.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dynamic.autobatch import AutobatchError, MismatchError, autobatch, state
from tests.strategies import binary_trees, trees
from treelstm import ChildSumCell, NaryCell, Tree

pytestmark = pytest.mark.usefixtures("float64", "one_thread", "recording")


@pytest.fixture(scope="module", params=["native", "python"])
def recording(request):
    """Run a test module twice: recording through the C extension (dynamic/autobatch/
    _native.c; where it cannot be built, the Python path again), then in pure Python."""
    old = os.environ.get("TREELSTM_AUTOBATCH_NATIVE")
    os.environ["TREELSTM_AUTOBATCH_NATIVE"] = "1" if request.param == "native" else "0"
    yield request.param
    if old is None:
        del os.environ["TREELSTM_AUTOBATCH_NATIVE"]
    else:
        os.environ["TREELSTM_AUTOBATCH_NATIVE"] = old


FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = {
    w: i for i, w in enumerate(["a", "good", "film", "not", "é", "8\xa01\\/2", "-LRB-", "\\*", "."])
}
H, D = 5, 4


# ----------------------------------------------------------------------------------------
# The reference: each example alone, and a batched run, compared value by value and by grads
# ----------------------------------------------------------------------------------------
def _flat(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _flat(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat(o, out)
    else:
        out.append(obj)
    return out


def assert_batched_equals_alone(fn, examples, params, **options):
    """Values and d(sum of a random projection)/d(every param) agree to 1e-9 (float64)."""
    f = autobatch(fn, **options)
    batched = f.map(examples)
    alone = [fn(e) for e in examples]
    gen = torch.Generator().manual_seed(1)
    sb, sa = 0.0, 0.0
    for b, a in zip(batched, alone, strict=True):
        fb, fa = _flat(b, []), _flat(a, [])
        assert len(fb) == len(fa)
        for x, y in zip(fb, fa, strict=True):
            if not isinstance(y, torch.Tensor):
                assert x == y
                continue
            assert isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
            if y.is_floating_point() and y.requires_grad:
                w = torch.rand(y.shape, generator=gen)
                sb = sb + (x * w).sum()
                sa = sa + (y * w).sum()
    if params and isinstance(sa, torch.Tensor):
        gb = torch.autograd.grad(sb, params, allow_unused=True)
        ga = torch.autograd.grad(sa, params, allow_unused=True)
        for p, x, y in zip(params, gb, ga, strict=True):
            if y is None:
                assert x is None or not x.abs().max() > 0
            else:
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=f"grad {p.shape}")
    return f


# ----------------------------------------------------------------------------------------
# Tree-LSTMs written per tree (the library's cells called on one node)
# ----------------------------------------------------------------------------------------
class TreeModel(nn.Module):
    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(0)
        self.cell = cell
        self.emb = nn.Embedding(len(VOCAB), D)
        self.head = nn.Linear(H, 3)
        self.zero_x = torch.zeros(1, D)
        self.n = cell.n_ary if isinstance(cell, NaryCell) else None

    def slots(self, k):
        """(child_h padding, mask) for a leaf (k=0) or a node with k children."""
        if self.n is None:
            return torch.zeros(1, 0, H), torch.ones(1, k, dtype=torch.bool)
        return torch.zeros(1, self.n, H), torch.tensor([[i < k for i in range(self.n)]])

    def forward(self, tree):
        """Per tree: recursion over the nodes; a class score at every node."""
        x = self.emb(torch.tensor([VOCAB[w] for w in tree.words()]))
        leaf = iter(range(x.shape[0]))
        hs = []

        def node(t):
            if t.children:
                kids = [node(k) for k in t.children]
                _, mask = self.slots(len(kids))
                pad = [] if self.n is None else [torch.zeros(1, H)] * (self.n - len(kids))
                ch = torch.stack([h for h, _ in kids] + pad, 1)  # N-ary: missing slots zero
                cc = torch.stack([c for _, c in kids] + pad, 1)
                h, c = self.cell(self.zero_x, ch, cc, mask)
            else:
                pad, mask = self.slots(0)
                mask = mask[:, : pad.shape[1]] & False
                j = next(leaf)
                h, c = self.cell(x[j : j + 1], pad, pad, mask)
            hs.append(h)
            return h, c

        root_h, _ = node(tree)
        scores = self.head(torch.cat(hs)).log_softmax(-1)
        return scores.sum(), root_h


@FAST
@given(st.lists(trees(max_leaves=6), min_size=1, max_size=5), st.sampled_from(["agenda", "depth"]))
def test_childsum_tree_lstm_per_tree_equals_alone(forest, policy):
    model = TreeModel(ChildSumCell(D, H, input_at="leaves"))
    params = list(model.parameters())
    for fused in (True, False):
        assert_batched_equals_alone(model, forest, params, policy=policy, fused=fused)


@FAST
@given(
    st.one_of(
        st.lists(binary_trees(max_leaves=6), min_size=1, max_size=5),
        st.lists(trees(max_leaves=5, max_children=2), min_size=1, max_size=4),  # unary nodes
    )
)
def test_nary_tree_lstm_per_tree_equals_alone(forest):
    model = TreeModel(NaryCell(D, H, n_ary=2))
    params = list(model.parameters())
    for fused in (True, False):
        assert_batched_equals_alone(model, forest, params, fused=fused)


def test_fused_dispatch_runs_one_level_executor_call():
    model = TreeModel(ChildSumCell(D, H))
    forest = [Tree.from_ptb("(3 (2 good) (4 (2 not) (1 (2 a) (2 film))))")] * 4
    f = autobatch(model, profile=True)
    f.map(forest)  # the first run learns each signature's output structure (it pauses)
    f.map(forest)
    names = [s.name for s in f.profile.signatures.values()]
    assert "ChildSumCell (fused level executor)" in names
    fused = next(s for s in f.profile.signatures.values() if "fused" in s.name)
    assert fused.batches == 1 and fused.calls == 4 * forest[0].size


class FeedbackModel(TreeModel):
    """An internal node's input computed from its first child's state: the cell calls of a
    tree could not run as one fused group (it would wait on itself), so the group is turned
    back into ordinary calls, with every link its members and consumers skipped."""

    def __init__(self, cell):
        super().__init__(cell)
        self.proj = nn.Linear(H, D)

    def forward(self, tree):
        x = self.emb(torch.tensor([VOCAB[w] for w in tree.words()]))
        leaf = iter(range(x.shape[0]))
        hs = []

        def node(t):
            if t.children:
                kids = [node(k) for k in t.children]
                ch = torch.stack([h for h, _ in kids], 1)
                cc = torch.stack([c for _, c in kids], 1)
                mask = torch.ones(1, len(kids), dtype=torch.bool)
                h, c = self.cell(torch.tanh(self.proj(kids[0][0])), ch, cc, mask)
            else:
                j = next(leaf)
                pad = torch.zeros(1, 0, H)
                h, c = self.cell(x[j : j + 1], pad, pad, torch.zeros(1, 0, dtype=torch.bool))
            hs.append(h)
            return h, c

        root_h, root_c = node(tree)
        return self.head(torch.cat(hs)).log_softmax(-1).sum(), root_h * root_c


@FAST
@given(st.lists(trees(max_leaves=6), min_size=1, max_size=4), st.sampled_from(["agenda", "depth"]))
def test_a_fused_group_that_waits_on_itself_is_dissolved(forest, policy):
    model = FeedbackModel(ChildSumCell(D, H))
    assert_batched_equals_alone(model, forest, list(model.parameters()), policy=policy)


# ----------------------------------------------------------------------------------------
# Data-dependent control flow: loops, branches, random choices passed in, mixes
# ----------------------------------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.inp = nn.Linear(6, 4)
        self.hid = nn.Linear(4, 4)
        self.wide = nn.Linear(4, 7)
        self.out = nn.Linear(4, 3)


NET = Mlp().double()  # built at import, before the float64 fixture


def halting(x, threshold=2.0, max_steps=6):
    """The seed's halting loop, per sample: its own number of steps."""
    h = F.relu(NET.inp(x))
    steps = 0
    while h.norm() < threshold and steps < max_steps:
        h = torch.tanh(NET.hid(h)) * 1.7
        steps += 1
    return F.log_softmax(NET.out(h), dim=-1), steps


def branchy(example):
    """A per-sample coin (passed in) picks the branch; a value-dependent `if` picks another."""
    x, coin = example
    h = F.relu(NET.inp(x))
    for _ in range(coin):
        h = F.relu(NET.hid(h))
    if h.sum() > 1.0:
        h = h * 2 - 0.5
    else:
        h = NET.wide(h)[..., :4].sigmoid()
    return NET.out(h)


@FAST
@given(st.lists(st.floats(0.05, 3.0), min_size=1, max_size=8), st.sampled_from(["agenda", "depth"]))
def test_halting_loop_trip_counts_differ(scales, policy):
    torch.manual_seed(2)
    xs = [torch.randn(6) * s for s in scales]
    f = assert_batched_equals_alone(halting, xs, list(NET.parameters()), policy=policy)
    steps = [s for _, s in f.map(xs)]
    assert steps == [halting(x)[1] for x in xs]


@FAST
@given(st.lists(st.tuples(st.floats(-2, 2), st.integers(0, 3)), min_size=1, max_size=8))
def test_branches_and_passed_in_coins(draws):
    torch.manual_seed(3)
    examples = [(torch.randn(1, 6) * s, coin) for s, coin in draws]
    assert_batched_equals_alone(branchy, examples, list(NET.parameters()))


def test_mixed_batch_of_trees_loops_and_branches():
    model = TreeModel(ChildSumCell(D, H))
    torch.manual_seed(4)
    forest = [
        Tree.from_ptb(s) for s in ("(1 a)", "(2 (1 not) (3 good))", "(0 (1 (2 a) (2 .)) (2 é))")
    ]
    xs = [torch.randn(6) * s for s in (0.1, 1.0, 3.0)]
    bs = [(torch.randn(1, 6), c) for c in (0, 2, 3)]

    def mixed(example):
        kind, value = example
        if kind == "tree":
            return model(value)[0]
        if kind == "loop":
            return halting(value)[0].sum()
        return branchy(value).sum()

    examples = (
        [("tree", t) for t in forest] + [("loop", x) for x in xs] + [("branch", b) for b in bs]
    )
    examples = examples[::2] + examples[1::2]
    params = list(model.parameters()) + list(NET.parameters())
    assert_batched_equals_alone(mixed, examples, params)


def test_inputs_requiring_grad_get_their_gradients():
    xs = [torch.randn(6, requires_grad=True) for _ in range(4)]
    assert_batched_equals_alone(lambda x: halting(x)[0], xs, xs)


# ----------------------------------------------------------------------------------------
# Errors, global state, grad mode, check mode, profile
# ----------------------------------------------------------------------------------------
def _clean_state():
    assert state.active() is None
    assert nn.Module._call_impl is state._original_impl
    assert nn.Module.__call__ is nn.Module._wrapped_call_impl  # never touched
    assert gc.isenabled()
    assert torch.is_grad_enabled()


def test_exception_in_an_example_names_its_index():
    def fn(x):
        h = NET.inp(x)
        if h.sum() > 100:  # a value demand first, so the error comes after a pause
            return h
        if x[0].item() == 7.0:
            raise ValueError("bad example")
        return h

    xs = [torch.randn(6) for _ in range(5)]
    xs[3][0] = 7.0
    with pytest.raises(
        AutobatchError, match=r"example 3: ValueError: bad example \(at .*test_autobatch.py:\d+\)"
    ) as e:
        autobatch(fn).map(xs)
    assert e.value.example == 3
    _clean_state()


def test_a_call_that_fails_for_one_example_names_it():
    lin = nn.Linear(6, 2)
    xs = [torch.randn(1, 6) for _ in range(4)] + [torch.randn(1, 5)]
    with pytest.raises(AutobatchError, match=r"example 4: Linear raised RuntimeError") as e:
        autobatch(lambda x: lin(x) * 2).map(xs)
    assert e.value.example == 4
    _clean_state()


def test_no_state_left_behind_and_runs_repeat_exactly():
    xs = [torch.randn(6) * s for s in (0.2, 1, 2)]
    f = autobatch(halting)
    first = f.map(xs)
    _clean_state()
    again = f.map(xs)
    for (a, sa), (b, sb) in zip(first, again, strict=True):
        assert torch.equal(a, b) and sa == sb
    gc.disable()
    try:
        f.map(xs)
        assert not gc.isenabled()  # the caller's collector setting is kept
    finally:
        gc.enable()


def test_no_grad_outside_and_inside():
    xs = [torch.randn(6) for _ in range(3)]
    with torch.no_grad():
        out = autobatch(lambda x: halting(x)[0]).map(xs)
    assert not any(o.requires_grad for o in out)

    def half(x):
        with torch.no_grad():
            frozen = NET.inp(x)
        return NET.hid(F.relu(NET.inp(x))) + frozen

    out = autobatch(half).map(xs)
    _clean_state()
    ref = [half(x) for x in xs]
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b)
    g1 = torch.autograd.grad(torch.stack(out).sum(), NET.inp.weight)[0]
    g2 = torch.autograd.grad(torch.stack(ref).sum(), NET.inp.weight)[0]
    torch.testing.assert_close(g1, g2)


def test_check_mode_passes_and_catches_a_wrong_rowwise_declaration():
    xs = [torch.randn(1, 6) for _ in range(4)]
    autobatch(lambda x: halting(x[0])[0], check=True).map(xs)

    class BatchMean(nn.Module):  # not row-wise: mixes the rows of a batch
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    bm = BatchMean()
    fn = autobatch(lambda x: NET.inp(bm(x)), rowwise=(BatchMean,))
    with pytest.raises(MismatchError, match="example 0"):
        fn.map(xs, check=True)
    autobatch(lambda x: NET.inp(bm(x))).map(xs, check=True)  # traced op by op: correct


def test_profile_counts_batches_and_unbatched_calls():
    xs = [torch.randn(6) * s for s in (0.1, 0.5, 1.0, 3.0)]

    def fn(x):
        h = halting(x)[0]
        return h.nonzero(), torch.kron(h, h)  # nonzero: vmap refuses; kron: vmap batches

    f = autobatch(fn, profile=True)
    f.map(xs)
    prof = f.profile
    table = str(prof)
    assert "Linear" in table and "ran alone" in table and "nonzero" in table
    lin = [s for s in prof.signatures.values() if s.name.startswith("Linear")]
    assert sum(s.calls for s in lin) > len(xs) and all(s.mean_batch >= 1 for s in lin)
    assert any("kron" in s.name and s.alone == 0 for s in prof.signatures.values())
    assert prof.rounds >= 2 and prof.demands > 0


def test_misuse_gives_clear_errors():
    kept = []

    def escape(x):
        y = NET.inp(x)
        kept.append(y)
        return y

    autobatch(escape).map([torch.randn(6)])
    with pytest.raises(RuntimeError, match="escaped"):
        kept[0] + 1
    with pytest.raises(AutobatchError, match="immutable"):
        autobatch(lambda x: NET.inp(x).add_(1)).map([torch.randn(6)])
    with pytest.raises(AutobatchError, match="nested"):
        autobatch(lambda x: autobatch(halting).map([x])).map([torch.randn(6)])
    with pytest.raises(ValueError, match="policy"):
        autobatch(halting, policy="fifo")
    assert autobatch(halting).map([]) == []
    _clean_state()


def test_lane_groups_split_where_examples_disagree():
    """Alike examples run as one execution; a concrete value they disagree on splits them,
    and each part restarts: results and gradients still equal each example alone."""
    xs = [torch.randn(6) * s for s in (0.05, 0.05, 1.0, 1.0, 3.0, 0.2)]
    f = assert_batched_equals_alone(halting, xs, list(NET.parameters()), profile=True)
    assert f.profile.lane_groups >= 2 and f.profile.splits >= 1
    one = [torch.ones(1) * v for v in (0.5, 2.0, 0.5)]  # bool of a [1] value, per example
    assert autobatch(lambda v: 1 if NET.inp(v.expand(6))[:1] > 0 else 0).map(one) == [
        1 if NET.inp(v.expand(6))[:1] > 0 else 0 for v in one
    ]
    no_lanes = autobatch(halting, lanes=False, profile=True)
    no_lanes.map(xs)
    assert no_lanes.profile.lane_groups == 0
