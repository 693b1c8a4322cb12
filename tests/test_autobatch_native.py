"""The C recording path (dynamic/autobatch/_native.c) and its pure-Python twin.

Every test here (and in the other test_autobatch*.py modules) runs twice through the
`recording` fixture: with the C extension and with ``TREELSTM_AUTOBATCH_NATIVE=0``. These
tests aim at the C code's branches: row aliases it makes itself or hands to Python (negative
and stepped slices, int rows), children it claims or refuses (a child read by two parents, a
child stacked twice, a lazy x at an internal node, N-ary children in either order), each
compared with the examples run alone in float64, values and gradients; and the build: used
when it builds, one log line and the Python path when it does not.
"""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dynamic.autobatch import engine, fused, native
from tests.test_autobatch import assert_batched_equals_alone, recording  # noqa: F401
from treelstm import ChildSumCell, NaryCell

pytestmark = pytest.mark.usefixtures("float64", "one_thread", "recording")
FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
D, H = 4, 3


class Odd(nn.Module):
    """Per-example code that takes every branch of the native record path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(D, D)
        self.cs = ChildSumCell(D, H)
        self.na = NaryCell(D, H, n_ary=2)
        self.zero = torch.zeros(1, D)
        # one tensor per mask (as a model would keep them): calls hit the run's memo
        self.pads = {k: torch.zeros(1, k, H) for k in (0, 2)}
        self.no = {k: torch.zeros(1, k, dtype=torch.bool) for k in (0, 2)}
        self.full = {k: torch.ones(1, k, dtype=torch.bool) for k in range(1, 9)}

    def leaf(self, cell, xj):
        k = 0 if cell is self.cs else 2
        return cell(xj, self.pads[k], self.pads[k], self.no[k])

    def row(self, y, j: int, n: int):
        """Row j of y, [1, D], written one of five ways (C-made or Python-made aliases)."""
        way = j % 5
        if way == 0:
            return y[j : j + 1]
        if way == 1:
            return y[j].unsqueeze(0)  # an int row
        if way == 2:
            return y[j - n : j - n + 1] if j + 1 < n else y[j - n :]  # negative slice
        if way == 3:
            return y[j : j + 1 : 1]  # an explicit step
        return y[j : j + 1][0:1]  # an alias of an alias

    def parent(self, cell, kids, x=None):
        ch = torch.stack([h for h, _ in kids], 1)
        cc = torch.stack([c for _, c in kids], 1)
        return cell(self.zero if x is None else x, ch, cc, self.full[len(kids)])

    def forward(self, example):
        x, variant = example
        n = x.shape[0]
        y = self.lin(x)
        cs = [self.leaf(self.cs, self.row(y, j, n)) for j in range(n)]
        na = [self.leaf(self.na, self.row(y, j, n)) for j in range(n)]
        if variant == 0:  # a child read by two parents (a DAG: the second is not fused)
            top = [self.parent(self.cs, cs[:2]), self.parent(self.cs, cs[1:])]
        elif variant == 1:  # a child stacked twice
            top = [self.parent(self.cs, [cs[0], cs[0], *cs[1:]])]
        elif variant == 2:  # a lazy x at an internal node
            top = [self.parent(self.cs, cs, x=y[0:1])]
        else:  # a plain chain
            top = [self.parent(self.cs, cs)]
        pairs = [self.parent(self.na, [na[i], na[i + 1]]) for i in range(n - 1)]
        pairs.append(self.parent(self.na, [na[-1], na[0]]))  # (claimed already: not fused)
        root = self.parent(self.na, [pairs[0], pairs[-1]])
        return sum(h.sum() + c.sum() for h, c in [*top, *pairs, root])


@FAST
@given(st.lists(st.integers(2, 6), min_size=1, max_size=6), st.integers(0, 3))
def test_every_native_branch_equals_alone(sizes, first):
    model = Odd()
    gen = torch.Generator().manual_seed(len(sizes))
    examples = [(torch.randn(n, D, generator=gen), (first + i) % 4) for i, n in enumerate(sizes)]
    assert_batched_equals_alone(model, examples, list(model.parameters()))


def test_the_native_run_is_used_when_it_builds(recording):  # noqa: F811
    cls = engine.run_class()
    if recording == "python":
        assert cls is engine.Run
    elif shutil.which("cc") or shutil.which("gcc"):
        assert cls is not engine.Run and issubclass(cls, engine.Run)
        assert cls.compose is not engine.Run.compose


def test_a_failing_build_falls_back_to_python_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(engine, "_native_class", {})
    monkeypatch.setenv("TREELSTM_AUTOBATCH_NATIVE", "1")
    monkeypatch.setenv("TREELSTM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false") or "false")  # a "compiler" that fails
    with caplog.at_level(logging.WARNING, logger="treelstm"):
        assert engine.run_class() is engine.Run
        assert engine.run_class() is engine.Run  # (decided once)
    lines = [r for r in caplog.records if "native recording unavailable" in r.getMessage()]
    assert len(lines) == 1
    model = Odd()
    examples = [(torch.randn(3, D), v) for v in range(4)]
    assert_batched_equals_alone(model, examples, list(model.parameters()))


@FAST
@given(st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_more_memo_keys_than_the_c_cache_and_both_grad_modes_equal_alone(sizes):
    """Ten masks (ten memo keys: more than the C struct keeps) and leaves called under
    no_grad between the others: every call finds its own memo entry."""
    model = Odd()
    masks = [torch.zeros(1, 0, dtype=torch.bool) for _ in range(10)]
    pad = model.pads[0]

    def fn(example):
        x, v = example
        y = model.lin(x)
        total = 0
        for j in range(x.shape[0]):
            m = masks[(j + v) % 10]
            if (j + v) % 3 == 0:
                with torch.no_grad():
                    h, c = model.cs(y[j : j + 1], pad, pad, m)
            else:
                h, c = model.cs(y[j : j + 1], pad, pad, m)
            total = total + h.sum() + c.sum()
        return total

    gen = torch.Generator().manual_seed(len(sizes))
    examples = [(torch.randn(n, D, generator=gen), i) for i, n in enumerate(sizes)]
    f = assert_batched_equals_alone(fn, examples, list(model.parameters()))
    again = f.map(examples)  # a second map: through the cell classes' __call__ hook
    for b, e in zip(again, examples, strict=True):
        torch.testing.assert_close(b, fn(e), rtol=1e-9, atol=1e-9)


def _forest(parents: list) -> SimpleNamespace:
    """A fused group's forest from each member's parent choice in record order: parents[i]
    picks one of the members recorded after i (or none); its kids in record order."""
    n = len(parents)
    parent = [i + 1 + p % (n - i - 1) if p is not None and i < n - 1 else None
              for i, p in enumerate(parents)]  # fmt: skip
    kids: list = [[] for _ in range(n)]
    for i, p in enumerate(parent):
        if p is not None:
            kids[p].append(i)
    heights = [0] * n
    for i in range(n):
        heights[i] = 1 + max(heights[k] for k in kids[i]) if kids[i] else 0
    return SimpleNamespace(
        members=list(range(n)),
        heights=heights,
        nkids=[len(k) for k in kids],
        kid_slots=[k for ks in kids for k in ks],
    )


@FAST
@given(st.lists(st.none() | st.integers(0, 50), min_size=1, max_size=40), st.integers(-1, 3))
def test_the_c_forest_schedule_equals_numpy(parents, widen):
    """`forest` (C) gives the fused call the same schedule and row maps as the numpy code,
    for forests recorded in any order (trees interleaved), at the widest width or wider."""
    mod = native.module()
    if mod is None:
        pytest.skip("the C extension is turned off (this pass) or does not build here")
    g = _forest(parents)
    cell = ChildSumCell(D, H)
    if widen >= 0:  # an N-ary-like fixed width (extra columns stay -1)
        cell = NaryCell(D, H, n_ary=max(g.nkids) + widen) if max(g.nkids) + widen > 0 else cell
    a = fused._schedule(g, cell, NaryCell, mod)
    b = fused._schedule(g, cell, NaryCell, None)
    assert a[0] == b[0] and a[1] == b[1]
    for name in ("tokens", "children", "parent", "level_ptr", "roots", "node_tree", "post_index"):
        x, y = getattr(a[2], name), getattr(b[2], name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a[2].level_bounds == b[2].level_bounds and a[2].tree_sizes == b[2].tree_sizes


def test_the_c_forest_refuses_what_is_not_a_recorded_forest():
    """Anything the record path cannot produce gives None (the numpy code decides then)."""
    mod = native.module()
    if mod is None:
        pytest.skip("the C extension is turned off (this pass) or does not build here")
    assert mod.forest([0, 0, 1], [0, 0, 2], [0, 1], -1) is not None  # (a valid one)
    assert mod.forest([0, 1, 0], [0, 1, 0], [2], -1) is None  # a kid recorded after its parent
    assert mod.forest([0, 1, 2], [0, 1, 1], [0, 0], -1) is None  # a kid claimed twice
    assert mod.forest([0, 0, 1], [0, 0, 2], [0], -1) is None  # kid slots missing
    assert mod.forest([0, 0, 1], [0, 0, 2], [0, 1], 1) is None  # wider than K
    assert mod.forest([0, 0.5, 1], [0, 0, 2], [0, 1], -1) is None  # not an int
    assert mod.forest([], [], [], -1) is None
