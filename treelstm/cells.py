"""Tree-LSTM cells: one batched step each (Tai, Socher & Manning 2015, ACL, "Improved Semantic
Representations From Tree-Structured Long Short-Term Memory Networks").

A cell maps the input of M nodes and the states of their children to the nodes' own states.
The protocol every cell follows, the library's and a user's alike (docs/cells.md):

    cell(x, child_h, child_c, child_mask) -> (h, c)   or   -> h
    x [M, input_size]; child_h, child_c [M, K, hidden_size]; child_mask [M, K] bool
    h, c [M, hidden_size]

    attributes  input_size, hidden_size (positive ints); optional n_ary (int: the cell takes
                exactly n_ary ordered child slots; without it K is the schedule's widest node)
    slots       child k of a node is in slot k, in the tree's order; slots past a node's last
                child are masked out (False) and hold zeros. K is the same for every node of a
                call and for every strategy: n_ary, else the batch's largest fan-out (0 when
                every node is a leaf). A top-down pass gives K = 1: the node's parent
                (masked out at the roots).
    h only      a cell that returns h alone gets zeros as child_c, and `run` returns c = None

A cell never sees a tree or a schedule: the executor decides which nodes go through one call.
`check_cell` says what a cell lacks.

Child-Sum (eqs. 2-8): h~ = sum_k h_k; i, o, u from W x + U h~ + b; one forget gate per child,
f_k = sigmoid(W_f x + U_f h_k + b_f); c = i*u + sum_k f_k*c_k; h = o*tanh(c).
N-ary (eqs. 9-14): every gate sees child l through its own U_l; forget gate f_k has its own
U_kl for every child l (N^2 matrices); child order matters, a missing child is a zero state.

Switches for the reference code's variants (and one known peer variant):
  input_at="leaves"  the word vector enters at leaves only (the reference binary cell);
  output_gate=False  h = tanh(c) (the reference relatedness models);
  forget_input=False forget gates without W_f x (a bug found in some reimplementations);
  double_bias=True   two bias vectors per gate, one with W and one with U (Torch nn.Linear
                     pairs in the reference code; same function, different parameters/decay).

Internally each cell splits its step into the x half (`project` for the generic step;
`input_parts` for the fused level kernel, W x on the rows where input enters only) and a
recurrence on U. A cell class names the fused kernels that run its whole level loop in
`level_kernel` (bottom-up) and `down_kernel` (top-down) (`treelstm.kernels`); the generic paths
call the cell. The declaration is the class's own: a subclass that redefines a method the
kernel stands in for (``forward``, ``project``, ``input_parts``, ...) runs on the generic path
unless it declares the kernel again itself (`treelstm.executor.fused_kernel` has the rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import ChildSumKernel, InputParts, NaryKernel, TopDownKernel

__all__ = ["ChildSumCell", "NaryCell", "TreeCell", "check_cell"]

_PROTOCOL = (
    "a cell needs input_size and hidden_size (positive ints) and is called as "
    "cell(x, child_h, child_c, child_mask) -> h or (h, c), see docs/cells.md"
)


def check_cell(cell) -> None:
    """Raise TypeError or ValueError, one line naming what `cell` lacks of the protocol (the
    module docstring): callable, ``input_size`` and ``hidden_size`` positive ints, ``n_ary``
    (if present and not None) a positive int."""
    name = type(cell).__name__
    if not callable(cell):
        raise TypeError(f"{name} is not callable: {_PROTOCOL}")
    for attr in ("input_size", "hidden_size"):
        v = getattr(cell, attr, None)
        if v is None:
            raise TypeError(f"{name} has no attribute {attr!r} (set self.{attr} in __init__): "
                            f"{_PROTOCOL}")  # fmt: skip
        if type(v) is not int or v <= 0:
            raise ValueError(f"{name}.{attr} is {v!r}, not a positive int: {_PROTOCOL}")
    n = getattr(cell, "n_ary", None)
    if n is not None and (type(n) is not int or n <= 0):
        raise ValueError(
            f"{name}.n_ary is {n!r}: n_ary is the number of ordered child slots the cell takes "
            "(a positive int), or None / absent for any number of children"
        )


class TreeCell(nn.Module):
    """Shared parameterisation of the two cells.

    Gate layout of the pre-activations, each block `hidden_size` wide:
    ``[i, o, u, f]`` for Child-Sum and ``[i, o, u, f_1..f_N]`` for N-ary (``o`` omitted when
    ``output_gate=False``). `W` produces ``[i, o, u, f]`` from x (``f`` omitted when
    ``forget_input=False``; N-ary forget gates share ``W_f`` and ``b_f`` as in eq. 10).
    """

    kind = "abstract"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        n_u_gates: int,
        u_in: int,
        *,
        input_at: str = "all",
        output_gate: bool = True,
        forget_input: bool = True,
        double_bias: bool = False,
    ) -> None:
        super().__init__()
        if input_at not in ("all", "leaves"):
            raise ValueError(f"input_at must be 'all' or 'leaves', got {input_at!r}")
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.input_at = input_at
        self.output_gate = output_gate
        self.forget_input = forget_input
        self.double_bias = double_bias
        H = hidden_size
        self.n_main = 3 if output_gate else 2  # i, (o), u
        n_x = self.n_main + (1 if forget_input else 0)
        # W: input -> gates that see x.  One bias per gate (b in the paper) lives here.
        self.W = nn.Linear(input_size, n_x * H, bias=True)
        if not forget_input:
            self.b_f = nn.Parameter(torch.zeros(H))
        # U: child state(s) -> gates; second bias vector only in the reference-code variant.
        self.U = nn.Linear(u_in, n_u_gates * H, bias=double_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Uniform(-1/sqrt(H), 1/sqrt(H)) for every weight, as torch.nn.LSTMCell does.
        bound = self.hidden_size**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    # -- the x half of the step ------------------------------------------------------------
    def project(self, x: Tensor, is_leaf: Tensor | None = None) -> Tensor:
        """Everything of the pre-activations that does not depend on children, for M nodes.

        x [M, input_size] -> [M, n_gates*H] in the layout U produces (``[i, o, u, f]`` for
        Child-Sum, ``[i, o, u, f_1..f_N]`` for N-ary): W x plus every bias (the second bias of
        ``double_bias`` included, so the recurrence needs U's weight only). With
        ``input_at="leaves"`` rows where ``is_leaf`` is False get the biases only.
        """
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape [M, {self.input_size}], got {tuple(x.shape)}")
        xw = self.W(x)
        if not self.forget_input:
            xw = torch.cat([xw, self.b_f.expand(xw.shape[0], -1)], dim=1)
        if self.input_at == "leaves":
            if is_leaf is None:
                raise ValueError("input_at='leaves' needs is_leaf to know which rows are leaves")
            b = self.W.bias if self.forget_input else torch.cat([self.W.bias, self.b_f])
            xw = torch.where(is_leaf[:, None], xw, b)
        xw = self._expand_forget(xw)
        if self.U.bias is not None:
            xw = xw + self.U.bias
        return xw

    def _expand_forget(self, xw: Tensor) -> Tensor:
        return xw

    #: forget gates per node that share W_f x and b_f (1 Child-Sum; N for N-ary, eq. 10)
    forget_slots = 1

    def input_parts(self, x: Tensor, num_leaves: int) -> InputParts:
        """The x half of every node's pre-activations, W x on input rows only, for the kernel.

        x [N, input_size] in schedule order (leaves are rows 0..num_leaves). The leaves get
        W_iou x (a leaf has no children, so its forget-gate input is never used); the internal
        nodes get W x only with ``input_at="all"``. Biases come separately (see `InputParts`),
        so every gradient -- W, x, both biases -- is autograd's.
        """
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape [M, {self.input_size}], got {tuple(x.shape)}")
        nm = self.n_main * self.hidden_size
        W, b = self.W.weight, self.W.bias
        leaf = F.linear(x[:num_leaves], W[:nm])
        inner = F.linear(x[num_leaves:], W) if self.input_at == "all" else None
        b_f = b[nm:] if self.forget_input else self.b_f
        if self.forget_slots > 1:
            b_f = b_f.repeat(self.forget_slots)
        b_main = b[:nm]
        if self.U.bias is not None:
            b_main = b_main + self.U.bias[:nm]
            b_f = b_f + self.U.bias[nm:]
        return InputParts(leaf, inner, b_main, b_f)

    # -- checks shared by the step ---------------------------------------------------------
    def _check_step(self, x: Tensor, child_h: Tensor, child_c: Tensor, child_mask: Tensor):
        M = x.shape[0]
        H = self.hidden_size
        if child_h.dim() != 3 or child_h.shape[0] != M or child_h.shape[2] != H:
            raise ValueError(f"child_h must be [M={M}, K, {H}], got {tuple(child_h.shape)}")
        if child_c.shape != child_h.shape:
            raise ValueError(
                f"child_c {tuple(child_c.shape)} must match child_h {tuple(child_h.shape)}"
            )
        if child_mask.shape != child_h.shape[:2]:
            raise ValueError(
                f"child_mask must be [M, K]={tuple(child_h.shape[:2])}, "
                f"got {tuple(child_mask.shape)}"
            )

    def _finish(self, a_main: Tensor, fc: Tensor) -> tuple[Tensor, Tensor]:
        """From pre-activations [i, (o), u] and sum_k f_k*c_k to (h, c)."""
        H = self.hidden_size
        i = torch.sigmoid(a_main[:, :H])
        u = torch.tanh(a_main[:, -H:])
        c = i * u + fc
        if self.output_gate:
            o = torch.sigmoid(a_main[:, H : 2 * H])
            return o * torch.tanh(c), c
        return torch.tanh(c), c

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, input_at={self.input_at!r}, "
            f"output_gate={self.output_gate}, forget_input={self.forget_input}, "
            f"double_bias={self.double_bias}"
        )


class ChildSumCell(TreeCell):
    """Child-Sum Tree-LSTM step (Tai et al. 2015, eqs. 2-8); any number of unordered children.

    Parameters: ``W`` [(n_main+1)*H, input] (+ bias), ``U`` [(n_main+1)*H, H] holding
    ``[U_i; U_o; U_u; U_f]`` (the last block applied to each child separately).
    """

    kind = "childsum"
    level_kernel = ChildSumKernel
    down_kernel = TopDownKernel  # one child slot: the parent

    def __init__(self, input_size: int, hidden_size: int, **switches) -> None:
        n_main = 3 if switches.get("output_gate", True) else 2
        super().__init__(input_size, hidden_size, n_main + 1, hidden_size, **switches)

    def forward(
        self, x: Tensor, child_h: Tensor, child_c: Tensor, child_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step for M nodes. x [M, in]; child_h, child_c [M, K, H]; child_mask [M, K].

        Returns h, c [M, H]. Masked-out children contribute nothing (K may be 0).
        """
        self._check_step(x, child_h, child_c, child_mask)
        H = self.hidden_size
        is_leaf = ~child_mask.any(dim=1)
        xw = self.project(x, is_leaf)
        m = child_mask.to(child_h.dtype).unsqueeze(-1)
        h_sum = (child_h * m).sum(dim=1)
        Uw = self.U.weight  # U's bias (double_bias) is already in xw
        nm = self.n_main * H
        a_main = xw[:, :nm] + h_sum @ Uw[:nm].t()
        f = torch.sigmoid(xw[:, None, nm:] + child_h @ Uw[nm:].t())
        fc = (f * child_c * m).sum(dim=1)
        return self._finish(a_main, fc)


class NaryCell(TreeCell):
    """N-ary Tree-LSTM step (Tai et al. 2015, eqs. 9-14); exactly N ordered child slots.

    Parameters: ``W`` [(n_main+1)*H, input] (+ bias; the forget block is shared by all N
    forget gates), ``U`` [(n_main+N)*H, N*H]: block row g, block column l is U_l for gate g,
    the rows of f_k hold U_k1..U_kN.  A missing child (mask False) is a zero state.
    """

    kind = "nary"
    level_kernel = NaryKernel
    down_kernel = TopDownKernel  # with n_ary=1 (its one slot: the parent)

    def __init__(self, input_size: int, hidden_size: int, n_ary: int = 2, **switches) -> None:
        if n_ary < 1:
            raise ValueError(f"n_ary must be >= 1, got {n_ary}")
        self.n_ary = n_ary
        self.forget_slots = n_ary
        n_main = 3 if switches.get("output_gate", True) else 2
        super().__init__(input_size, hidden_size, n_main + n_ary, n_ary * hidden_size, **switches)

    def forward(
        self, x: Tensor, child_h: Tensor, child_c: Tensor, child_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step for M nodes. x [M, in]; child_h, child_c [M, N, H] (slot k = k-th child);
        child_mask [M, N]. Returns h, c [M, H]."""
        self._check_step(x, child_h, child_c, child_mask)
        M, K, H = child_h.shape
        if K != self.n_ary:
            raise ValueError(
                f"NaryCell(n_ary={self.n_ary}) needs K={self.n_ary} child slots, got {K}"
            )
        is_leaf = ~child_mask.any(dim=1)
        xw = self.project(x, is_leaf)
        m = child_mask.to(child_h.dtype).unsqueeze(-1)
        hcat = (child_h * m).reshape(M, K * H)
        a = xw + hcat @ self.U.weight.t()  # U's bias (double_bias) is already in xw
        nm = self.n_main * H
        f = torch.sigmoid(a[:, nm:]).view(M, K, H)
        fc = (f * child_c * m).sum(dim=1)
        return self._finish(a[:, :nm], fc)

    def _expand_forget(self, xw: Tensor) -> Tensor:
        """[M, (n_main+1)*H] -> [M, (n_main+N)*H]: the shared W_f x + b_f for every child."""
        nm = self.n_main * self.hidden_size
        return torch.cat([xw[:, :nm], xw[:, nm:].repeat(1, self.n_ary)], dim=1)
