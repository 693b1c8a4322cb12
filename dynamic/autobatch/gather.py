"""Gathering one argument of many calls into one batched tensor (the only per-batch copy).

Two layouts for a batched argument:

  FLAT   the examples' leading dimensions concatenated: [sum of rows, *tail]. Examples may
         have different row counts (ragged), so e.g. a Linear over sentences of different
         lengths is still one call. Only for values with at least one dimension.
  STACK  a new leading dimension: [B, *shape]; every example has the same shape.

A value is a computed `Lazy` (rows of some batched result), a composite (stack/cat of parts,
gathered part by part), or a plain tensor the example made itself. The common case, values
that are consecutive rows of ONE earlier result, costs a `narrow` (no copy); otherwise one
`index_select` per source result (plus one permutation when sources interleave).
"""

from __future__ import annotations

from array import array

import torch
from torch import Tensor

from . import state
from .values import ALIASES, Lazy, alias_row, alias_rows, alias_squeeze0, alias_unsqueeze0

__all__ = ["FLAT", "STACK", "gather", "gather_rows", "index_tensor", "resolve"]

FLAT = "flat"
STACK = "stack"


def index_tensor(idx: list, device) -> Tensor:
    """A LongTensor from a list of ints (via a buffer: ~6x faster than torch.tensor(list))."""
    t = torch.frombuffer(array("q", idx), dtype=torch.int64) if idx else torch.zeros(0).long()
    return t if device.type == "cpu" else t.to(device, non_blocking=True)


def _is_alias(v) -> bool:
    return type(v) is Lazy and v.parts is not None and v.parts[0] in ALIASES


def gather(vals: list, layout: str, counts: list | None = None) -> Tensor:
    """One batched tensor from the per-example values `vals` (see the module docstring).

    ``counts[i]``: how many examples value i stands for (a lane group's value holds all of
    its examples; a plain tensor made inside a group is the same for each of them).
    """
    if counts is not None:
        if len(vals) == 1:
            return _piece(vals[0], counts[0], layout)  # one lane group: a view, no copy
        return torch.cat([_piece(v, c, layout) for v, c in zip(vals, counts, strict=True)])
    v0 = vals[0]
    if type(v0) is Lazy:
        out = _gather_from_lazy(vals, layout)
        if out is not None:
            return out
    elif all(v is v0 for v in vals):
        return _repeat(v0, len(vals), layout)
    elif not any(type(v) is Lazy for v in vals):
        return torch.cat(vals) if layout == FLAT else torch.stack(vals)
    # A mix: plain tensors become sources of their own (a constant used by many examples is
    # one source), composites are made concrete; then one index_select per source.
    return _gather_located([_locate(v) for v in vals], layout)


def _as_stored(v) -> Lazy:
    if type(v) is Lazy:
        if v.parts is None:
            return v
        if v.parts[0] in ALIASES:
            return resolve(v)
        t = v.value()
    else:
        t = v
    if t.dim() == 0:
        return _stored(t.reshape(1), 0, None, None)
    return _stored(t, 0, t.shape[0], None)


def _stored(src: Tensor, lo: int, rows, meta) -> Lazy:
    """A computed value that is rows of `src` (no node; used only while gathering)."""
    v = Lazy.__new__(Lazy)
    v.node, v.out, v.parts, v.meta = None, 0, None, meta
    v.src, v.lo, v.rows = src, lo, rows
    return v


def resolve(a: Lazy) -> Lazy:
    """A computed alias as rows of its base's storage; a view of its value if they are not."""
    op, arg, (b,) = a.parts
    if _is_alias(b):
        b = resolve(b)
    if b.parts is None:
        rows = b.rows
        if op is alias_row and rows is not None:
            return _stored(b.src, b.lo + arg, None, a.meta)
        if op is alias_rows and rows is not None:
            return _stored(b.src, b.lo + arg[0], arg[1] - arg[0], a.meta)
        if op is alias_squeeze0 and rows == 1:
            return _stored(b.src, b.lo, None, a.meta)
        if op is alias_unsqueeze0 and rows is None:
            return _stored(b.src, b.lo, 1, a.meta)
    v = op([b.value()], arg)
    if v.dim() == 0:
        return _stored(v.reshape(1), 0, None, a.meta)
    return _stored(v, 0, v.shape[0], a.meta)


def _piece(v, count: int, layout: str) -> Tensor:
    """The `count` examples of one value, in `layout` (a value of a lane group, or one)."""
    if type(v) is not Lazy:
        return _repeat(v, count, layout)
    if v.parts is not None and v.parts[0] not in ALIASES:
        op, dim, parts = v.parts
        cols = [_piece(p, count, layout) for p in parts]
        return op(cols, dim + 1 if layout == STACK else dim)
    if v.parts is not None:
        v = resolve(v)
    src = v.src
    if v.rows is None:  # `count` consecutive rows, one per example
        part = src if v.lo == 0 and src.shape[0] == count else src.narrow(0, v.lo, count)
        return part if layout == STACK else part.reshape(-1, *part.shape[2:])
    n = count * v.rows
    # The whole result (a lone group's): no view, no autograd node (its backward would copy)
    part = src if v.lo == 0 and src.shape[0] == n else src.narrow(0, v.lo, n)
    return part if layout == FLAT else part.reshape(count, v.rows, *part.shape[1:])


