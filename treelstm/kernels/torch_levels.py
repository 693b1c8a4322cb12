"""The fused level loops in PyTorch ops: the path for every device (and the fallback on the
CPU when the native kernels are unavailable). See `treelstm.kernels` for the algorithm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ChildSumLevels", "NaryLevels"]


# --------------------------------------------------------------------------------------------
# Gate math shared by both kernels
# --------------------------------------------------------------------------------------------
def _activate(a: Tensor, H: int) -> None:
    """In place: sigmoid on the [i, (o)] blocks of a [n, m*H], tanh on the u block."""
    nm = a.shape[1]
    a[:, : nm - H].sigmoid_()
    a[:, nm - H :].tanh_()


class _Factors(NamedTuple):
    """Local derivatives of the gates, written by the forward as each level finishes, so the
    backward needs four multiplications a level and no [N, .] temporaries of its own.

    kx   [N, m*H]  the activations' own buffer, overwritten: d i-pre / dc and d o-pre / dh
                   in the [i, (o)] blocks (the u block is left unused)
    ku   [N, H]    d u-pre / dc = i (1 - u^2)
    kc   [N, H]    d h / d c = o (1 - tanh(c)^2)  (1 - tanh(c)^2 without an output gate)
    """

    kx: Tensor
    ku: Tensor
    kc: Tensor

    def rows(self, s: int, e: int) -> _Factors:
        return _Factors(self.kx[s:e], self.ku[s:e], self.kc[s:e])


def _cell_forward(act: Tensor, fc: Tensor | None, c: Tensor, h: Tensor, k, tc: Tensor):
    """One level's states from its activations, then its gate factors (`_Factors`) in place.

    act [n, m*H] activations [i, (o), u] (overwritten by the factors); fc [n, H] the sum of
    f_k * c_k over the children (None: leaves). Writes c = i*u + fc and h = o*tanh(c) (or
    tanh(c)); tc [n, H] is scratch for tanh(c). k None: no gradient wanted, states only.
    """
    H = c.shape[1]
    nm = act.shape[1]
    i, u = act[:, :H], act[:, nm - H :]
    if fc is None:
        torch.mul(i, u, out=c)
    else:
        torch.addcmul(fc, i, u, out=c)
    if k is None:
        if nm == 3 * H:
            torch.mul(act[:, H : 2 * H], torch.tanh(c, out=tc), out=h)
        else:
            torch.tanh(c, out=h)
        return
    if nm == 3 * H:
        o = act[:, H : 2 * H]
        torch.tanh(c, out=tc)
        torch.mul(o, tc, out=h)
        torch.addcmul(o, h, tc, value=-1, out=k.kc)  # o (1 - tanh^2 c)
        o.addcmul_(o, o, value=-1).mul_(tc)  # sigmoid'(o) * tanh(c)
    else:
        torch.tanh(c, out=h)
        torch.mul(h, h, out=k.kc).neg_().add_(1)  # 1 - tanh^2 c
    torch.mul(u, u, out=k.ku)
    torch.addcmul(i, i, k.ku, value=-1, out=k.ku)  # i (1 - u^2)
    i.addcmul_(i, i, value=-1).mul_(u)  # sigmoid'(i) * u


def _gates_backward(k: _Factors, dh: Tensor, dc: Tensor, da: Tensor, dct: Tensor) -> None:
    """Through h = o*tanh(c) (or tanh(c)) and c = i*u + fc, with one level's `_Factors`.

    dh, dc [n, H]: incoming gradients of h and c. Writes the gradient of the pre-activations
    [i, (o), u] into da [n, m*H] and the total gradient of c into dct [n, H].
    """
    H = dh.shape[1]
    nm = da.shape[1]
    torch.addcmul(dc, dh, k.kc, out=dct)
    torch.mul(dct, k.kx[:, :H], out=da[:, :H])
    if nm == 3 * H:
        torch.mul(dh, k.kx[:, H : 2 * H], out=da[:, H : 2 * H])
    torch.mul(dct, k.ku, out=da[:, nm - H :])


def _widest(bounds) -> int:
    return max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def child_sum_weight_grads(da_inner, DF, s_inner, h, nm, inner_width, pidx):
    """The Child-Sum backward's weight side, shared by the PyTorch and the native kernels.

    da_inner [M, nm] d pre-activations of the internal rows, DF [N, H] d forget pre-activation
    of every edge (row = child), s_inner [M, H] the internal rows' sums of children's h, h [N, H],
    pidx [N] each child's internal parent row (None: no internal rows). Returns d_U
    [nm + H, H] and d_inner ([M, inner_width], None without an inner input part).
    """
    d_U = torch.cat([da_inner.t() @ s_inner, DF.t() @ h])
    if inner_width is None:
        return d_U, None
    d_inner = da_inner
    if inner_width > nm:  # the inner part carries W_f x too: its gradient is DF summed per parent
        d_f = h.new_zeros(da_inner.shape[0], h.shape[1])
        if pidx is not None:
            d_f.index_add_(0, pidx, DF)
        d_inner = torch.cat([d_inner, d_f], dim=1)
    return d_U, d_inner


# --------------------------------------------------------------------------------------------
# Child-Sum
# --------------------------------------------------------------------------------------------
class ChildSumLevels(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+1)H, H], parent [N] (N = none)
    -> h, c [N, H].

    Forward, per level: the pre-activations [i, (o), u] of its nodes get U_iou times the sum of
    their children's h; gates; then every node pushes [h | f*c] into its parent's rows of one
    [2, N+1, H] buffer with one index_add_ (f = sigmoid(W_f x_parent + b_f + U_f h); roots push
    into the dummy row N).
    Backward, per level from the top: one index_select gives each node its parent's
    [d c | d (sum of children's h)], from which the edge's forget-gate gradient and the node's
    own gradients follow; the node's d(sum h) for its children is one matmul through U_iou.
    """

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, parent, bounds, n_main, og, train):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        U_main_t, U_f_t = U[:nm].t(), U[nm:].t()
        # P: pre-activations [i, (o), u]; activated, then overwritten by the gate factors.
        P = leaf.new_empty(N, nm)
        torch.add(leaf, b_main, out=P[:n0])
        if inner is None:
            P[n0:] = b_main
        else:
            torch.add(inner[:, :nm], b_main, out=P[n0:])
        # Forget-gate input of each edge child -> parent: the parent's W_f x + b_f.
        pidx = None
        if inner is not None and inner.shape[1] > nm and N > n0:
            pidx = (parent - n0).clamp_(0, N - n0 - 1)
            xf = torch.index_select(inner[:, nm:], 0, pidx).add_(b_f)
        else:
            xf = b_f
        S = leaf.new_zeros(2, N + 1, H)  # pushed by the children: [sum h | sum f*c]; row N dummy
        Z = leaf.new_empty(2, N, H)  # per node: [h | f*c towards its parent]
        c = leaf.new_empty(N, H)
        k = _Factors(P, leaf.new_empty(N, H), leaf.new_empty(N, H)) if train else None
        F = leaf.new_empty(N, H)  # forget gate of the edge node -> parent
        KF = leaf.new_empty(N, H)  # its d(f c)/d(pre-activation) = c f (1 - f)
        tc = leaf.new_empty(_widest(bounds), H)
        for lv in range(L):
            s, e = bounds[lv], bounds[lv + 1]
            a = P[s:e]
            if lv:
                a.addmm_(S[0, s:e], U_main_t)
            _activate(a, H)
            fc = S[1, s:e] if lv else None
            _cell_forward(a, fc, c[s:e], Z[0, s:e], k and k.rows(s, e), tc[: e - s])
            # Every level pushes, the top one too (its roots into the dummy row): the loop makes
            # no assumption on what a level holds (benchmarks.batching's oracle cuts the levels).
            f = torch.addmm(xf if pidx is None else xf[s:e], Z[0, s:e], U_f_t, out=F[s:e])
            fc = torch.mul(f.sigmoid_(), c[s:e], out=Z[1, s:e])
            if train:
                torch.addcmul(fc, fc, f, value=-1, out=KF[s:e])
            S.index_add_(1, parent[s:e], Z[:, s:e])
        if train:
            ctx.save_for_backward(U, parent, pidx, *k, F, KF, Z, S)
        ctx.meta = (bounds, n_main, None if inner is None else inner.shape[1])
        return Z[0], c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, pidx, kx, ku, kc, F, KF, Z, S = ctx.saved_tensors
        k = _Factors(kx, ku, kc)
        bounds, n_main, inner_width = ctx.meta
        h = Z[0]
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        dh_out = _grad_or_zeros(dh_out, h)
        dc_out = _grad_or_zeros(dc_out, h)
        U_main, U_f = U[:nm], U[nm:]
        # G: per node, what its children need: [d c total | d (sum of the children's h)].
        G = h.new_empty(2, N + 1, H)
        G[:, N] = 0  # the dummy parent of the roots
        DA = h.new_empty(N, nm)  # d pre-activations [i, (o), u]
        DF = h.new_empty(N, H)  # d forget pre-activation of each edge (roots: 0)
        w = _widest(bounds)
        g_buf = h.new_empty(2 * w * H)  # scratch for one level's gathered parent rows
        dc = h.new_empty(w, H)
        dh = h.new_empty(w, H)
        for lv in reversed(range(L)):
            s, e = bounds[lv], bounds[lv + 1]
            n = e - s
            g = torch.index_select(G, 1, parent[s:e], out=g_buf[: 2 * n * H].view(2, n, H))
            dc_l = torch.addcmul(dc_out[s:e], g[0], F[s:e], out=dc[:n])
            torch.mul(g[0], KF[s:e], out=DF[s:e])
            dh_l = torch.add(dh_out[s:e], g[1], out=dh[:n]).addmm_(DF[s:e], U_f)
            _gates_backward(k.rows(s, e), dh_l, dc_l, DA[s:e], G[0, s:e])
            if lv:
                torch.mm(DA[s:e], U_main, out=G[1, s:e])
        d_U, d_inner = child_sum_weight_grads(DA[n0:], DF, S[0, n0:N], h, nm, inner_width, pidx)
        return DA[:n0], d_inner, DA.sum(0), DF.sum(0), d_U, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# N-ary
