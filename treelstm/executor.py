"""Run a tree cell over a schedule, and the per-node evaluators every fast path is tested
against (Tai, Socher & Manning 2015 define the Tree-LSTM recurrence; this module only orders it).

One public entry, ``run(cell, schedule, x, strategy, direction)``, returns h and c of every node
in the schedule's (level-major) order. The cell is any module of the cell protocol
(`treelstm.cells`: ``cell(x, child_h, child_c, child_mask) -> h or (h, c)``). All strategies
compute the same function, with the same child slots K (`child_slots`):

  "recursive"       one cell call per node (plain autograd): the baseline per-node Python code.
  "tree"            each tree alone, level by level.
  "level"           all trees of the batch together, one step per level (the default): the
                    cell's fused kernel where `fused_kernel` allows it, else "level_autograd".
  "level_autograd"  "level" written with plain autograd over one state buffer: the generic
                    path, which any cell takes (the benchmark's "straightforward" line).

direction="up" (the default) goes from the leaves to the roots, one step per height; a node's
child slots hold its children. direction="down" goes from the roots to the leaves, one step per
depth (`Schedule.down_layout`); a node's one child slot holds its parent (masked out at the
roots), so any cell written for the bottom-up pass runs top-down unchanged.

The fused kernels (`treelstm.kernels`: the whole loop as one autograd node with a hand-written
backward, W x on input rows only; that module says why) compute a cell's function without
calling it. So a kernel runs only for a cell whose class declares it and changes nothing it
stands in for (`fused_kernel`); `explain(cell)` says which path a cell gets, and why.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.nn.modules import module as _module

from .cells import check_cell
from .schedule import Schedule
from .tree import Tree

__all__ = [
    "DIRECTIONS",
    "STRATEGIES",
    "child_slots",
    "evaluate_bidirectional",
    "evaluate_tree",
    "explain",
    "fused_kernel",
    "run",
]

STRATEGIES = ("recursive", "tree", "level", "level_autograd")
DIRECTIONS = ("up", "down")
_KERNEL_ATTR = {"up": "level_kernel", "down": "down_kernel"}
_log = logging.getLogger("treelstm")


# --------------------------------------------------------------------------------------------
# The cell's answer, checked: (h, c) or h
# --------------------------------------------------------------------------------------------
class _Step:
    """Calls a cell and checks what it returns against the protocol, call after call."""

    def __init__(self, cell) -> None:
        self.cell = cell
        self.h_only: bool | None = None  # known after the first call

    def __call__(self, x: Tensor, ch: Tensor, cc: Tensor, mask: Tensor):
        out = self.cell(x, ch, cc, mask)
        h, c = _unpack(self.cell, out, x.shape[0])
        if self.h_only is None:
            self.h_only = c is None
        elif self.h_only != (c is None):
            raise TypeError(
                f"{type(self.cell).__name__} returned {'h alone' if c is None else '(h, c)'} "
                f"after returning {'h alone' if self.h_only else '(h, c)'} before: a cell "
                "returns the same every call"
            )
        return h, c


def _unpack(cell, out, M: int) -> tuple[Tensor, Tensor | None]:
    name, H = type(cell).__name__, cell.hidden_size
    if isinstance(out, Tensor):
        h, c = out, None
    elif isinstance(out, tuple | list) and len(out) == 2:
        h, c = out
    else:
        what = f"{len(out)} values" if isinstance(out, tuple | list) else type(out).__name__
        raise TypeError(
            f"{name} returned {what}; a cell returns h or (h, c), each [M, hidden_size] "
            "(the cell protocol: docs/cells.md)"
        )
    for label, t in (("h", h), ("c", c)):
        if t is None and label == "c":
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != (M, H):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} returned {label} of shape {got} for {M} nodes; a cell returns "
                f"[M, hidden_size] = [{M}, {H}] (hidden_size is {name}.hidden_size)"
            )
    return h, c


# --------------------------------------------------------------------------------------------
# Child slots: the same K for every strategy
# --------------------------------------------------------------------------------------------
def child_slots(cell, schedule: Schedule | None, direction: str = "up", widest: int = 0) -> int:
    """K, the child slots every call of `cell` gets (every strategy, every node of a batch).

    Top-down: 1 (the parent). Bottom-up: ``cell.n_ary`` if the cell declares it (a node with
    more children is refused), else the schedule's widest node (``schedule.max_children``;
    ``widest`` when there is no schedule). Raises ValueError naming the fix.
    """
    n = getattr(cell, "n_ary", None)
    name = type(cell).__name__
    if direction == "down":
        if n not in (None, 1):
            raise ValueError(
                f"{name}(n_ary={n}) takes {n} ordered children, but a top-down step has one "
                "child slot (the node's parent): use a cell with n_ary=1 or without n_ary"
            )
        return 1
    w = schedule.max_children if schedule is not None else widest
    if n is None:
        return w
    if w > n:
        raise ValueError(
            f"the schedule has nodes with up to {w} children but {name}(n_ary={n}) takes at "
            f"most {n}; build the schedule with n_ary={n} (treelstm.binarize gives every node "
            "at most 2 children) or use a cell without n_ary such as ChildSumCell"
        )
    return n


# --------------------------------------------------------------------------------------------
# The oracle: one node at a time over a Tree, no batching, no schedule.
# --------------------------------------------------------------------------------------------
def evaluate_tree(cell, tree: Tree, x: Tensor, direction: str = "up", slots: int | None = None):
    """Per-node evaluation of `cell` over `tree` (iterative; the test oracle).

    x [n, input_size]: the input of every node in the tree's post-order (``tree.flat()``).
    Returns h, c [n, H] in the same order (c None for a cell that returns h alone).
    direction="up": children before parents, child k in slot k; "down": parents before
    children, the parent in the one slot. slots: K (default: `child_slots` for this tree
    alone: n_ary, else the tree's widest node; pass the batch's to compare a cell whose
    result depends on K).
    """
    check_cell(cell)
    flat = tree.flat()
    n = len(flat.parent)
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows but the tree has {n} nodes")
    kids: list[list[int]] = [[] for _ in range(n)]
    for j in range(n - 1):  # post-order: children come before parents, root is last
        kids[int(flat.parent[j])].append(j)
    widest = max(map(len, kids))
    K = slots if slots is not None else child_slots(cell, None, direction, widest)
    step = _Step(cell)
    hs: list[Tensor | None] = [None] * n
    cs: list[Tensor | None] = [None] * n
    order = range(n) if direction == "up" else range(n - 1, -1, -1)
    for j in order:
        pre = kids[j] if direction == "up" else ([] if j == n - 1 else [int(flat.parent[j])])
        kid_h, kid_c = [hs[k] for k in pre], [cs[k] for k in pre]
        hs[j], cs[j] = _node_step(step, x[j : j + 1], kid_h, kid_c, K)
    return torch.cat(hs), None if step.h_only else torch.cat(cs)


def evaluate_bidirectional(up_cell, down_cell, tree: Tree, x: Tensor):
    """The per-node reference of a bidirectional pass (`treelstm.BiTreeLSTM`): `up_cell`
    bottom-up over x, then `down_cell` top-down over the up pass's h (a node's input; its
    parent's down state is its one child). x [n, in] in post-order -> h [n, H_up + H_down] =
    [h_up, h_down], c likewise (None if either cell returns h alone)."""
    h_up, c_up = evaluate_tree(up_cell, tree, x, "up")
    h_down, c_down = evaluate_tree(down_cell, tree, h_up, "down")
    c = None if c_up is None or c_down is None else torch.cat([c_up, c_down], 1)
    return torch.cat([h_up, h_down], 1), c


def _node_step(step: _Step, x1: Tensor, hs: list, cs: list, K: int):
    """One node: x1 [1, in], child states as lists of [1, H] (c None for h-only cells), padded
    to K masked slots -> (h, c) each [1, H]."""
    H = step.cell.hidden_size
    k = len(hs)
    if k > K:
        raise ValueError(f"a node has {k} children but {type(step.cell).__name__} takes {K}")
    zero = x1.new_zeros(1, H)
    cs = [zero if c is None else c for c in cs]
    pad = [zero] * (K - k)
    ch = torch.stack(hs + pad, dim=1) if K else x1.new_zeros(1, 0, H)
    cc = torch.stack(cs + pad, dim=1) if K else x1.new_zeros(1, 0, H)
    mask = torch.tensor([[True] * k + [False] * (K - k)], dtype=torch.bool, device=x1.device)
    return step(x1, ch, cc, mask)


# --------------------------------------------------------------------------------------------
# Which path: the fused kernel only where the cell class declares it and changes nothing it
# stands in for.
# --------------------------------------------------------------------------------------------
def fused_kernel(cell, direction: str = "up"):
    """(kernel, None) when `cell` runs on a fused kernel in `direction`, else (None, why).

    The rule: the class in ``type(cell).__mro__`` that defines ``level_kernel`` (bottom-up) or
    ``down_kernel`` (top-down) first is the declaring class D, and its kernel stands in for the
    methods it lists (``kernel.stands_for``: ``forward``, ``project``, ``input_parts``, ...).
    The kernel runs only if every one of them resolves on ``type(cell)`` to the very function
    it is on D -- a subclass that redefines one gets the generic path, unless it declares the
    kernel again itself (saying: my methods still compute D's function). Then the instance:
    no forward method, hooks or replaced submodules that the kernel would skip
    (``kernel.why_not``). Never decided by isinstance.
    """
    _check_names("level", direction)
    attr = _KERNEL_ATTR[direction]
    cls = type(cell)
    owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
    kernel = None if owner is None else vars(owner)[attr]
    if kernel is None:
        return None, f"{cls.__name__} declares no {attr}"
    for name in getattr(kernel, "stands_for", ()):
        if getattr(cls, name, None) is not getattr(owner, name, None):
            where = next(k for k in cls.__mro__ if name in vars(k))
            return None, (
                f"{where.__name__} redefines {name}, which {owner.__name__}.{attr} "
                f"({kernel.__name__}) computes without calling; if {cls.__name__} still "
                f"computes {owner.__name__}'s function, declare {attr} = {kernel.__name__} on "
                f"{cls.__name__}"
            )
    why = _instance_changes(cell)
    if why is None and hasattr(kernel, "why_not"):
        why = kernel.why_not(cell)
    if why is not None:
        return None, f"this {cls.__name__}: {why}"
    return kernel, None


def _instance_changes(cell) -> str | None:
    """What an instance adds that a kernel would not call: a forward set on the instance, or
    hooks (its own or global ones; the kernel never calls the module)."""
    if "forward" in getattr(cell, "__dict__", {}):
        return "forward is set on the instance"
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        if getattr(cell, attr, None):
            return f"it has hooks ({attr[1:]}), which a kernel would never call"
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):  # fmt: skip
        if getattr(_module, attr, None):
            return f"global module hooks are registered ({attr[8:]}), which a kernel would skip"
    return None


def explain(cell, strategy: str = "level", direction: str = "up", x: Tensor | None = None) -> str:
    """One line: the path ``run(cell, ..., strategy, direction=direction)`` takes, and why.

    Starts with "fused" (a kernel runs the whole loop), "generic" (one cell call per level or
    depth, plain autograd), "per node" or "per tree". With ``x``, also which implementation of
    a fused kernel the input's device and dtype get (native C or PyTorch ops).
    """
    _check_names(strategy, direction)
    name = type(cell).__name__
    step = "level" if direction == "up" else "depth"
    if strategy == "recursive":
        return f"per node: one {name} call per node (plain autograd)"
    if strategy == "level_autograd":
        return f"generic: one {name} call per {step} (plain autograd), as asked"
    kernel, why = fused_kernel(cell, direction)
    if kernel is None:
        out = f"generic: one {name} call per {step} (plain autograd): {why}"
    else:
        out = f"fused: {kernel.__name__} runs every {step} of {name} ({kernel.platform(x)})"
    return f"per tree, each: {out}" if strategy == "tree" else out


# --------------------------------------------------------------------------------------------
# Public entry
# --------------------------------------------------------------------------------------------
def run(cell, schedule: Schedule, x: Tensor, strategy: str = "level", *, direction: str = "up"):
    """Evaluate `cell` at every node of `schedule`, bottom-up (``direction="up"``) or top-down
    (``"down"``).

    x [N, input_size]: each node's input in schedule order (rows of nodes without a word may
    be zeros). Returns h, c [N, H] in schedule order (c is None for a cell that returns h
    alone); ``h[schedule.roots]`` are the roots.
    """
    K = _check(cell, schedule, x, strategy, direction)
    if strategy == "level":
        kernel, why = fused_kernel(cell, direction)
        if kernel is not None:
            return kernel.run(cell, schedule, x)
        _log.debug("treelstm.run: %s takes the generic path: %s", type(cell).__name__, why)
        strategy = "level_autograd"
    if strategy == "level_autograd":
        if direction == "down":
            return _run_depths_autograd(cell, schedule, x)
        return _run_levels_autograd(cell, schedule, x, K)
    if strategy == "tree":
        return _run_per_tree(cell, schedule, x, direction)
    return _run_per_node(cell, schedule, x, K, direction)


def _check_names(strategy: str, direction: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose 'up' or 'down'")


def _check(cell, schedule: Schedule, x: Tensor, strategy: str, direction: str) -> int:
    """Every argument against the protocol; returns K (`child_slots`)."""
    _check_names(strategy, direction)
    check_cell(cell)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    N = schedule.num_nodes
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape != (N, cell.input_size):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be [N={N}, input_size={cell.input_size}], got {got}")
    params = cell.parameters() if hasattr(cell, "parameters") else iter(())
    p = next(iter(params), None)
    w = x.device if p is None else p.device
    if not (schedule.device == x.device == w):
        raise ValueError(
            f"schedule is on {schedule.device}, x on {x.device} and the cell's weights on "
            f"{w}: move them to one device (schedule.to(device), cell.to(device))"
        )
    return child_slots(cell, schedule, direction)


def _padded_slots(schedule: Schedule, K: int) -> Tensor:
    """children [N, K] with -1 -> N (a zero dummy row), padded with N up to K columns."""
    ch = schedule.children
    N = schedule.num_nodes
    if ch.shape[1] < K:
        ch = torch.cat([ch, ch.new_full((N, K - ch.shape[1]), -1)], dim=1)
    return torch.where(ch >= 0, ch, N)


# --------------------------------------------------------------------------------------------
# Generic paths (any cell of the protocol), plain autograd
# --------------------------------------------------------------------------------------------
def _run_per_node(cell, schedule: Schedule, x: Tensor, K: int, direction: str):
    step = _Step(cell)
    N = schedule.num_nodes
    if direction == "up":
        order = range(N)  # level-major order is a topological order
        pre = [[k for k in row if k >= 0] for row in schedule.children.tolist()]
    else:
        order = schedule.down_layout.order.tolist()
        pre = [[p] if p >= 0 else [] for p in schedule.parent.tolist()]
    hs: list[Tensor | None] = [None] * N
    cs: list[Tensor | None] = [None] * N
    for j in order:
        kids = pre[j]
        kid_h, kid_c = [hs[k] for k in kids], [cs[k] for k in kids]
        hs[j], cs[j] = _node_step(step, x[j : j + 1], kid_h, kid_c, K)
    return torch.cat(hs), None if step.h_only else torch.cat(cs)


def _generic_steps(cell, x: Tensor, slots: Tensor, mask: Tensor, bounds):
    """The generic loop, either direction: one `cell` call per row range [s, e) of `bounds`,
    in order. x [N, in] (rows in loop order), slots [N, K] row of each child slot (N: the
    zero row), mask [N, K]. Returns h, c [N + 1, H] (row N zero) and whether c is absent."""
    N, H = x.shape[0], cell.hidden_size
    step = _Step(cell)
    hb = x.new_zeros(N + 1, H)
    cb = x.new_zeros(N + 1, H)  # stays zero for a cell that returns h alone
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        ch = slots[s:e]
        h, c = step(x[s:e], hb[ch], cb[ch], mask[s:e])
        # In-place writes into the shared buffer: autograd records (and clones for) each one.
        hb[s:e] = h
        if c is not None:
            cb[s:e] = c
    return hb, cb, step.h_only


def _run_levels_autograd(cell, schedule: Schedule, x: Tensor, K: int):
    N = schedule.num_nodes
    slots = _padded_slots(schedule, K)
    hb, cb, h_only = _generic_steps(cell, x, slots, slots < N, schedule.level_bounds)
    return hb[:N], None if h_only else cb[:N]


def _run_depths_autograd(cell, schedule: Schedule, x: Tensor):
    """Top-down by depth: rows depth-major (`Schedule.down_layout`), each node's one slot its
    parent's state (the dummy zero row N at the roots), then back to schedule order."""
    N = schedule.num_nodes
    lay = schedule.down_layout
    parent = lay.parent.unsqueeze(1)  # [N, 1]
    xd = x.index_select(0, lay.order)
    hb, cb, h_only = _generic_steps(cell, xd, parent, parent < N, lay.bounds)
    back = lay.pos
    return hb.index_select(0, back), None if h_only else cb.index_select(0, back)


def _run_per_tree(cell, schedule: Schedule, x: Tensor, direction: str):
    parts_h, parts_c, idx = [], [], []
    for nodes, sub in schedule.per_tree:
        h, c = run(cell, sub, x[nodes], "level", direction=direction)
        parts_h.append(h)
        parts_c.append(c)
        idx.append(nodes)
    back = torch.argsort(torch.cat(idx))
    c = None if parts_c[0] is None else torch.cat(parts_c)[back]
    return torch.cat(parts_h)[back], c
