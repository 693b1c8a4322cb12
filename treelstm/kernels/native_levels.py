"""The fused level loops with their element-wise work in native code (`levels.c`, CPU only).

Same schedule, same saved quantities and the same matmuls (torch, between the native calls)
as `torch_levels`; what changes is that everything element-wise of a level is one native call
over the level's rows. A level then costs four calls forward and four backward (Child-Sum) or
two and two (N-ary) instead of about thirty torch ops, and every element is read once:

  Child-Sum  forward: addmm (U_iou), gates, addmm (U_f), push [h | f c] into the parents.
             backward: pull the parents' [dc | d sum h], addmm (U_f), gates, mm (U_iou).
  N-ary      forward: addmm (U), gates + forget gates + copy of h, c into the parent's slot.
             backward: pull this node's slot gradients + gates, mm (U) into the children's.

The N-ary kernel runs push-forward / pull-backward on `pos` (each node's row among its
parent's child slots): a node writes its states into its parent's slot as it finishes, so no
level gathers. Every buffer handed to native code is allocated here, contiguous, on the CPU,
of the one dtype the call is compiled for.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ChildSumNative", "NaryNative"]


def _fns(lib, dtype):
    return lib.f32 if dtype == torch.float32 else lib.f64


def _ptr(t: Tensor | None):
    """Base address of a contiguous tensor (None for NULL)."""
    return None if t is None else t.data_ptr()


def _at(p, offset: int):
    """p + offset, or NULL for a NULL p."""
    return None if p is None else p + offset


def _widest(bounds) -> int:
    return max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _init_pre(leaf, inner, b_main, N, n0, width):
    """[N, width]: leaf rows + b_main, internal rows (inner or nothing) + b_main."""
    nm = leaf.shape[1]
    P = leaf.new_empty(N, width)
    torch.add(leaf, b_main, out=P[:n0, :nm])
    if inner is None:
        P[n0:, :nm] = b_main
    else:
        torch.add(inner[:, :nm], b_main, out=P[n0:, :nm])
    return P


class ChildSumNative(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+1)H, H], parent [N] (N = none), bounds,
    n_main, og, lib -> h, c [N, H]. See `torch_levels._ChildSumLevels` for the algorithm."""

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, parent, bounds, n_main, og, train, lib):
        fn = _fns(lib, leaf.dtype)
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        z = leaf.element_size()
        U_main_t, U_f_t = U[:nm].t(), U[nm:].t()
        P = _init_pre(leaf, inner, b_main, N, n0, nm)
        pidx = None
        if inner is not None and inner.shape[1] > nm and N > n0:
            pidx = (parent - n0).clamp_(0, N - n0 - 1)
            xf = torch.index_select(inner[:, nm:], 0, pidx).add_(b_f)
        else:
            xf = b_f
        S0 = leaf.new_zeros(N + 1, H)  # sum of the children's h (row N: the roots' dummy)
        S1 = leaf.new_zeros(N + 1, H)  # sum of the children's f c
        c, h, ku, kc, F, KF = (leaf.new_empty(N, H) for _ in range(6))
        pP, pS0, pS1, pc, ph = map(_ptr, (P, S0, S1, c, h))
        pku, pkc, pF, pKF, ppar = map(_ptr, (ku, kc, F, KF, parent))
        if not train:  # states only: no factors, nothing saved
            pku = pkc = pKF = None
        for lv in range(L):
            s, e = bounds[lv], bounds[lv + 1]
            n, sH = e - s, s * H * z
            if lv:
                P[s:e].addmm_(S0[s:e], U_main_t)
            fc = pS1 + sH if lv else None
            fn.cs_gates_fwd(pP + s * nm * z, fc, pc + sH, ph + sH, _at(pku, sH), _at(pkc, sH), n, H,
                            og)  # fmt: skip
            # Every level pushes, the top one too (roots into the dummy row), see torch_levels.
            torch.addmm(xf if pidx is None else xf[s:e], h[s:e], U_f_t, out=F[s:e])
            fn.cs_push(pF + sH, pc + sH, ph + sH, _at(pKF, sH), pS0, pS1, ppar + s * 8, n, H)
        if train:
            ctx.save_for_backward(U, parent, pidx, P, ku, kc, F, KF, h, S0)
        ctx.meta = (bounds, n_main, og, None if inner is None else inner.shape[1], lib)
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, pidx, P, ku, kc, F, KF, h, S0 = ctx.saved_tensors
        bounds, n_main, og, inner_width, lib = ctx.meta
        fn = _fns(lib, h.dtype)
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        z = h.element_size()
        dh_out = h.new_zeros(N, H) if dh_out is None else dh_out.contiguous()
        dc_out = h.new_zeros(N, H) if dc_out is None else dc_out.contiguous()
        U_main, U_f = U[:nm], U[nm:]
        G0 = h.new_empty(N + 1, H)  # per node: its total dc, pulled by its children
        G1 = h.new_empty(N + 1, H)  # per node: d (sum of its children's h)
        G0[N] = 0
        G1[N] = 0
        DA = h.new_empty(N, nm)
        DF = h.new_empty(N, H)
        w = _widest(bounds)
        dc, dh = h.new_empty(w, H), h.new_empty(w, H)
        pG0, pG1, ppar, pF, pKF, pdco, pdho = map(_ptr, (G0, G1, parent, F, KF, dc_out, dh_out))
        pdc, pDF, pdh, pP, pku, pkc, pDA = map(_ptr, (dc, DF, dh, P, ku, kc, DA))
        for lv in reversed(range(L)):
            s, e = bounds[lv], bounds[lv + 1]
            n, sH = e - s, s * H * z
            fn.cs_bwd_pull(pG0, pG1, ppar + s * 8, pF + sH, pKF + sH, pdco + sH, pdho + sH, pdc,
                           pDF + sH, pdh, n, H)  # fmt: skip
            dh[:n].addmm_(DF[s:e], U_f)
            fn.cs_gates_bwd(pP + s * nm * z, pku + sH, pkc + sH, pdh, pdc, pDA + s * nm * z,
                            pG0 + sH, n, H, og)  # fmt: skip
            if lv:
                torch.mm(DA[s:e], U_main, out=G1[s:e])
        d_U = torch.cat([DA[n0:].t() @ S0[n0:N], DF.t() @ h])
        d_inner = None
        if inner_width is not None:
            d_inner = DA[n0:]
            if inner_width > nm:
                d_f = h.new_zeros(N - n0, H)
                if pidx is not None:
                    d_f.index_add_(0, pidx, DF)
                d_inner = torch.cat([d_inner, d_f], dim=1)
        return DA[:n0], d_inner, DA.sum(0), DF.sum(0), d_U, None, None, None, None, None, None


