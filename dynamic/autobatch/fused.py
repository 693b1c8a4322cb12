"""Dispatch of the library's own cells to the fused level executor.

When the per-example code calls a `ChildSumCell` / `NaryCell` once per tree node, feeding each
call the stacked (h, c) of its children's calls, the calls of one flush form a forest. Instead
of one batched cell call per level, each with its own autograd nodes, the whole forest goes
through ``treelstm.run(cell, schedule, x, "level")``: the library's level loop with its
hand-written backward, which computes the same function as the per-node calls (the library's
tests check it in float64). Everything else about the calls (their x, their users) is untouched.

A call is *fusable* when (checked at record time, in a few attribute reads):
  * it is a leaf: a plain mask that is all False (or has no slots), children ignored; or
  * it is internal: a plain all-True mask, and child_h / child_c are ``torch.stack(.., 1)`` of
    outputs 0 / 1 of fusable calls of the same cell, still pending, each claimed by no other
    parent (a tree, not a DAG), all N slots for an N-ary cell.
Anything else runs as an ordinary batched call. Fusable calls join their cell's *group* at
once (their external inputs counted, their position and children noted), so the flush only
builds the schedule, with numpy. If a group would wait on itself (an x computed from a
member's output), it is dissolved into ordinary calls.
"""

from __future__ import annotations

import time
import weakref

import numpy as np
import torch

from treelstm import ChildSumCell, NaryCell, Schedule  # (dynamic may import treelstm)
from treelstm import run as run_cell

from .gather import FLAT, gather_rows
from .nodes import Node
from .spec import LEAF
from .values import Lazy, alias_rows

__all__ = ["Fuser", "Group", "site_key"]

LEAF_CALL, INNER_CALL = 1, 2  # how a call site may fuse (`Fuser.kind`)

_SPEC4 = ((LEAF, LEAF, LEAF, LEAF), None)


class _GroupSite:
    __slots__ = ("sig",)


class Group:
    """All fusable calls of one cell in one flush, scheduled as one unit.

    Members are `Node`s that are never in the run's pending list: the group holds them, their
    outputs (`hs`, `cs`, in record order) and the forest's shape (heights, children's slots).
    Consumers of member outputs wait on the group (one link per consumer, `users`), not on
    each member, so a tree's calls cost no producer -> consumer links inside the tree.
    """

    __slots__ = (
        "members",
        "hs",
        "cs",
        "heights",
        "kid_slots",
        "nkids",
        "key",
        "site",
        "depth",
        "waiting",
        "group",
        "done",
        "users",
        "last",
        "lastp",
        "claimed_height",
        "inner_x",
    )

    def __init__(self, key, depth: int) -> None:
        self.members: list = []
        self.hs: list = []
        self.cs: list = []
        self.heights: list = []
        self.kid_slots: list = []
        self.nkids: list = []
        self.key = key
        self.site = _GroupSite()
        self.site.sig = ("fused", key)
        self.depth = depth
        self.waiting = 0
        self.group = None
        self.done = False
        self.users: list = []
        self.last = None  # the consumer linked last (a consumer links once per group)
        self.lastp = None  # the producer this group was linked to last
        self.claimed_height = 0  # (`_kids` to `_add_member`: the height of a new parent)
        self.inner_x = False  # an internal member's x is lazy or needs a gradient

    def clear(self, native=None) -> None:
        """Drop every reference (the run's teardown: no cycle is left for the collector, and
        a value the user's code still holds keeps its node, not the graph behind it).
        `native`: the C extension (its loops), or None."""
        if native is not None:
            native.drop_links(self.members, self.hs, self.cs)
        else:
            for m in self.members:
                m.leaves = None
            for lz in self.hs:  # values the user's code may still hold (a closure's list of
                lz.node = None  # states, freed only by the collector): they keep nothing
            for lz in self.cs:
                lz.node = None
        for lst in (self.members, self.hs, self.cs, self.users):
            lst.clear()
        self.last = self.lastp = None


