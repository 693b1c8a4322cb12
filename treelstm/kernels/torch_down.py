"""The fused top-down loop in PyTorch ops: a Child-Sum cell with its one child slot holding the
node's parent (the same function as `NaryCell(n_ary=1)`), from the roots to the leaves, one
step per depth, as one autograd node with a hand-written backward (`treelstm.kernels` says
why; the gate math is `torch_levels`').

Rows are depth-major (`Schedule.down_layout`): the roots of every tree first (the rows without
a parent: "leaves" of `InputParts`), then depth 1, ... Per depth d >= 1 the parents are all on
depth d - 1, so one gather of their h and one addmm through U give every gate of the depth.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .torch_levels import (
    _activate,
    _cell_forward,
    _Factors,
    _gates_backward,
    _grad_or_zeros,
    _widest,
)

__all__ = ["DownLevels"]


def _pre_activations(leaf, inner, b_main, b_f, n0: int, N: int, width: int) -> Tensor:
    """A [N, width]: every bias and W x where input enters; U h_parent is added per depth."""
    nm = b_main.shape[0]
    A = leaf.new_empty(N, width)
    torch.add(leaf, b_main, out=A[:n0, :nm])
    A[:n0, nm:] = 0  # the roots have no parent: their forget block is never used
    if inner is None:
        A[n0:, :nm] = b_main
        A[n0:, nm:] = b_f
    else:
        torch.add(inner[:, :nm], b_main, out=A[n0:, :nm])
        if inner.shape[1] > nm:
            torch.add(inner[:, nm:], b_f, out=A[n0:, nm:])
        else:
            A[n0:, nm:] = b_f
    return A


class DownLevels(torch.autograd.Function):
    """leaf, inner, b_main, b_f (`InputParts` of the depth-major rows; "leaves" = the roots),
    U [(m+1)H, H] ([U_iou; U_f]), parent [N] (positions, N for roots) -> h, c [N, H].

    Forward, per depth: gather the parents' h and c, one addmm for every gate, c = i*u + f*c_p,
    h = o*tanh(c). Backward, per depth from the deepest: gate gradients, then one matmul
    through U and two index_add_ push each node's share into its parent's h and c gradients
    (siblings add into one row), so a parent is finished when its depth comes.
    """

    @staticmethod
    def forward(ctx, leaf, inner, b_main, b_f, U, parent, bounds, n_main, train):
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        A = _pre_activations(leaf, inner, b_main, b_f, n0, N, U.shape[0])
        h = leaf.new_empty(N, H)
        c = leaf.new_empty(N, H)
        HP = leaf.new_empty(N, H)  # the parent's h of every row below the roots, for dU
        k = _Factors(A[:, :nm], leaf.new_empty(N, H), leaf.new_empty(N, H)) if train else None
        KF = leaf.new_empty(N, H)  # c_p f (1 - f): d(f c_p) / d(f pre-activation)
        fc = leaf.new_empty(N, H)
        tc = leaf.new_empty(_widest(bounds), H)
        Ut = U.t()
        for d in range(L):
            s, e = bounds[d], bounds[d + 1]
            a = A[s:e]
            if d == 0:
                _activate(a[:, :nm], H)
                _cell_forward(a[:, :nm], None, c[s:e], h[s:e], k and k.rows(s, e), tc[: e - s])
                continue
            p = parent[s:e]
            hp = torch.index_select(h, 0, p, out=HP[s:e])
            a.addmm_(hp, Ut)
            _activate(a[:, :nm], H)
            f = a[:, nm:].sigmoid_()
            cp = torch.index_select(c, 0, p, out=KF[s:e])
            torch.mul(f, cp, out=fc[s:e])
            if train:
                cp.mul_(f).addcmul_(cp, f, value=-1)  # c_p f - c_p f^2 = c_p f (1 - f)
            _cell_forward(a[:, :nm], fc[s:e], c[s:e], h[s:e], k and k.rows(s, e), tc[: e - s])
        if train:
            ctx.save_for_backward(U, parent, A, *k[1:], KF, HP)
        ctx.meta = (bounds, n_main, None if inner is None else inner.shape[1])
        return h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dc_out):
        U, parent, A, ku, kc, KF, HP = ctx.saved_tensors
        bounds, n_main, inner_width = ctx.meta
        N, n0, L = bounds[-1], bounds[1], len(bounds) - 1
        H = U.shape[1]
        nm = n_main * H
        k = _Factors(A[:, :nm], ku, kc)
        F = A[:, nm:]  # the forget gates (activated in place by the forward)
        d_h = torch.empty_like(ku).copy_(_grad_or_zeros(dh_out, ku))  # children add into it
        d_c = torch.empty_like(ku).copy_(_grad_or_zeros(dc_out, ku))
        DA = ku.new_empty(N, U.shape[0])  # d pre-activations [i, (o), u, f]
        DA[:n0, nm:] = 0  # the roots' forget block is not used
        dct = ku.new_empty(N, H)  # total gradient of c
        for d in reversed(range(L)):
            s, e = bounds[d], bounds[d + 1]
            _gates_backward(k.rows(s, e), d_h[s:e], d_c[s:e], DA[s:e, :nm], dct[s:e])
            if d == 0:
                break
            p = parent[s:e]
            torch.mul(dct[s:e], KF[s:e], out=DA[s:e, nm:])
            d_h.index_add_(0, p, torch.mm(DA[s:e], U))
            d_c.index_add_(0, p, dct[s:e] * F[s:e])
        d_U = DA[n0:].t() @ HP[n0:]
        d_inner = None
        if inner_width is not None:
            d_inner = DA[n0:] if inner_width > nm else DA[n0:, :nm]
        d_b_main = DA[:, :nm].sum(0)
        d_b_f = DA[n0:, nm:].sum(0)
        return DA[:n0, :nm], d_inner, d_b_main, d_b_f, d_U, None, None, None, None