# --------------------------------------------------------------------------------------------
class NaryLevels(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts`), U [(m+K)H, K*H], slots [(N-n0)*K] (the K child
    slots of each internal node, N = none) -> h, c [N, H].

    Forward, per level: gather the K ordered child states, one addmm for every gate.
    Backward, per level from the top: gate gradients, one matmul through U, and index_add_ of
    the children's h and c gradients into one buffer each.
    """

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, slots, bounds, n_main, og, K, train):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        KH = U.shape[1]
        H = KH // K
        nm = n_main * H
        hb = leaf.new_empty(N + 1, H)
        cb = leaf.new_empty(N + 1, H)
        hb[N] = 0
        cb[N] = 0
        ku = leaf.new_empty(N, H)
        kc = leaf.new_empty(N, H)
        tc = leaf.new_empty(_widest(bounds), H)
        # Leaves: activations of their own input, no children.
        act0 = torch.add(leaf, b_main)
        _activate(act0, H)
        k0 = _Factors(act0, ku[:n0], kc[:n0]) if train else None
        _cell_forward(act0, None, cb[:n0], hb[:n0], k0, tc[:n0])
        # Internal nodes: A holds [i, (o), u, f_1..f_K], activated in place, then the factors.
        A = leaf.new_empty(M, nm + KH)
        b_all = torch.cat([b_main, b_f])
        if inner is not None:
            A[:, :nm] = inner[:, :nm]
            A[:, nm:] = inner[:, nm:].repeat(1, K) if inner.shape[1] > nm else 0
            A.add_(b_all)
        k = _Factors(A[:, :nm], ku[n0:], kc[n0:]) if train else None
        hcat = leaf.new_empty(M, KH)  # children's h, concatenated per node
        cc = leaf.new_empty(_widest(bounds) * KH)  # scratch: one level's children's c
        KF = leaf.new_empty(M, K, H)  # c_k f_k (1 - f_k): d(f_k c_k) / d(f_k pre-activation)
        fc = leaf.new_empty(M, H)  # sum_k f_k c_k
        Ut = U.t()
        for lv in range(1, L):
            s, e = bounds[lv], bounds[lv + 1]
            r, q = s - n0, e - n0
            ch = slots[r * K : q * K]
            torch.index_select(hb, 0, ch, out=hcat[r:q].view(-1, H))
            cc_l = torch.index_select(cb, 0, ch, out=cc[: (q - r) * KH].view(-1, H))
            a = A[r:q]
            if inner is None:
                torch.addmm(b_all, hcat[r:q], Ut, out=a)
            else:
                a.addmm_(hcat[r:q], Ut)
            _activate(a[:, :nm], H)
            f = a[:, nm:].sigmoid_().view(-1, K, H)
            fck = torch.mul(f, cc_l.view(-1, K, H), out=KF[r:q])
            torch.sum(fck, 1, out=fc[r:q])
            if train:
                fck.addcmul_(fck, f, value=-1)  # -> c f (1 - f)
            _cell_forward(a[:, :nm], fc[r:q], cb[s:e], hb[s:e], k and k.rows(r, q), tc[: e - s])
        if train:
            ctx.save_for_backward(U, slots, act0, A, ku, kc, KF, hcat)
        ctx.meta = (bounds, n_main, inner is not None and inner.shape[1], K)
        return hb[:N], cb[:N]

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, slots, act0, A, ku, kc, KF, hcat = ctx.saved_tensors
        bounds, n_main, inner_width, K = ctx.meta
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        M = N - n0
        H = ku.shape[1]
        nm = n_main * H
        d_h = ku.new_empty(N + 1, H)  # every node's h gradient, children's parts added in
        d_c = ku.new_empty(N + 1, H)
        d_h[:N] = _grad_or_zeros(dh_out, ku)
        d_c[:N] = _grad_or_zeros(dc_out, ku)
        DA = ku.new_empty(M, nm + K * H)  # d pre-activations [i, (o), u, f_1..f_K]
        DA0 = ku.new_empty(n0, nm)
        w = _widest(bounds)
        dct = ku.new_empty(w, H)
        dcf = ku.new_empty(w * K * H)  # scratch: one level's children's c gradients
        F = A[:, nm:].view(M, K, H)
        k = _Factors(A[:, :nm], ku[n0:], kc[n0:])
        for lv in reversed(range(1, L)):
            s, e = bounds[lv], bounds[lv + 1]
            r, q = s - n0, e - n0
            n = e - s
            _gates_backward(k.rows(r, q), d_h[s:e], d_c[s:e], DA[r:q, :nm], dct[:n])
            dcf_l = torch.mul(dct[:n, None], F[r:q], out=dcf[: n * K * H].view(n, K, H))
            torch.mul(dct[:n, None], KF[r:q], out=DA[r:q, nm:].view(n, K, H))
            ch = slots[r * K : q * K]
            d_h.index_add_(0, ch, torch.mm(DA[r:q], U).view(-1, H))
            d_c.index_add_(0, ch, dcf_l.view(-1, H))
        k0 = _Factors(act0, ku[:n0], kc[:n0])
        _gates_backward(k0, d_h[:n0], d_c[:n0], DA0, dct[:n0])
        d_U = DA.t() @ hcat
        d_inner = None
        if inner_width:
            d_inner = DA[:, :nm]
            if inner_width > nm:
                d_f = DA[:, nm:].view(M, K, H).sum(1)
                d_inner = torch.cat([d_inner, d_f], dim=1)
        d_b_main = DA0.sum(0) + DA[:, :nm].sum(0)
        return DA0, d_inner, d_b_main, DA[:, nm:].sum(0), d_U, None, None, None, None, None, None