class Fuser:
    def __init__(self, run) -> None:
        self.profile = run.profile  # (not the run itself: no cycle, the run dies by refcount)
        self.native = run.native  # the C extension's helpers for a native run, else None
        self.cells = (ChildSumCell, NaryCell)
        self.nary = NaryCell
        self.masks: dict = {}
        self.open: dict = {}  # group key -> Group being recorded
        self.groups: list = []  # every group of the run (cleared at teardown)

    # -- record time ---------------------------------------------------------------------
    def fusable(self, module) -> bool:
        """Is `module` one of the library's cells (its calls may join a fused group)?"""
        return type(module) in self.cells

    def _mask_kind(self, mask) -> str | None:
        e = self.masks.get(id(mask))
        if e is None or e[0] is not mask:
            if mask.dtype != torch.bool or mask.dim() != 2:
                kind = None
            elif mask.numel() == 0 or not bool(mask.any()):
                kind = "leaf"
            elif bool(mask.all()):
                kind = "full"
            else:
                kind = None
            e = self.masks[id(mask)] = (mask, kind)
        return e[1]

    def kind(self, site, args) -> int:
        """How calls at `site` with these plain arguments may fuse (the run memoizes it per
        argument identities and lazy metas): LEAF_CALL (a plain no-children mask, plain child
        states), INNER_CALL (a plain all-True mask: fusable if the children are members), or 0."""
        _, ch, cc, mask = args
        if site.fuse is None or type(mask) is Lazy:
            return 0
        kind = self._mask_kind(mask)
        if kind == "leaf" and type(ch) is not Lazy and type(cc) is not Lazy:
            return LEAF_CALL
        if kind == "full" and type(ch) is Lazy and type(cc) is Lazy:
            return INNER_CALL
        return 0

    def add(self, run, site, args, kind: int):
        """The call `args` = (x, child_h, child_c, mask) of a cell at `site` (of `kind`, see
        `kind`) as a member of the cell's group: its lazy (h, c); None if it does not fuse
        (record it as an ordinary call). Only x is linked: the children come from inside
        the group."""
        key = site.fuse
        g = self.open.get(key)
        if kind == LEAF_CALL:
            if g is None:
                g = self.open[key] = Group(key, 1)
                self.groups.append(g)
            return _add_member(run, site, g, args, 0, 1)
        if g is None:
            return None
        claimed = _kids(args[1], args[2], g, key.n)
        if claimed is None:
            return None
        return _add_member(run, site, g, args, claimed[0], claimed[1])

    # -- flush time ----------------------------------------------------------------------
    def take_groups(self) -> list:
        """The groups recorded since the last flush (they are scheduled in this one)."""
        groups = list(self.open.values())
        self.open = {}
        return groups

    def dissolve(self, units: list, ready: dict, agenda: bool, dissolved: list) -> int:
        """Turn every group not yet run back into ordinary nodes (appended to `dissolved`);
        return the unit delta. Members get the links of ordinary nodes (to x's producers and
        to their children), and the consumers linked to the group are linked to the members
        they read instead (one link per value read). The group's own links are dropped (a
        done group is skipped when its producers finish)."""
        delta = 0
        for g in units:
            if type(g) is not Group or g.done:
                continue
            g.done = True
            delta += len(g.members) - 1
            for m, h, c in zip(g.members, g.hs, g.cs, strict=True):
                m.outs = [h, c]
                m.users = []
                m.count = 1
            for m in g.members:
                m.waiting = _wait_member(m, g)
            for u in g.users:
                if u is not g:
                    u.waiting += _reads(u, g) - 1  # >= 0 more: it read a member
            for m in g.members:
                m.group = None
                dissolved.append(m)
                if m.waiting == 0:
                    ready.setdefault(m.site.sig if agenda else (m.depth, m.site.sig), []).append(m)
            g.users = []
        if delta == 0 and not ready:
            raise RuntimeError("autobatch: scheduling deadlock (please report)")
        return delta

    def run(self, g: Group) -> None:
        """One call of the level executor for the whole group; members get their rows."""
        t0 = time.perf_counter()
        cell = g.key.cell
        native = self.native
        perm, rows, schedule = _schedule(g, cell, self.nary, native)
        x = _inputs(g, perm, schedule.num_leaves, cell.input_at == "leaves", native)
        outer = torch.is_grad_enabled()
        if g.key.grad != outer:
            torch.set_grad_enabled(g.key.grad)
        try:
            h, c = run_cell(cell, schedule, x, "level")
        finally:
            if g.key.grad != outer:
                torch.set_grad_enabled(outer)
        if native is not None:
            native.set_rows(g.hs, h, rows)
            native.set_rows(g.cs, c, rows)
        else:
            for lz, r in zip(g.hs, rows, strict=True):
                lz.src = h
                lz.lo = r
            for lz, r in zip(g.cs, rows, strict=True):
                lz.src = c
                lz.lo = r
        g.done = True
        prof = self.profile
        if prof is not None:
            prof.add_fused(g, len(g.members), schedule.num_levels, time.perf_counter() - t0)


