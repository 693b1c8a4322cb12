"""Run a Tree-LSTM cell over a schedule, and the per-node evaluator every fast path is tested
against (Tai, Socher & Manning 2015 define the recurrence; this module only orders it).

One public entry, `run(cell, schedule, x, strategy)`, returns h and c of every node in the
schedule's (level-major) order. All strategies compute the same function:

  "recursive"       one cell call per node (plain autograd): the baseline per-node Python code.
  "tree"            each tree alone, level by level (the fused kernel per tree).
  "level"           all trees of the batch together, one step per level (the default).
  "level_autograd"  "level" written with plain autograd over one state buffer; the path any
                    user-defined cell takes, and the benchmark's "straightforward" line.

"level" runs the fused kernel the cell names in ``cell.level_kernel`` (`treelstm.kernels`:
the whole level loop as one autograd node with a hand-written backward, W x on input rows
only; that module says why); a cell without one gets "level_autograd".
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cells import ChildSumCell, NaryCell
from .schedule import Schedule
from .tree import Tree

__all__ = ["STRATEGIES", "evaluate_tree", "run"]

STRATEGIES = ("recursive", "tree", "level", "level_autograd")


# --------------------------------------------------------------------------------------------
# The oracle: one node at a time over a Tree, no batching, no schedule.
# --------------------------------------------------------------------------------------------
def evaluate_tree(cell, tree: Tree, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-node evaluation of `cell` over `tree` (iterative post-order; the test oracle).

    x [n, input_size]: the input of every node in the tree's post-order (``tree.flat()``).
    Returns h, c [n, H] in the same order. Children are fed in their order; an N-ary cell gets
    its N slots with missing children masked out.
    """
    flat = tree.flat()
    n = len(flat.parent)
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows but the tree has {n} nodes")
    kids: list[list[int]] = [[] for _ in range(n)]
    for j in range(n - 1):  # post-order: children come before parents, root is last
        kids[int(flat.parent[j])].append(j)
    K = cell.n_ary if isinstance(cell, NaryCell) else None
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for j in range(n):
        h, c = _node_step(cell, x[j : j + 1], [hs[k] for k in kids[j]], [cs[k] for k in kids[j]], K)
        hs.append(h)
        cs.append(c)
    return torch.cat(hs), torch.cat(cs)


def _node_step(cell, x1: Tensor, hs: list[Tensor], cs: list[Tensor], K: int | None):
    """One node: x1 [1, in], child states as lists of [1, H] -> (h, c) each [1, H]."""
    H = cell.hidden_size
    k = len(hs)
    slots = k if K is None else K
    if K is not None and k > K:
        raise ValueError(f"a node has {k} children but the N-ary cell takes {K}")
    pad = slots - k
    zero = x1.new_zeros(1, H)
    ch = torch.stack(hs + [zero] * pad, dim=1) if slots else x1.new_zeros(1, 0, H)
    cc = torch.stack(cs + [zero] * pad, dim=1) if slots else x1.new_zeros(1, 0, H)
    mask = torch.tensor([[True] * k + [False] * pad], device=x1.device).reshape(1, slots)
    return cell(x1, ch, cc, mask)


# --------------------------------------------------------------------------------------------
# Public entry
# --------------------------------------------------------------------------------------------
def run(cell, schedule: Schedule, x: Tensor, strategy: str = "level") -> tuple[Tensor, Tensor]:
    """Evaluate `cell` at every node of `schedule`.

    x [N, input_size]: each node's input in schedule order (rows of nodes without a word may
    be zeros). Returns h, c [N, H] in schedule order; ``h[schedule.roots]`` are the roots.
    """
    _check(cell, schedule, x, strategy)
    if strategy == "level":
        if isinstance(cell, (ChildSumCell, NaryCell)):
            return _run_fused(cell, schedule, x)
        return _run_levels_autograd(cell, schedule, x)
    if strategy == "level_autograd":
        return _run_levels_autograd(cell, schedule, x)
    if strategy == "tree":
        return _run_per_tree(cell, schedule, x)
    return _run_per_node(cell, schedule, x)


def _check(cell, schedule: Schedule, x: Tensor, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    N = schedule.num_nodes
    if x.dim() != 2 or x.shape[0] != N or x.shape[1] != cell.input_size:
        raise ValueError(f"x must be [N={N}, input_size={cell.input_size}], got {tuple(x.shape)}")
    p = next(cell.parameters())
    if not (schedule.device == x.device == p.device):
        raise ValueError(
            f"schedule is on {schedule.device}, x on {x.device} and the cell's weights on "
            f"{p.device}: move them to one device (schedule.to(device), cell.to(device))"
        )
    if isinstance(cell, NaryCell) and schedule.max_children > cell.n_ary:
        raise ValueError(
            f"the schedule has nodes with up to {schedule.max_children} children but "
            f"NaryCell(n_ary={cell.n_ary}) takes at most {cell.n_ary}; build the schedule with "
            f"n_ary={cell.n_ary} or use a ChildSumCell"
        )


def _slots(cell, schedule: Schedule) -> Tensor:
    """children [N, K'] with -1 -> N (a zero dummy row), K' = n_ary for an N-ary cell."""
    ch = schedule.children
    N = schedule.num_nodes
    if isinstance(cell, NaryCell) and ch.shape[1] < cell.n_ary:
        ch = torch.cat([ch, ch.new_full((N, cell.n_ary - ch.shape[1]), -1)], dim=1)
    return torch.where(ch >= 0, ch, N)


# --------------------------------------------------------------------------------------------
# Generic paths (any cell with the (x, child_h, child_c, mask) step), plain autograd
# --------------------------------------------------------------------------------------------
def _run_per_node(cell, schedule: Schedule, x: Tensor):
    K = cell.n_ary if isinstance(cell, NaryCell) else None
    children = schedule.children.tolist()
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for j in range(schedule.num_nodes):  # level-major order is a topological order
        kids = [k for k in children[j] if k >= 0]
        h, c = _node_step(cell, x[j : j + 1], [hs[k] for k in kids], [cs[k] for k in kids], K)
        hs.append(h)
        cs.append(c)
    return torch.cat(hs), torch.cat(cs)


def _run_levels_autograd(cell, schedule: Schedule, x: Tensor):
    N, H = schedule.num_nodes, cell.hidden_size
    slots = _slots(cell, schedule)
    mask = slots < N
    hb = x.new_zeros(N + 1, H)
    cb = x.new_zeros(N + 1, H)
    b = schedule.level_bounds
    for s, e in zip(b[:-1], b[1:], strict=True):
        ch = slots[s:e]
        h, c = cell(x[s:e], hb[ch], cb[ch], mask[s:e])
        # In-place writes into the shared buffer: autograd records (and clones for) each one.
        hb[s:e] = h
        cb[s:e] = c
    return hb[:N], cb[:N]


def _run_per_tree(cell, schedule: Schedule, x: Tensor):
    parts_h, parts_c, idx = [], [], []
    for nodes, sub in schedule.per_tree:
        h, c = run(cell, sub, x[nodes], "level")
        parts_h.append(h)
        parts_c.append(c)
        idx.append(nodes)
    back = torch.argsort(torch.cat(idx))
    return torch.cat(parts_h)[back], torch.cat(parts_c)[back]


# --------------------------------------------------------------------------------------------
# Fused level loop: the kernel the cell names (treelstm.kernels)
# --------------------------------------------------------------------------------------------
def _run_fused(cell, schedule: Schedule, x: Tensor):
    return cell.level_kernel.run(cell, schedule, x)
