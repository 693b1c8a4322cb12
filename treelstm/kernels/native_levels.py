"""The fused level loops in native code (`levels.c`; CPU, float32 / float64).

Same algorithm, same saved quantities and the same function as `torch_levels`, but each of
forward and backward is one call into C: Python allocates the buffers (once per call,
contiguous, on the CPU, of the dtype the call is compiled for) and hands their addresses over;
C runs the level loop, with the matmuls in the BLAS torch uses (a direct loop for levels of a
few rows) and everything else of a level as one pass over its rows. No per-level Python, no
per-level torch op: the difference shows most at small batches, where levels are many and
small.

  Child-Sum  per level, forward: matmul (U_iou), gates, matmul (U_f), push [h | f c] into
             the parents; backward: pull the parents' [dc | d sum h], matmul (U_f), gates,
             matmul (U_iou).
  N-ary      push-forward / pull-backward on `pos` (each node's row among its parent's child
             slots): a node copies its states into its parent's slot as it finishes, so no
             level gathers; backward, a node reads its gradients from that slot.
  top-down   the N-ary loop with one slot, filled from the parent: per depth, forward: gather
             the parents' h and c, matmul (U), gates; backward: gates, matmul (U), add each
             row's share into its parent's gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from treelstm.kernels.torch_levels import child_sum_weight_grads

__all__ = ["ChildSumNative", "DownNative", "NaryNative"]


def _fns(lib, dtype):
    return lib.f32 if dtype == torch.float32 else lib.f64


def _ptr(t: Tensor | None):
    """Address of a contiguous tensor's first element (None: NULL)."""
    if t is None:
        return None
    assert t.is_contiguous() and t.device.type == "cpu", "native kernels take contiguous CPU"
    return t.data_ptr()


def _widest(bounds) -> int:
    return max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _grad(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


class ChildSumNative(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+1)H, H], parent [N] (N = none), bounds,
    n_main, og, train, lib -> h, c [N, H]. See `torch_levels.ChildSumLevels`."""

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, parent, bounds, n_main, og, train, lib):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        P = leaf.new_empty(N, nm)  # pre-activations, then the gate factors
        torch.add(leaf, b_main, out=P[:n0])
        if inner is None:
            P[n0:] = b_main
        else:
            torch.add(inner[:, :nm], b_main, out=P[n0:])
        pidx = xf = None
        if inner is not None and inner.shape[1] > nm and N > n0:
            # each edge's forget gate needs its parent's W_f x: gathered once for all edges
            pidx = (parent - n0).clamp_(0, N - n0 - 1)
            xf = torch.index_select(inner[:, nm:], 0, pidx).add_(b_f)
        S0 = leaf.new_zeros(N + 1, H)  # sum of the children's h (row N: the roots' dummy)
        S1 = leaf.new_zeros(N + 1, H)  # sum of the children's f c
        c, h, F = (leaf.new_empty(N, H) for _ in range(3))
        ku, kc, KF = (leaf.new_empty(N, H) if train else None for _ in range(3))
        # Every tensor C reads is held by a name here until the call returns.
        U, bf = U.contiguous(), b_f.contiguous()
        UmT, UfT = U[:nm].t().contiguous(), U[nm:].t().contiguous()
        ptr = torch.tensor(bounds, dtype=torch.int64)
        args = (P, S0, S1, c, h, F, ku, kc, KF, xf, bf, UmT, UfT, parent, ptr)
        _fns(lib, leaf.dtype).cs_forward(*map(_ptr, args), L, H, og)
        if train:
            ctx.save_for_backward(U, parent, pidx, P, ku, kc, F, KF, h, S0)
            ctx.meta = (bounds, n_main, og, None if inner is None else inner.shape[1], lib)
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, pidx, P, ku, kc, F, KF, h, S0 = ctx.saved_tensors
        bounds, n_main, og, inner_width, lib = ctx.meta
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        G0 = h.new_empty(N + 1, H)  # per node: its total dc, pulled by its children
        G1 = h.new_empty(N + 1, H)  # per node: d (sum of its children's h)
        G0[N] = 0
        G1[N] = 0
        DA, DF = h.new_empty(N, nm), h.new_empty(N, H)
        w = _widest(bounds)
        dh, dc = h.new_empty(w, H), h.new_empty(w, H)
        ptr = torch.tensor(bounds, dtype=torch.int64)
        dh_out, dc_out = _grad(dh_out, h), _grad(dc_out, h)
        args = (P, ku, kc, F, KF, dh_out, dc_out, G0, G1, DA, DF, dh, dc, U[:nm], U[nm:],
                parent, ptr)  # fmt: skip
        _fns(lib, h.dtype).cs_backward(*map(_ptr, args), L, H, og)
        d_U, d_inner = child_sum_weight_grads(DA[n0:], DF, S0[n0:N], h, nm, inner_width, pidx)
        return DA[:n0], d_inner, DA.sum(0), DF.sum(0), d_U, None, None, None, None, None, None


class NaryNative(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+K)H, K*H], pos [N] (each node's row
    among its parent's K slots, M*K for roots), bounds, n_main, og, K, train, lib
    -> h, c [N, H]. See `torch_levels.NaryLevels`."""

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, pos, bounds, n_main, og, K, train, lib):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        KH = U.shape[1]
        H = KH // K
        nm = n_main * H
        c, h = leaf.new_empty(N, H), leaf.new_empty(N, H)
        ku, kc = (leaf.new_empty(N, H) if train else None for _ in range(2))
        KF = leaf.new_empty(M, KH) if train else None
        hcat = leaf.new_zeros(M * K + 1, H)  # the children's h, per parent slot (+ dummy)
        ccat = leaf.new_zeros(M * K + 1, H)  # missing children stay zero states
        act0 = torch.add(leaf, b_main)
        A = leaf.new_empty(M, nm + KH)  # [i, (o), u, f_1..f_K]: activated, then the factors
        b_all = torch.cat([b_main, b_f])
        if inner is not None:
            A[:, :nm] = inner[:, :nm]
            A[:, nm:] = inner[:, nm:].repeat(1, K) if inner.shape[1] > nm else 0
            A.add_(b_all)
        # Every tensor C reads is held by a name here until the call returns.
        U = U.contiguous()
        UT, fc = U.t().contiguous(), leaf.new_empty(M, H)
        ptr = torch.tensor(bounds, dtype=torch.int64)
        b_in = b_all if inner is None else None  # None: A already holds x part + biases
        args = (act0, A, b_in, hcat, ccat, KF, fc, c, h, ku, kc, UT, pos, ptr)
        _fns(lib, leaf.dtype).nary_forward(*map(_ptr, args), L, K, H, og)
        if train:
            ctx.save_for_backward(U, pos, act0, A, ku, kc, KF, hcat)
            ctx.meta = (bounds, n_main, og, K, None if inner is None else inner.shape[1], lib)
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, pos, act0, A, ku, kc, KF, hcat = ctx.saved_tensors
        bounds, n_main, og, K, inner_width, lib = ctx.meta
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        H = ku.shape[1]
        nm = n_main * H
        DHC = ku.new_empty(M * K + 1, H)  # d h of each parent slot, pulled by its child
        DCC = ku.new_empty(M * K + 1, H)  # d c of each parent slot
        DHC[M * K] = 0
        DCC[M * K] = 0
        DA, DA0 = ku.new_empty(M, nm + K * H), ku.new_empty(n0, nm)
        w = _widest(bounds)
        scratch = [ku.new_empty(w, H) for _ in range(3)]
        ptr = torch.tensor(bounds, dtype=torch.int64)
        dh_out, dc_out = _grad(dh_out, ku), _grad(dc_out, ku)
        args = (act0, A, ku, kc, KF, dh_out, dc_out, DHC, DCC, DA, DA0, *scratch, U, pos, ptr)
        _fns(lib, ku.dtype).nary_backward(*map(_ptr, args), L, K, H, og)
        d_U = DA.t() @ hcat[: M * K].view(M, K * H)
        d_inner = None
        if inner_width is not None:
            d_inner = DA[:, :nm]
            if inner_width > nm:
                d_inner = torch.cat([d_inner, DA[:, nm:].view(M, K, H).sum(1)], dim=1)
        d_b_main = DA0.sum(0) + DA[:, :nm].sum(0)
        d_b_f = DA[:, nm:].sum(0)
        return DA0, d_inner, d_b_main, d_b_f, d_U, None, None, None, None, None, None, None