def _inputs(g: Group, order: list, num_leaves: int, at_leaves: bool, native):
    """x [N, input_size] of the group's members in schedule order. A cell with input at the
    leaves reads the leaves' rows only (`input_parts`), so when no internal member's x is
    lazy or needs a gradient (`g.inner_x`), internal rows are zeros instead of a gather."""
    members = g.members
    if not at_leaves or g.inner_x or num_leaves in (0, len(order)):
        return gather_rows(_member_x(members, order, len(order), native), native)
    xl = gather_rows(_member_x(members, order, num_leaves, native), native)
    if xl.requires_grad:  # (cat: x's gradient is the leaves' rows of autograd's)
        return torch.cat([xl, xl.new_zeros(len(order) - num_leaves, xl.shape[1])])
    x = xl.new_zeros(len(order), xl.shape[1])  # one buffer, no concatenation
    x[:num_leaves] = xl
    return x


def _member_x(members: list, order: list, n: int, native) -> list:
    """x (argument 0) of members ``order[:n]``: in C with the extension, else a list."""
    if native is not None:
        found = native.member_x(members, order, n)
        if found is not None:
            return found
    return [members[f].leaves[0] for f in order[:n]]


def _add_member(run, site, g, args, nkids: int, depth: int):
    """A member node for the call `args` in group `g` whose `nkids` children (claimed by
    `_kids`; their slots already listed) put it at least at `depth`; its (h, c). (The hot
    path of a tree: only what the group and `_kids` read is set; `dissolve` sets the rest of
    an ordinary node.)"""
    x = args[0]
    node = Node()
    node.site = site
    node.leaves = args
    node.example = run.current
    if type(x) is Lazy:
        d = _wait_for(g, x) + 1
        if d > depth:
            depth = d
        if nkids:
            g.inner_x = True
    elif nkids and x.requires_grad:
        g.inner_x = True
    node.depth = depth
    members = g.members
    if depth < g.depth or not members:
        g.depth = depth
    node.height = height = g.claimed_height if nkids else 0
    node.fparent = False
    node.group = g
    node.slot = len(members)
    members.append(node)
    g.heights.append(height)
    g.nkids.append(nkids)
    mh, mc = site.outs
    h = Lazy(node, 0, mh)
    c = Lazy(node, 1, mc)
    g.hs.append(h)
    g.cs.append(c)
    return h, c


def _wait_for(g, x: Lazy) -> int:
    """Make group `g` wait for the producers of x that have not run (one link per producer
    in a row: a tree's leaves read one embedding call); return x's depth."""
    depth = 0
    parts = x.parts
    if parts is None:
        bases = (x,)
    elif parts[0] is alias_rows and parts[2][0].parts is None:
        bases = parts[2]  # x[j : j + 1] of a stored value (a leaf's word vector)
    else:
        bases = _bases(x)
    for b in bases:
        p = b.node
        if p.depth > depth:
            depth = p.depth
        if b.src is None:
            if p.group is not None:
                p = p.group  # a member's output: wait on its group (perhaps g itself)
            if p is not g.lastp:
                g.lastp = p
                p.users.append(g)
                g.waiting += 1
    return depth