def _repeat(t: Tensor, n: int, layout: str) -> Tensor:
    """The same plain tensor for every example: a broadcast view when possible."""
    if layout == STACK:
        return t.expand(n, *t.shape)
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    return t.repeat(n, *([1] * (t.dim() - 1)))


def _gather_composite(vals: list, layout: str) -> Tensor | None:
    """Composites of one structure: gather each part position, then one stack/cat."""
    op, dim, parts0 = vals[0].parts
    k = len(parts0)
    for v in vals:
        p = v.parts
        if p is None or p[0] is not op or p[1] != dim or len(p[2]) != k:
            return None
    cols = [gather([v.parts[2][j] for v in vals], layout) for j in range(k)]
    if layout == STACK and dim >= 0:
        dim += 1
    return op(cols, dim)


def _contiguous(vals: list, src, by_rows: bool) -> bool:
    """Are all values consecutive rows of `src`, in order?"""
    nxt = vals[0].lo
    if by_rows:
        for v in vals:
            if v.src is not src or v.lo != nxt or v.rows is None:
                return False
            nxt += v.rows
    else:
        for v in vals:
            if v.src is not src or v.lo != nxt or v.rows is not None:
                return False
            nxt += 1
    return True


def gather_rows(vals: list, native=None) -> Tensor:
    """[len(vals), *tail] from values of one row each ([1, *tail]: a tree node's input):
    rows of computed results, ``x[j : j + 1]`` of them, or plain tensors. One index_select
    over the sources concatenated (~0.3 us of Python a value, ~0.05 us with the C
    extension's `row_index` (`native`); the general `gather` takes ~2 us); anything else
    goes to `gather`."""
    found = native.row_index(vals) if native is not None else None
    if found is None:
        found = _row_index(vals)
        if found is None:
            return gather(vals, FLAT)
    sources, idx = found
    if any(s.shape[1:] != sources[0].shape[1:] for s in sources):
        return gather(vals, FLAT)
    cat = sources[0] if len(sources) == 1 else torch.cat(sources)
    i0 = idx[0]
    if idx[-1] - i0 == len(idx) - 1 and idx == list(range(i0, i0 + len(idx))):
        return cat if i0 == 0 and len(idx) == cat.shape[0] else cat.narrow(0, i0, len(idx))
    return cat.index_select(0, index_tensor(idx, cat.device))


def _row_index(vals: list):
    """(sources, each value's row in the sources concatenated) for `gather_rows`, or None."""
    offsets: dict = {}  # id(source) -> its first row in the concatenation
    sources: list = []
    idx: list = []
    end = 0
    for v in vals:
        if type(v) is Lazy:
            p = v.parts
            if p is None and v.rows == 1:
                src, r = v.src, v.lo
            elif p is not None and p[0] is alias_rows:
                b = p[2][0]
                if type(b) is not Lazy or b.parts is not None or b.rows is None:
                    return None
                src, r = b.src, b.lo + p[1][0]
            else:
                return None
        elif v.dim() >= 1 and v.shape[0] == 1:
            src, r = v, 0
        else:
            return None
        o = offsets.get(id(src))
        if o is None:
            o = offsets[id(src)] = end
            sources.append(src)
            end += src.shape[0]
        idx.append(o + r)
    return sources, idx


def _gather_from_lazy(vals: list, layout: str) -> Tensor | None:
    """`gather` when the first value is lazy: stored values, aliases, composites (None: the
    general mix)."""
    v0 = vals[0]
    if v0.parts is None:
        out = _gather_stored(vals, layout)
        if out is not None:
            return out
    if any(_is_alias(v) for v in vals):
        return _gather_located([_locate(v) for v in vals], layout)
    if v0.parts is not None:
        return _gather_composite(vals, layout)
    return None


def _gather_stored(vals: list, layout: str) -> Tensor | None:
    """`_gather_lazy` if every value is a stored Lazy, else None. (A native run's C
    extension scans the values for the common case without Python: `source_rows`.)"""
    run = state.tls.run
    if run is not None and run.native is not None:
        found = run.native.source_rows(vals)
        if found is not None:
            return _from_rows(*found, layout, len(vals))
    if all(type(v) is Lazy and v.parts is None for v in vals):
        return _gather_lazy(vals, layout)
    return None


