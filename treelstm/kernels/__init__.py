"""Fused level kernels: the whole bottom-up level loop of a Tree-LSTM cell (Tai, Socher &
Manning 2015) as one autograd node with a hand-written backward.

Why they exist: written with autograd, every level's write into a shared [N, H] state makes
autograd clone the buffer (CopySlices) and every gather allocate a zeroed [N, H] gradient,
O(levels x N x H) memory traffic. A kernel runs the loop without autograd, keeps what the
backward needs in flat [N, .] buffers allocated once per call (never per level), and walks the
levels in reverse with precomputed index vectors.

What the loop is given (`InputParts`, from the cell's `input_parts`, computed under autograd,
so the gradients of W, x and the biases are autograd's): W x on the rows where input enters
only -- the leaves' [i, (o), u] blocks, and the internal nodes' blocks only with
``input_at="all"`` (a leaf has no children, so its forget-gate input is never needed) -- plus
one bias vector for [i, (o), u] and one for the forget gates. Inside the loop the only matmuls
are those through U, each on the fewest rows the recurrence allows:

  Child-Sum  U_iou on the children's sum (one row per internal node), U_f on each child's h
             (one row per edge). Each level, when it finishes, pushes [h | f*c] of its nodes into
             its parents' rows (the forget gate of the edge child -> parent needs the parent's
             W_f x only, known before the loop), so wide nodes are never padded. Backward: each
             node pulls its parent's gradients.
  N-ary      one addmm per level gives every gate from the N ordered children's h.

The forward also turns each level's activations into the gates' local derivatives as it goes
(`torch_levels._Factors`), so the backward allocates no [N, .] temporaries of its own.

Two implementations compute the same function (both tested against the per-node evaluator,
values and every gradient, in float64): `torch_levels` (PyTorch ops; every device) and
`native_levels` (CPU, float32/float64: the whole level loop, forward and backward, as one
call each into C built on first use, see `build`; no per-level Python). `run` picks the
native one when it is available and the tensors are on the CPU; `set_native` overrides.

A top-down kernel (`TopDownKernel`: `torch_down`, and `native_levels.DownNative`) runs the same
gates from the roots to the leaves, one step per depth, each node's one child slot holding its
parent.

A kernel is a class with ``run(cell, schedule, x) -> (h, c)``; a cell class opts in by naming
it (`ChildSumCell.level_kernel` bottom-up, ``.down_kernel`` top-down) and the kernel reads the
cell's parameters through ``cell.input_parts``, ``cell.U.weight``, ``cell.n_main`` and
``cell.output_gate``. A kernel computes the cell's function without calling the cell, so it
lists the methods it stands in for (``stands_for``) and what it needs of an instance
(``why_not``): `treelstm.executor` runs it only where none of these was changed (the rule is
in docs/cells.md). The kernels read only tensors and the schedule's level bounds (Python
ints), never a value on the device, so the loop never waits for a GPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..schedule import Schedule
from . import build
from .native_levels import ChildSumNative, DownNative, NaryNative
from .torch_down import DownLevels
from .torch_levels import ChildSumLevels, NaryLevels

__all__ = [
    "ChildSumKernel",
    "InputParts",
    "NaryKernel",
    "TopDownKernel",
    "native_available",
    "set_native",
]


class InputParts(NamedTuple):
    """What a cell's input contributes to the pre-activations, on input rows only.

    leaf    [n0, m*H]   W_iou x of the leaves (rows 0..n0 of the schedule), no bias
    inner   [N-n0, m*H (+H)] or None   W x of the internal nodes (``input_at="all"``): the
            [i, (o), u] blocks, then the forget block when the cell has ``forget_input``
    b_main  [m*H]       every bias of [i, (o), u] (both vectors with ``double_bias``)
    b_f     [S*H]       every bias of the forget gates, per child slot (S = 1 Child-Sum, N N-ary)
    """

    leaf: Tensor
    inner: Tensor | None
    b_main: Tensor
    b_f: Tensor


_native_choice: bool | None = None  # None: automatic


def set_native(enabled: bool | None) -> bool | None:
    """Force the native kernels on (True: an error where they cannot run), off (False), or
    back to automatic (None). Returns the previous setting."""
    global _native_choice
    old, _native_choice = _native_choice, enabled
    return old


def native_available() -> bool:
    """Whether the native kernels are built and loaded (builds them on first call)."""
    return build.library() is not None


def _native_lib(x: Tensor):
    """The native library if this call should use it, else None."""
    if _native_choice is False:
        return None
    fits = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    lib = build.library() if fits else None
    if _native_choice and lib is None:
        why = "they are unavailable" if fits else f"x is {x.dtype} on {x.device}"
        raise RuntimeError(f"set_native(True), but the native kernels cannot run: {why}")
    return lib


def _wants_grad(parts: InputParts, U: Tensor) -> bool:
    """Whether the call will be differentiated (else the forward skips the gate factors)."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (*parts, U))