def _wait_member(m, g) -> int:
    """Link member `m` of the dissolving group `g` to the producers of its pending inputs
    (x and the children, as an ordinary node); return how many links it has."""
    n = 0
    for x in m.leaves:
        if type(x) is not Lazy:
            continue
        for b in _bases(x):
            if b.src is None:
                p = b.node
                q = p.group
                (p if q is None or q is g else q).users.append(m)
                n += 1
    return n


def _reads(node, g) -> int:
    """Link `node` to the members of `g` whose outputs it reads (still pending); how many."""
    n = 0
    for x in node.leaves:
        if type(x) is not Lazy:
            continue
        for b in _bases(x):
            if b.src is None and b.node.group is g:
                b.node.users.append(node)
                n += 1
    return n


def site_key(site):
    """The group key of a call site that may be fusable (a library cell called on one node
    with four tensor arguments), else None."""
    if site.mode != FLAT or site.rows != 1 or type(site.fn) not in (ChildSumCell, NaryCell):
        return None
    if site.spec != _SPEC4:
        return None
    key = (site.fn, site.metas[0].tail, site.sig[4])
    k = _keys.get(key)
    if k is None:
        k = _keys[key] = FuseKey(*key)
    return k


class FuseKey:
    """(cell, x's per-row meta, grad mode) of a group, interned: hashed by identity. ``n``:
    the children a call must have (N-ary), or None (Child-Sum: any number)."""

    __slots__ = ("cell", "tail", "grad", "n", "__weakref__")

    def __init__(self, cell, tail, grad) -> None:
        self.cell, self.tail, self.grad = cell, tail, grad
        self.n = cell.n_ary if type(cell) is NaryCell else None


_keys: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _kids(ch, cc, g, n):
    """Claim the pending members of `g` behind child_h / child_c, if they are stacks (dim 1)
    of their outputs 0 and 1, each member once and claimed by no other parent, `n` of them
    if n is not None (an N-ary cell): they are marked claimed, their slots appended to
    ``g.kid_slots``, the parent's height left in ``g.claimed_height``. Returns (how many, the
    parent's least depth), or None (nothing claimed)."""
    if type(ch) is not Lazy or type(cc) is not Lazy:
        return None
    hp = ch.parts
    cp = cc.parts
    if hp is None or cp is None or hp[0] is not _STACK or cp[0] is not _STACK:
        return None
    hs = hp[2]
    cs = cp[2]
    if hp[1] != 1 or cp[1] != 1 or len(hs) != len(cs) or (n is not None and len(hs) != n):
        return None
    kids = []
    slots = []
    height = depth = 0
    for h, c in zip(hs, cs, strict=False):  # (equal lengths; strict=True costs ~0.1 us)
        # k: a member of the open group g (its outputs are pending, not composites)
        if type(h) is not Lazy or type(c) is not Lazy or (k := h.node) is None or k.group is not g:
            break
        if c.node is not k or h.out != 0 or c.out != 1 or k.fparent:  # (claimed already)
            break
        k.fparent = True
        kids.append(k)
        slots.append(k.slot)
        if k.height >= height:
            height = k.height + 1
        if k.depth > depth:
            depth = k.depth
    else:
        g.kid_slots.extend(slots)
        g.claimed_height = height
        return len(kids), depth + 1
    for k in kids:
        k.fparent = False
    return None


_STACK = torch.stack


def _bases(x: Lazy):
    if x.parts is None:
        return (x,)
    return [b for p in x.parts[2] if type(p) is Lazy for b in _bases(p)]


