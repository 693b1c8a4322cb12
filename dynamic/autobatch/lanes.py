"""Lane groups: examples that are alike run as ONE execution of the per-example code.

Per-example Python costs a few microseconds per recorded call; a net whose examples all take
the same path (an MNIST sample: the same layers, the same loop) would pay it once per example
per call. Examples whose tensors have equal shapes, dtypes and devices and whose other values
(ints, floats, strings, None) are equal are therefore run together, like SIMT lanes: the
function runs once on *group values* (each holds the values of all G examples, stacked), and
every recorded call counts G times when it is batched.

When the group asks for a concrete value (``bool(h.norm() < t)``) and its examples disagree,
the group *splits*: each part restarts the function from the beginning (the per-example code
must be a function of its example, as in check mode: randomness passed in, no side effects),
so every part follows its own path; a part of one example is an ordinary example. The work a
split group had recorded is wasted, never wrong: nothing it produced reaches a result.
Examples holding anything else (a Tree, a list of words) always run one by one.

The common batch, ``list(zip(x, y))`` of a data tensor's rows, needs no per-example keys: when
every example is a tensor, or a tuple / list of tensors and equal plain values, each position
is checked as a column at once (`stacked_rows`): one ``torch.stack`` of its tensors (in C; it
refuses unequal shapes or devices) and a type and dtype test per row. (Checking that the rows
are consecutive views of one tensor, to use a strided view instead of a copy, cost more: 67 vs
26 us for 128 MNIST rows.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .values import Lazy, tensor_meta

__all__ = [
    "INPUT",
    "Split",
    "group_example",
    "lane_groups",
    "member_results",
    "stacked_rows",
    "stored_group",
]


class Split:
    """Sent by a group's greenlet to the scheduler: restart as these parts (positions)."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[list[int]]) -> None:
        self.parts = parts


class _Input:
    """The producer of values computed before they were recorded (a lane group's inputs, a
    lone group's results): depth 0, no group, nobody waits on it."""

    __slots__ = ("depth", "users", "group")

    def __init__(self) -> None:
        self.depth = 0
        self.users: list = []
        self.group = None


INPUT = _Input()


class _NoKey(Exception):
    pass


def _key(obj):
    if isinstance(obj, Tensor):
        return (obj.shape, obj.dtype, obj.device, obj.requires_grad)
    t = type(obj)
    if t in (int, float, bool, str) or obj is None:
        return (t, obj)
    if t is tuple or t is list:
        return (t, tuple([_key(o) for o in obj]))
    if t is dict:
        return (t, tuple([(k, _key(v)) for k, v in obj.items()]))
    raise _NoKey


def lane_groups(examples: list) -> list[list[int]]:
    """Example indices grouped by lane key; examples without one alone, in order."""
    groups: list = []
    keyed: dict = {}
    for i, ex in enumerate(examples):
        try:
            key = _key(ex)
        except (_NoKey, TypeError):
            groups.append([i])
            continue
        g = keyed.get(key)
        if g is None:
            g = keyed[key] = [i]
            groups.append(g)
        else:
            g.append(i)
    return groups


def _stacked(col: list) -> Tensor | None:
    """The tensors of `col` stacked [n, *shape], if they are plain tensors of one shape,
    dtype and device that all require a gradient or none does (a lane group's condition);
    else None."""
    t0 = col[0]
    dtype = t0.dtype
    for t in col:
        if type(t) is not Tensor or t.dtype is not dtype:
            return None
    try:
        out = torch.stack(col)  # (unequal shapes or devices raise)
    except RuntimeError:
        return None
    if out.requires_grad and not all(t.requires_grad for t in col):
        return None
    return out


def _row_column(col: list):
    """One position of every example as a group value (rows of one tensor) or a plain value
    equal in every example; None if it is neither."""
    c0 = col[0]
    if isinstance(c0, Tensor):
        v = _stacked(col)
        return None if v is None else stored_group(v)
    t = type(c0)
    if t in (int, float, bool, str) or c0 is None:
        for c in col:
            if type(c) is not t or c != c0:
                return None
        return c0
    return None


def stacked_rows(examples: list):
    """The group example of ALL `examples` (each a tensor, or a tuple / list of tensors and
    equal plain values) when they are alike: every position's tensors stacked; else None."""
    e0 = examples[0]
    t = type(e0)
    try:
        if t is Tensor:
            return _row_column(examples)
        if t is not tuple and t is not list:
            return None
        k = len(e0)
        if any(type(e) is not t or len(e) != k for e in examples):
            return None
        cols = [_row_column(list(c)) for c in zip(*examples, strict=True)]
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return None
    if any(c is None and col0 is not None for c, col0 in zip(cols, e0, strict=True)):
        return None
    return t(cols)


def stored_group(stacked: Tensor) -> Lazy:
    """A computed group value from its examples' values stacked [G, *shape]."""
    lz = Lazy(INPUT, 0, tensor_meta(stacked[0]), count=stacked.shape[0])
    lz.src, lz.lo, lz.rows = stacked, 0, None
    return lz


def _stack_leaves(objs: list):
    o = objs[0]
    if isinstance(o, Tensor):
        return stored_group(torch.stack(objs))
    t = type(o)
    if t is tuple or t is list:
        return t([_stack_leaves([x[i] for x in objs]) for i in range(len(o))])
    if t is dict:
        return {k: _stack_leaves([x[k] for x in objs]) for k in o}
    return o  # equal in every example (it is part of the lane key)


def group_example(examples: list, members: list[int]):
    """The example a lane group's function runs on: its tensors as group values."""
    return _stack_leaves([examples[i] for i in members])


def member_results(obj, count: int) -> list:
    """Each example's share of a task's result (a group value -> one view per example)."""
    t = type(obj)
    if t is Lazy:
        if obj.count == 1:
            return [obj.value()] * count
        return list(obj.value().unbind(0))
    if t is tuple or t is list:
        cols = [member_results(o, count) for o in obj]
        return [t([c[k] for c in cols]) for k in range(count)]
    if t is dict:
        cols = {key: member_results(v, count) for key, v in obj.items()}
        return [{key: c[k] for key, c in cols.items()} for k in range(count)]
    return [obj] * count