class NaryNative(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+K)H, K*H], pos [N] (each node's row
    among its parent's K slots, M*K for roots), bounds, n_main, og, K, lib -> h, c [N, H]."""

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, pos, bounds, n_main, og, K, train, lib):
        fn = _fns(lib, leaf.dtype)
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        KH = U.shape[1]
        H = KH // K
        nm = n_main * H
        lda = nm + KH
        z = leaf.element_size()
        c, h, ku, kc = (leaf.new_empty(N, H) for _ in range(4))
        hcat = leaf.new_zeros(M * K + 1, H)  # the children's h, per parent slot (+ dummy)
        ccat = leaf.new_zeros(M * K + 1, H)  # missing children stay zero states
        act0 = torch.add(leaf, b_main)
        pc, ph, pku, pkc, ppos, phc, pcc = map(_ptr, (c, h, ku, kc, pos, hcat, ccat))
        if not train:  # states only: no factors, nothing saved
            pku = pkc = None
        fn.nary_fwd(_ptr(act0), None, None, None, pc, ph, pku, pkc, ppos, phc, pcc, n0, 0, H, og)
        A = leaf.new_empty(M, lda)  # [i, (o), u, f_1..f_K]: activated, then the factors
        b_all = torch.cat([b_main, b_f])
        if inner is not None:
            A[:, :nm] = inner[:, :nm]
            A[:, nm:] = inner[:, nm:].repeat(1, K) if inner.shape[1] > nm else 0
            A.add_(b_all)
        KF = leaf.new_empty(M, KH)
        fc = leaf.new_empty(M, H)
        pA, pKF, pfc = map(_ptr, (A, KF, fc))
        pKF = pKF if train else None
        hc = hcat[: M * K].view(M, KH)
        Ut = U.t()
        for lv in range(1, L):
            s, e = bounds[lv], bounds[lv + 1]
            r, q = s - n0, e - n0
            n, sH = e - s, s * H * z
            if inner is None:
                torch.addmm(b_all, hc[r:q], Ut, out=A[r:q])
            else:
                A[r:q].addmm_(hc[r:q], Ut)
            fn.nary_fwd(pA + r * lda * z, pcc + r * KH * z, _at(pKF, r * KH * z), pfc + r * H * z,
                        pc + sH, ph + sH, _at(pku, sH), _at(pkc, sH), ppos + s * 8, phc, pcc, n,
                        K, H, og)  # fmt: skip
        if train:
            ctx.save_for_backward(U, pos, act0, A, ku, kc, KF, hc)
        ctx.meta = (bounds, n_main, og, K, None if inner is None else inner.shape[1], lib)
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, pos, act0, A, ku, kc, KF, hc = ctx.saved_tensors
        bounds, n_main, og, K, inner_width, lib = ctx.meta
        fn = _fns(lib, ku.dtype)
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        H = ku.shape[1]
        KH = K * H
        nm = n_main * H
        lda = nm + KH
        z = ku.element_size()
        dh_out = ku.new_zeros(N, H) if dh_out is None else dh_out.contiguous()
        dc_out = ku.new_zeros(N, H) if dc_out is None else dc_out.contiguous()
        DHC = ku.new_empty(M * K + 1, H)  # d h of each parent slot, pulled by its child
        DCC = ku.new_empty(M * K + 1, H)  # d c of each parent slot
        DHC[M * K] = 0
        DCC[M * K] = 0
        DA = ku.new_empty(M, lda)
        DA0 = ku.new_empty(n0, nm)
        w = _widest(bounds)
        dh, dc, dct = (ku.new_empty(w, H) for _ in range(3))
        pA, pku, pkc, pKF, pdho, pdco = map(_ptr, (A, ku, kc, KF, dh_out, dc_out))
        pDHC, pDCC, ppos, pDA = map(_ptr, (DHC, DCC, pos, DA))
        sc = tuple(map(_ptr, (dh, dc, dct)))
        for lv in reversed(range(1, L)):
            s, e = bounds[lv], bounds[lv + 1]
            r, q = s - n0, e - n0
            n, sH = e - s, s * H * z
            fn.nary_bwd(pA + r * lda * z, pku + sH, pkc + sH, pKF + r * KH * z, pdho + sH,
                        pdco + sH, pDHC, pDCC, ppos + s * 8, pDA + r * lda * z,
                        pDCC + r * KH * z, *sc, n, K, H, og)  # fmt: skip
            torch.mm(DA[r:q], U, out=DHC[r * K : q * K].view(n, KH))
        fn.nary_bwd(_ptr(act0), pku, pkc, None, pdho, pdco, pDHC, pDCC, ppos, _ptr(DA0), None,
                    *sc, n0, 0, H, og)  # fmt: skip
        d_U = DA.t() @ hc
        d_inner = None
        if inner_width is not None:
            d_inner = DA[:, :nm]
            if inner_width > nm:
                d_inner = torch.cat([d_inner, DA[:, nm:].view(M, K, H).sum(1)], dim=1)
        d_b_main = DA0.sum(0) + DA[:, :nm].sum(0)
        d_b_f = DA[:, nm:].sum(0)
        return DA0, d_inner, d_b_main, d_b_f, d_U, None, None, None, None, None, None, None