def _schedule(g: Group, cell, nary_type, native=None):
    """Level-major numbering (level = height) of the group's forest, as a `Schedule`.

    Returns (perm, rows, schedule), two lists and the schedule: perm[s] is the member index
    (record order) of schedule row s, rows[i] the schedule row of member i. With the C
    extension (`native`) its `forest` builds the arrays in one pass each (the same numbers:
    tests/test_autobatch_native.py); numpy otherwise, or if it refuses the forest.
    """
    dev = cell.U.weight.device
    if native is not None:
        K = cell.n_ary if type(cell) is nary_type else -1
        found = native.forest(g.heights, g.nkids, g.kid_slots, K)
        if found is not None:
            return _native_schedule(found, dev)
    return _numpy_schedule(g, cell, nary_type, dev)


def _native_schedule(found, dev):
    """`_schedule`'s result from the C extension's `forest` arrays (int64 bytearrays)."""
    children, parent, ptr, roots, tree, post, bounds, sizes, perm, rows, K = found
    N = len(perm)

    def t(buf):
        if not buf:
            return torch.empty(0, dtype=torch.int64).to(dev)
        return torch.frombuffer(buf, dtype=torch.int64).to(dev)

    schedule = Schedule(
        tokens=torch.full((N,), -1, dtype=torch.int64, device=dev),
        labels=None,
        children=t(children).view(N, K),
        parent=t(parent),
        level_ptr=t(ptr),
        roots=t(roots),
        node_tree=t(tree),
        post_index=t(post),
        level_bounds=bounds,
        tree_sizes=sizes,
    )
    return perm, rows, schedule


def _numpy_schedule(g: Group, cell, nary_type, dev):
    """`_schedule` in numpy."""
    N = len(g.members)
    height = np.asarray(g.heights, dtype=np.int64)
    perm = np.argsort(height, kind="stable")
    slot = np.empty(N, dtype=np.int64)
    slot[perm] = np.arange(N)
    nk = np.asarray(g.nkids, dtype=np.int64)
    kid = np.asarray(g.kid_slots, dtype=np.int64)
    K = cell.n_ary if type(cell) is nary_type else int(nk.max()) if N else 0
    owner = np.repeat(np.arange(N), nk)  # member index of each child edge
    col = np.arange(len(kid)) - np.repeat(np.cumsum(nk) - nk, nk)
    children = np.full((N, K), -1, dtype=np.int64)
    children[slot[owner], col] = slot[kid]
    parent = np.full(N, -1, dtype=np.int64)
    parent[slot[kid]] = slot[owner]
    ptr = np.zeros(int(height.max()) + 2, dtype=np.int64)
    np.cumsum(np.bincount(height), out=ptr[1:])
    roots = np.flatnonzero(parent < 0)
    # Each node's root by pointer doubling (log2(height) steps of one gather each, instead
    # of a loop over the levels: ~5 numpy calls a level, ~30 levels a flush of SST trees)
    up = np.where(parent < 0, np.arange(N), parent)
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    tree_of_root = np.empty(N, dtype=np.int64)
    tree_of_root[roots] = np.arange(len(roots))
    tree = tree_of_root[up]
    # post_index: each node's rank within its tree in record order (a topological order).
    tree_of_member = tree[slot]
    by_tree = np.lexsort((np.arange(N), tree_of_member))
    sizes = np.bincount(tree, minlength=len(roots))
    start = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=start[1:])
    rank = np.empty(N, dtype=np.int64)
    rank[by_tree] = np.arange(N) - start[tree_of_member[by_tree]]

    def t(a):
        return torch.from_numpy(a).to(dev)

    schedule = Schedule(
        tokens=torch.full((N,), -1, dtype=torch.int64, device=dev),
        labels=None,
        children=t(children),
        parent=t(parent),
        level_ptr=t(ptr),
        roots=t(roots),
        node_tree=t(tree),
        post_index=t(rank[perm]),
        level_bounds=tuple(ptr.tolist()),
        tree_sizes=tuple(sizes.tolist()),
    )
    return perm.tolist(), slot.tolist(), schedule