class _CellKernel:
    """What every kernel of the library's cells bypasses or reads (see the module docstring)."""

    #: The cell's methods whose work the kernel does itself (or calls, for input_parts, and
    #: would mix with the other's): a subclass that redefines one gets the generic path.
    stands_for = (
        "__call__",
        "forward",
        "project",
        "input_parts",
        "_finish",
        "_expand_forget",
        "_check_step",
    )

    @staticmethod
    def why_not(cell) -> str | None:
        """Why this instance cannot run on the kernel (None: it can). The kernel reads W and U
        as plain weights, so a replaced module or a hook on one would be skipped."""
        for name in ("W", "U"):
            m = getattr(cell, name, None)
            if type(m) is not torch.nn.Linear:
                return f"its {name} is a {type(m).__name__}, not a torch.nn.Linear"
            if m._forward_hooks or m._forward_pre_hooks:
                return f"its {name} has forward hooks (the kernel reads {name}.weight directly)"
        return None

    @staticmethod
    def platform(x: Tensor | None = None) -> str:
        """Which implementation a call with input like ``x`` runs (for `explain`)."""
        if x is None:
            return "native C on the CPU for float32/float64 when it builds, else PyTorch ops"
        return "native C" if _native_lib(x) is not None else "PyTorch ops"


class ChildSumKernel(_CellKernel):
    """The fused level loop of a Child-Sum cell (see the module docstring)."""

    @staticmethod
    def run(cell, schedule: Schedule, x: Tensor) -> tuple[Tensor, Tensor]:
        """h, c [N, H] of every node of `schedule`; x [N, input_size] in schedule order."""
        parts = cell.input_parts(x, schedule.num_leaves)
        N = schedule.num_nodes
        parent = torch.where(schedule.parent >= 0, schedule.parent, N)
        train = _wants_grad(parts, cell.U.weight)
        args = (cell.U.weight, parent, schedule.level_bounds, cell.n_main, cell.output_gate, train)
        lib = _native_lib(parts.leaf)
        if lib is not None:
            return ChildSumNative.apply(*parts, *args, lib)
        return ChildSumLevels.apply(*parts, *args)


class NaryKernel(_CellKernel):
    """The fused level loop of an N-ary cell (see the module docstring)."""

    @staticmethod
    def run(cell, schedule: Schedule, x: Tensor) -> tuple[Tensor, Tensor]:
        """h, c [N, H] of every node of `schedule`; x [N, input_size] in schedule order."""
        parts = cell.input_parts(x, schedule.num_leaves)
        N, K, n0 = schedule.num_nodes, cell.n_ary, schedule.num_leaves
        ch = schedule.children[n0:]
        if ch.shape[1] < K:  # a batch whose widest node has fewer than N children
            ch = torch.cat([ch, ch.new_full((ch.shape[0], K - ch.shape[1]), -1)], dim=1)
        slots = torch.where(ch >= 0, ch, N).reshape(-1)  # [M*K], N = no child
        train = _wants_grad(parts, cell.U.weight)
        args = (schedule.level_bounds, cell.n_main, cell.output_gate, K, train)
        lib = _native_lib(parts.leaf)
        if lib is None:
            return NaryLevels.apply(*parts, cell.U.weight, slots, *args)
        # pos: each node's row among its parent's child slots (roots: the dummy row M*K).
        MK = slots.shape[0]
        pos = slots.new_full((N + 1,), MK)
        pos.scatter_(0, slots, torch.arange(MK, device=slots.device))
        return NaryNative.apply(*parts, cell.U.weight, pos[:N], *args, lib)


class TopDownKernel(_CellKernel):
    """The fused top-down loop of a Child-Sum cell, or an N-ary cell with ``n_ary=1`` (the same
    gates for one child): each node's one child slot holds its parent (`torch_down`)."""

    @staticmethod
    def why_not(cell) -> str | None:
        if getattr(cell, "n_ary", 1) != 1:
            return f"n_ary={cell.n_ary}: a top-down step has one child slot (the parent)"
        return _CellKernel.why_not(cell)

    @staticmethod
    def run(cell, schedule: Schedule, x: Tensor) -> tuple[Tensor, Tensor]:
        """h, c [N, H] of every node of `schedule`, in schedule order; x [N, input_size] in
        schedule order."""
        lay = schedule.down_layout
        xd = x.index_select(0, lay.order)
        parts = cell.input_parts(xd, lay.bounds[1])  # the roots take the place of leaves
        train = _wants_grad(parts, cell.U.weight)
        lib = _native_lib(parts.leaf)
        if lib is None:
            args = (cell.U.weight, lay.parent, lay.bounds, cell.n_main, train)
            h, c = DownLevels.apply(*parts, *args)
        else:
            args = (cell.U.weight, lay.parent, lay.bounds, cell.n_main, cell.output_gate)
            h, c = DownNative.apply(*parts, *args, train, lib)
        return h.index_select(0, lay.pos), c.index_select(0, lay.pos)
