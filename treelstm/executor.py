"""Run a Tree-LSTM cell over a schedule, and the per-node evaluator every fast path is tested
against (Tai, Socher & Manning 2015 define the recurrence; this module only orders it).

One public entry, `run(cell, schedule, x, strategy)`, returns h and c of every node in the
schedule's (level-major) order. All strategies compute the same function:

  "recursive"       one cell call per node (plain autograd): the baseline per-node Python code.
  "tree"            each tree alone, level by level (the fused kernel per tree).
  "level"           all trees of the batch together, one step per level (the default).
  "level_autograd"  "level" written with plain autograd over one state buffer; the path any
                    user-defined cell takes, and the benchmark's "straightforward" line.

Why "level" has its own backward: written with autograd, every level's write into the shared
[N, H] state makes autograd clone the buffer (CopySlices) and every gather allocate a zeroed
[N, H] gradient, O(levels x N x H) memory traffic. The fused kernels below run the level loop
without autograd, keep what the backward needs in flat [N, .] buffers, and walk the levels in
reverse with one gradient buffer and in-place index_add_. W x (and every bias) is computed for
all nodes in one matmul before the loop; the U gradient is one matmul after it.

Child-Sum is run "push" style: when a level finishes, each node sends U_iou h to its parent's
pre-activations and f*c to its parent's cell sum (a node has one parent), so fan-out is never
padded. N-ary is run "pull" style: a parent gathers its N ordered child states.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

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
# Fused level loop with a hand-written backward
# --------------------------------------------------------------------------------------------
def _run_fused(cell, schedule: Schedule, x: Tensor):
    xw = cell.project(x, schedule.is_leaf())
    N = schedule.num_nodes
    if isinstance(cell, ChildSumCell):
        parent = torch.where(schedule.parent >= 0, schedule.parent, N)
        return _ChildSumLevels.apply(
            xw, cell.U.weight, parent, schedule.level_bounds, cell.n_main, cell.output_gate
        )
    return _NaryLevels.apply(
        xw,
        cell.U.weight,
        _slots(cell, schedule),
        schedule.level_bounds,
        cell.n_main,
        cell.output_gate,
    )


def _gates_forward(a: Tensor, fc: Tensor, act: Tensor, c: Tensor, tc: Tensor, h: Tensor | None):
    """Gates of one level, written straight into the saved buffers.

    a [n, m*H] pre-activations [i, (o), u]; fc [n, H] = sum_k f_k c_k. Fills act (sigmoid of
    i, o; tanh of u), c = i*u + fc, tc = tanh(c) and, with an output gate, h = o*tc.
    """
    H = c.shape[1]
    nm = a.shape[1]
    torch.sigmoid(a[:, : nm - H], out=act[:, : nm - H])
    torch.tanh(a[:, nm - H :], out=act[:, nm - H :])
    torch.addcmul(fc, act[:, :H], act[:, nm - H :], out=c)
    torch.tanh(c, out=tc)
    if h is not None:
        torch.mul(act[:, H : 2 * H], tc, out=h)


def _gate_factors(act: Tensor, tc: Tensor) -> tuple[Tensor, Tensor]:
    """Local derivatives of every node's gates, computed once for all nodes before the
    backward level loop, so each level needs four multiplications instead of a dozen ops.

    Returns kc [N, H] with dc_total = dc + dh * kc, and kx [N, m*H] with
    d pre-activation = [dc_total, dh, dc_total] * kx over the blocks [i, (o), u].
    """
    H = tc.shape[1]
    nm = act.shape[1]
    og = nm == 3 * H
    i, u = act[:, :H], act[:, nm - H :]
    kx = torch.empty_like(act)
    sig = act[:, : nm - H]
    torch.mul(sig, 1 - sig, out=kx[:, : nm - H])  # sigmoid' of i (and o)
    kx[:, :H].mul_(u)  # d c / d i = u
    torch.mul(u, u, out=kx[:, nm - H :])
    kx[:, nm - H :].neg_().add_(1).mul_(i)  # tanh' of u, times d c / d u = i
    kc = torch.mul(tc, tc).neg_().add_(1)  # tanh'(c)
    if og:
        o = act[:, H : 2 * H]
        kx[:, H : 2 * H].mul_(tc)  # d h / d o = tanh c
        kc.mul_(o)  # d h / d c = o tanh'(c)
    return kc, kx


def _gates_backward(kc: Tensor, kx: Tensor, dh: Tensor, dc: Tensor, da: Tensor, dc_out: Tensor):
    """Through h = o*tanh(c) (or tanh(c)) and c = i*u + fc, with `_gate_factors` rows.

    dh, dc [n, H]: incoming gradients of h and c. Writes the gradient of the pre-activations
    [i, (o), u] into da [n, m*H] and the total gradient of c into dc_out [n, H].
    """
    H = kc.shape[1]
    nm = kx.shape[1]
    torch.addcmul(dc, dh, kc, out=dc_out)
    torch.mul(dc_out, kx[:, :H], out=da[:, :H])
    if nm == 3 * H:
        torch.mul(dh, kx[:, H : 2 * H], out=da[:, H : 2 * H])
    torch.mul(dc_out, kx[:, nm - H :], out=da[:, nm - H :])


class _ChildSumLevels(torch.autograd.Function):
    """xw [N, (m+1)H], U [(m+1)H, H], parent [N] (N = none) -> h, c [N, H].

    Forward, per level: gates; then every non-root node pushes U_iou h into its parent's
    pre-activations and f*c (f = sigmoid(W_f x_parent + U_f h)) into its parent's cell sum,
    both with one index_add_.
    Backward, per level from the top: one gather of the parents' gradients [dc | d_iou] gives
    both the edge's forget-gate gradient and the d z that flows through U to the child.
    """

    @staticmethod
    def forward(ctx, xw, U, parent, bounds, n_main, og):
        N = parent.shape[0]
        H = U.shape[1]
        G = U.shape[0]
        nm = n_main * H
        with torch.no_grad():
            # Per node, accumulated from its children: [pre-activations i,o,u | sum_k f_k c_k];
            # row N is the dummy parent of the roots.
            P = xw.new_empty(N + 1, G)
            P[:N, :nm] = xw[:, :nm]
            P[:N, nm:] = 0
            P[N] = 0
            pre, fc = P[:, :nm], P[:, nm:]
            # W_f x + b_f of each node's parent, gathered for all edges at once (roots: any row).
            xf_parent = xw[:, nm:].index_select(0, torch.where(parent < N, parent, 0))
            act = xw.new_empty(N, nm)
            c_all = xw.new_empty(N, H)
            tc_all = xw.new_empty(N, H)
            h_all = xw.new_empty(N, H) if og else tc_all
            f_all = xw.new_empty(N, H)  # forget gate of the edge node -> parent
            Ut = U.t()
            L = len(bounds) - 1
            for l in range(L):
                s, e = bounds[l], bounds[l + 1]
                _gates_forward(
                    pre[s:e], fc[s:e], act[s:e], c_all[s:e], tc_all[s:e], h_all[s:e] if og else None
                )
                if l == L - 1:
                    break  # the top level holds roots only
                z = torch.mm(h_all[s:e], Ut)  # [U_iou h | U_f h]
                f = torch.add(z[:, nm:], xf_parent[s:e], out=f_all[s:e]).sigmoid_()
                torch.mul(f, c_all[s:e], out=z[:, nm:])  # -> [U_iou h | f c]
                P.index_add_(0, parent[s:e], z)  # one push of both into the parents' rows
        ctx.save_for_backward(U, parent, act, c_all, tc_all, h_all, f_all)
        ctx.meta = (bounds, n_main)
        return h_all, c_all

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, act, c_all, tc_all, h_all, f_all = ctx.saved_tensors
        bounds, n_main = ctx.meta
        N, H = h_all.shape
        nm = n_main * H
        if dh_out is None:
            dh_out = h_all.new_zeros(N, H)
        if dc_out is None:
            dc_out = h_all.new_zeros(N, H)
        # D rows: [d c | d pre-activations i,o,u | d (W_f x + b_f)]; row N is the dummy parent.
        D = h_all.new_empty(N + 1, 2 * H + nm)
        D[:, H + nm :] = 0
        D[N] = 0
        # U with its forget block first, matching the gathered [d c -> d f | d iou] layout.
        U_fi = torch.cat([U[nm:], U[:nm]])
        # Per node as a child: [d f of its edge | d iou of its parent].
        dz_all = h_all.new_empty(N, H + nm)
        D_head = D[:, : H + nm]
        L = len(bounds) - 1
        dz_all[bounds[L - 1] :] = 0  # roots of the top level push nothing
        kc, kx = _gate_factors(act, tc_all)
        kf = f_all - f_all * f_all  # d(f c) / d(forget pre-activation) = c f (1 - f)
        kf.mul_(c_all)
        for l in reversed(range(L)):
            s, e = bounds[l], bounds[l + 1]
            dh = dh_out[s:e]
            dc = dc_out[s:e]
            if l < L - 1:
                p = parent[s:e]
                f = f_all[s:e]
                dz = torch.index_select(D_head, 0, p, out=dz_all[s:e])  # parents' [dc | d iou]
                dcp = dz[:, :H]
                dc = torch.addcmul(dc, dcp, f)
                dcp.mul_(kf[s:e])  # -> d(forget pre-activation) of the edge
                dh = torch.addmm(dh, dz, U_fi)
            _gates_backward(kc[s:e], kx[s:e], dh, dc, D[s:e, H : H + nm], D[s:e, :H])
        # d (W_f x + b_f) of a parent: the sum of its edges' forget-gate gradients, in one go.
        D[:, H + nm :].index_add_(0, parent, dz_all[:, :H])
        d_xw = D[:N, H:]
        d_U_fi = dz_all.t() @ h_all
        d_U = torch.cat([d_U_fi[H:], d_U_fi[:H]])
        return d_xw, d_U, None, None, None, None


class _NaryLevels(torch.autograd.Function):
    """xw [N, (m+K)H], U [(m+K)H, K*H], slots [N, K] (N = none) -> h, c [N, H].

    Forward, per level: gather the K ordered child states, one addmm for every gate.
    Backward, per level from the top: gate gradients, one matmul through U, and index_add_ of
    the children's h and c gradients into one buffer each.
    """

    @staticmethod
    def forward(ctx, xw, U, slots, bounds, n_main, og):
        N, K = slots.shape
        H = U.shape[1] // K
        nm = n_main * H
        with torch.no_grad():
            hb = xw.new_empty(N + 1, H)
            cb = xw.new_empty(N + 1, H)
            hb[N] = 0
            cb[N] = 0
            hcat = xw.new_zeros(N, K * H)  # children's h, concatenated (leaves: none)
            ccat = xw.new_empty(N, K * H)  # children's c
            act = xw.new_empty(N, nm)
            tc_all = xw.new_empty(N, H)
            f_all = xw.new_empty(N, K * H)
            Ut = U.t()
            n0 = bounds[1]
            zero_fc = xw.new_zeros(n0, H)
            for l in range(len(bounds) - 1):
                s, e = bounds[l], bounds[l + 1]
                if l == 0:  # leaves: no children, no forget gates
                    a, fc = xw[s:e, :nm], zero_fc
                else:
                    ch = slots[s:e].reshape(-1)
                    hc = torch.index_select(hb, 0, ch, out=hcat[s:e].view(-1, H)).view(e - s, -1)
                    cc = torch.index_select(cb, 0, ch, out=ccat[s:e].view(-1, H))
                    a = torch.addmm(xw[s:e], hc, Ut)
                    f = torch.sigmoid(a[:, nm:], out=f_all[s:e])
                    fc = (f.view(-1, K, H) * cc.view(-1, K, H)).sum(1)
                    a = a[:, :nm]
                _gates_forward(a, fc, act[s:e], cb[s:e], tc_all[s:e], hb[s:e] if og else None)
                if not og:
                    hb[s:e] = tc_all[s:e]
        ctx.save_for_backward(U, slots, act, tc_all, f_all, hcat, ccat)
        ctx.meta = bounds
        return hb[:N], cb[:N]

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, slots, act, tc_all, f_all, hcat, ccat = ctx.saved_tensors
        bounds = ctx.meta
        N, K = slots.shape
        H = tc_all.shape[1]
        nm = act.shape[1]
        d_h = act.new_zeros(N + 1, H)
        d_c = act.new_zeros(N + 1, H)
        if dh_out is not None:
            d_h[:N] = dh_out
        if dc_out is not None:
            d_c[:N] = dc_out
        d_a = act.new_empty(N, nm + K * H)
        d_a[: bounds[1], nm:] = 0  # leaves have no forget gates
        kc, kx = _gate_factors(act, tc_all)
        kf = ccat * (1 - f_all)  # d(f c) / d(f pre-activation) = c f (1 - f), less the f
        for l in reversed(range(len(bounds) - 1)):
            s, e = bounds[l], bounds[l + 1]
            dc = act.new_empty(e - s, H)
            _gates_backward(kc[s:e], kx[s:e], d_h[s:e], d_c[s:e], d_a[s:e, :nm], dc)
            if l == 0:
                continue
            ch = slots[s:e].reshape(-1)
            f = f_all[s:e].view(-1, K, H)
            dcf = dc.unsqueeze(1) * f  # the children's c gradients
            df = d_a[s:e, nm:].view(-1, K, H)
            torch.mul(dcf, kf[s:e].view(-1, K, H), out=df)
            d_hc = torch.mm(d_a[s:e], U)
            d_h.index_add_(0, ch, d_hc.view(-1, H))
            d_c.index_add_(0, ch, dcf.view(-1, H))
        d_U = d_a.t() @ hcat
        return d_a, d_U, None, None, None, None