def _gather_lazy(vals: list, layout: str) -> Tensor:
    v0 = vals[0]
    src = v0.src
    rows = v0.rows
    if rows is None or rows == 1:  # one row each (a tree's node states): one index list
        idx = []
        for v in vals:
            if v.src is not src or v.rows != rows:
                return _gather_lazy_general(vals, layout)
            idx.append(v.lo)
        return _from_rows(src, rows, idx, layout, len(vals))
    return _gather_lazy_general(vals, layout)


def _from_rows(src: Tensor, rows, idx: list, layout: str, count: int) -> Tensor:
    """Rows `idx` of `src` (one row per value: rows 1, or None for rows-of-values)."""
    i0 = idx[0]
    if idx[-1] - i0 == len(idx) - 1 and idx == list(range(i0, i0 + len(idx))):
        part = src if (i0 == 0 and len(idx) == src.shape[0]) else src.narrow(0, i0, len(idx))
    else:
        part = src.index_select(0, index_tensor(idx, src.device))
    return _to_layout(part, rows is not None, layout, count)


def _gather_lazy_general(vals: list, layout: str) -> Tensor:
    v0 = vals[0]
    src = v0.src
    by_rows = v0.rows is not None
    if _contiguous(vals, src, by_rows):
        if by_rows:
            n = sum(v.rows for v in vals)
            part = src if (v0.lo == 0 and n == src.shape[0]) else src.narrow(0, v0.lo, n)
        else:
            n = len(vals)
            part = src if (v0.lo == 0 and n == src.shape[0]) else src.narrow(0, v0.lo, n)
        return _to_layout(part, by_rows, layout, len(vals))
    return _gather_sources(vals, layout)


def _to_layout(part: Tensor, by_rows: bool, layout: str, count: int) -> Tensor:
    """A part stored as rows ([sum rows, *tail]) or as rows-of-values ([k, *shape])."""
    if by_rows and layout == STACK:
        return part.reshape(count, -1, *part.shape[1:])
    if not by_rows and layout == FLAT:
        return part.reshape(-1, *part.shape[2:])
    return part


def _gather_sources(vals: list, layout: str) -> Tensor:
    """Values from several sources (or out of order): one index_select per source."""
    return _gather_located([(v.src, v.lo, v.rows) for v in vals], layout)


def _locate(v):
    """(src, lo, rows) of any value: rows of a result, an alias of them, or a plain tensor."""
    if type(v) is Lazy:
        parts = v.parts
        if parts is None:
            return v.src, v.lo, v.rows
        op = parts[0]
        b = parts[2][0]
        if b.__class__ is Lazy and b.parts is None and b.rows is not None:
            if op is alias_rows:  # the common x[j : j + 1] of a computed value
                return b.src, b.lo + parts[1][0], parts[1][1] - parts[1][0]
            if op is alias_row:
                return b.src, b.lo + parts[1], None
        s = _as_stored(v)
        return s.src, s.lo, s.rows
    if v.dim() == 0:
        return v.reshape(1), 0, None
    return v, 0, v.shape[0]


def _gather_located(locs: list, layout: str) -> Tensor:
    groups: dict = {}  # (id(src), row form) -> [src, by_rows, storage indices, positions]
    seq = []
    for pos, (src, lo, rows) in enumerate(locs):
        key = (id(src), rows is None)
        g = groups.get(key)
        if g is None:
            g = groups[key] = [src, rows is not None, [], []]
            seq.append(key)
        if rows is None:
            g[2].append(lo)
        elif rows == 1:
            g[2].append(lo)
        else:
            g[2].extend(range(lo, lo + rows))
        g[3].append(pos)
    device = locs[0][0].device
    parts = []
    for key in seq:
        src, by_rows, idx, positions = groups[key]
        i0 = idx[0]
        if idx[-1] - i0 == len(idx) - 1 and idx == list(range(i0, i0 + len(idx))):
            part = src.narrow(0, i0, len(idx))  # consecutive rows: a view
        else:
            part = src.index_select(0, index_tensor(idx, device))
        parts.append(_to_layout(part, by_rows, layout, len(positions)))
    if len(parts) == 1:
        return parts[0]
    out = torch.cat(parts)
    order = [p for key in seq for p in groups[key][3]]
    if order == sorted(order):
        return out
    perm = _unit_permutation(locs, seq, groups, layout)
    return out.index_select(0, index_tensor(perm, device))


def _unit_permutation(locs: list, seq: list, groups: dict, layout: str) -> list:
    """Row positions in the concatenated parts, listed in the values' original order."""
    if layout == STACK:
        where = {}
        at = 0
        for key in seq:
            for p in groups[key][3]:
                where[p] = at
                at += 1
        return [where[p] for p in range(len(locs))]
    rows = [r if r is not None else src.shape[1] for src, _, r in locs]
    start = {}
    at = 0
    for key in seq:
        for p in groups[key][3]:
            start[p] = at
            at += rows[p]
    perm = []
    for p in range(len(locs)):
        perm.extend(range(start[p], start[p] + rows[p]))
    return perm