class DownNative(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts` of the depth-major rows; "leaves" = the roots),
    U [(m+1)H, H], parent [N] (positions; roots unused), bounds, n_main, og, train, lib
    -> h, c [N, H] in depth-major order. See `torch_down.DownLevels`."""

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, parent, bounds, n_main, og, train, lib):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        H = U.shape[1]
        nm = n_main * H
        c, h = leaf.new_empty(N, H), leaf.new_empty(N, H)
        ku, kc = (leaf.new_empty(N, H) if train else None for _ in range(2))
        KF = leaf.new_empty(M, H) if train else None
        act0 = torch.add(leaf, b_main)
        A = leaf.new_empty(M, nm + H)  # [i, (o), u, f] of the rows below the roots
        if inner is None:
            A[:, :nm] = b_main
            A[:, nm:] = b_f
        else:
            torch.add(inner[:, :nm], b_main, out=A[:, :nm])
            A[:, nm:] = inner[:, nm:] + b_f if inner.shape[1] > nm else b_f
        HP, CP, fc = (leaf.new_empty(M, H) for _ in range(3))  # parents' h, c; scratch
        # Every tensor C reads is held by a name here until the call returns.
        U = U.contiguous()
        UT = U.t().contiguous()
        ptr = torch.tensor(bounds, dtype=torch.int64)
        args = (act0, A, HP, CP, KF, fc, c, h, ku, kc, UT, parent, ptr)
        _fns(lib, leaf.dtype).down_forward(*map(_ptr, args), L, H, og)
        if train:
            ctx.save_for_backward(U, parent, act0, A, ku, kc, KF, HP)
            ctx.meta = (bounds, n_main, og, None if inner is None else inner.shape[1], lib)
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, act0, A, ku, kc, KF, HP = ctx.saved_tensors
        bounds, n_main, og, inner_width, lib = ctx.meta
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = ku.shape[1]
        nm = n_main * H
        # C adds the children's shares into these: copies, never the caller's tensors.
        dH = torch.empty_like(ku).copy_(_grad(dh_out, ku))
        dC = torch.empty_like(ku).copy_(_grad(dc_out, ku))
        DA, DA0 = ku.new_empty(N - n0, nm + H), ku.new_empty(n0, nm)
        w = _widest(bounds)
        scratch = [ku.new_empty(w, H) for _ in range(5)]  # DHP, DCP, dh, dc, dct
        ptr = torch.tensor(bounds, dtype=torch.int64)
        args = (act0, A, ku, kc, KF, dH, dC, DA, DA0, *scratch, U, parent, ptr)
        _fns(lib, ku.dtype).down_backward(*map(_ptr, args), L, H, og)
        d_U = DA.t() @ HP
        d_inner = None
        if inner_width is not None:
            d_inner = DA if inner_width > nm else DA[:, :nm]
        d_b_main = DA0.sum(0) + DA[:, :nm].sum(0)
        return DA0, d_inner, d_b_main, DA[:, nm:].sum(0), d_U, None, None, None, None, None, None
