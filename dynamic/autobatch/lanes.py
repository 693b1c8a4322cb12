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
"""

from __future__ import annotations

import torch
from torch import Tensor

from .values import Lazy, tensor_meta

__all__ = ["Split", "group_example", "lane_groups", "member_results", "stored_group"]


class Split:
    """Sent by a group's greenlet to the scheduler: restart as these parts (positions)."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[list[int]]) -> None:
        self.parts = parts


class _Input:
    """The producer of a group's inputs: already computed, depth 0."""

    __slots__ = ("depth", "users")

    def __init__(self) -> None:
        self.depth = 0
        self.users: list = []


_INPUT = _Input()


class _NoKey(Exception):
    pass


def _key(obj):
    if isinstance(obj, Tensor):
        return (obj.shape, obj.dtype, obj.get_device(), obj.requires_grad)
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


def stored_group(stacked: Tensor) -> Lazy:
    """A computed group value from its examples' values stacked [G, *shape]."""
    lz = Lazy(_INPUT, 0, tensor_meta(stacked[0]), count=stacked.shape[0])
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
