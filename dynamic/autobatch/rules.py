"""Batching rules: how B recorded calls of one signature become one call.

Every rule answers two questions:

``plan(fn, spec, metas)`` at record time, from the per-example shapes only: can calls like
this one be batched, in which layout (`FLAT`: examples' leading dimensions concatenated, so
ragged row counts batch together; `STACK`: a new batch dimension, identical shapes), and what
goes into the signature. ``None`` means "run this call alone, now".

``run(fn, spec, batch, mode)`` at flush time: gather each argument once, make ONE call, return
its output tensors and their layout; the engine hands each example its rows.

The rules exist because a batched call must compute exactly what the per-example calls would:
an elementwise op broadcasts per example, so ranks are aligned; a reduction over "everything"
must not reduce across examples, so it becomes a per-example segment sum; a function with a
`dim` argument sees that dim shifted by one in the STACK layout. Functions without a rule are
batched with `torch.vmap` (per-example semantics by construction) and, if vmap refuses, run one
by one; both are counted in the profile. A fast path never replaces a call silently: batched
outputs are checked for the expected number of rows.
"""

from __future__ import annotations

import operator
from math import prod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gather import FLAT, STACK, gather, index_tensor
from .spec import LEAF, constant, flatten_out, rebuild
from .values import Lazy

__all__ = [
    "ELEMENTWISE",
    "FLAT",
    "STACK",
    "VMAP",
    "Rule",
    "function_rule",
    "module_rule",
    "segment_sum",
]

VMAP = "vmap"


def flat_rows(metas, core: int = 0):
    """Row count shared by every argument if all have more than `core` dims, else None."""
    rows = None
    for m in metas:
        s = m.shape
        if len(s) <= core:
            return None
        if rows is None:
            rows = s[0]
        elif s[0] != rows:
            return None
    return rows


def _keys(metas, mode):
    if mode == FLAT:
        return tuple([m.tail for m in metas])
    return tuple(metas)


def counts(batch):
    """How many examples each call of a batch stands for (None: one each, the common case)."""
    for node in batch:
        if node.count != 1:
            return [n.count for n in batch]
    return None


def column(batch, p: int, layout: str):
    """Argument position p of every call, gathered (a lane group's call counts G times)."""
    return gather([node.leaves[p] for node in batch], layout, counts(batch))


def example_rows(batch) -> list:
    """Per-example row counts of a FLAT batch, in batch order."""
    out = []
    for node in batch:
        out.extend([node.site.rows] * node.count)
    return out


def _columns(batch, layout, skip=()):
    """Each argument position gathered over the batch (positions in `skip`: batch[0]'s)."""
    n = len(batch[0].leaves)
    cols = []
    for p in range(n):
        if p in skip:
            cols.append(batch[0].leaves[p])
        else:
            cols.append(column(batch, p, layout))
    return cols


def _call(fn, spec, cols):
    args, kwargs = rebuild(spec, cols)
    return fn(*args, **kwargs)


def _result(out, layout):
    leaves, ospec = flatten_out(out)
    return leaves, ospec, [layout] * len(leaves)


def segment_sum(x: Tensor, rows: list[int]) -> Tensor:
    """[sum(rows), *tail] -> [len(rows)]: each example's rows and trailing dims summed
    (booleans and integers summed as int64, as torch.sum does)."""
    if not x.is_floating_point() and not x.is_complex():
        x = x.long()
    if x.dim() > 1:
        x = x.sum(dim=tuple(range(1, x.dim())))
    B = len(rows)
    r0 = rows[0]
    if rows.count(r0) == B:
        if r0 == 1:
            return x  # one row each: the sum of one element is the element (no op)
        return x.view(B, r0).sum(1)
    seg = index_tensor([i for i, r in enumerate(rows) for _ in range(r)], x.device)
    return x.new_zeros(B).index_add(0, seg, x)


class Rule:
    """Base: a rule that cannot batch anything. ``shared``: leaf positions that must be the
    same tensor in every call of a batch (they enter the signature by identity)."""

    name = "alone"
    shared: tuple = ()

    def plan(self, fn, spec, leaves, metas):
        return None

    def run(self, fn, spec, batch, mode):
        raise NotImplementedError


class Vmap(Rule):
    """Any function: STACK layout and torch.vmap (per-example semantics by construction)."""

    name = "vmap"

    def plan(self, fn, spec, leaves, metas):
        return VMAP, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        cols, dims = [], []
        for p in range(len(batch[0].leaves)):
            vals = [node.leaves[p] for node in batch]
            v0 = vals[0]
            if type(v0) is not Lazy and all(v is v0 for v in vals):
                cols.append(v0)
                dims.append(None)
            else:
                cols.append(gather(vals, STACK, counts(batch)))
                dims.append(0)

        def one(*leaves):
            return _call(fn, spec, leaves)

        out = torch.vmap(one, in_dims=tuple(dims), randomness="error")(*cols)
        return _result(out, STACK)


class Elementwise(Rule):
    """Broadcasting elementwise ops. FLAT when every tensor argument has the same rank and
    row count; otherwise STACK with ranks aligned after the batch dimension."""

    name = "elementwise"

    def plan(self, fn, spec, leaves, metas):
        r0 = len(metas[0].shape)
        if r0 >= 1:
            rows = metas[0].shape[0]
            if all(len(m.shape) == r0 and m.shape[0] == rows for m in metas):
                return FLAT, rows, _keys(metas, FLAT), None
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        metas = batch[0].site.metas
        R = max(len(m.shape) for m in metas)
        cols = []
        for p, m in enumerate(metas):
            vals = [node.leaves[p] for node in batch]
            v0 = vals[0]
            shared = type(v0) is not Lazy and all(v is v0 for v in vals)
            if shared and (mode == STACK or v0.shape[0] == 1):
                cols.append(v0)  # broadcasts like the per-example call
                continue
            g = gather(vals, mode, counts(batch))
            if mode == STACK and len(m.shape) < R:
                g = g.view(g.shape[0], *([1] * (R - len(m.shape))), *g.shape[1:])
            cols.append(g)
        return _result(_call(fn, spec, cols), mode)


class Lead(Rule):
    """Functions of the last `core` dims that treat every leading dim as a batch dim
    (Linear, Embedding, LayerNorm, activations...). `shared` leaf positions (weights) must be
    the same tensor in every call: they are part of the signature by identity."""

    name = "lead"

    def __init__(self, core: int = 1, shared: tuple = (), max_rank: int | None = None):
        self.core = core
        self.shared = shared
        self.max_rank = max_rank

    def plan(self, fn, spec, leaves, metas):
        if any(type(leaves[i]) is Lazy for i in self.shared if i < len(leaves)):
            return VMAP, None, tuple(metas), None  # per-example weights
        data = [m for i, m in enumerate(metas) if i not in self.shared]
        if self.max_rank is not None and any(len(m.shape) > self.max_rank for m in data):
            return None
        rows = flat_rows(data, self.core)
        mode = FLAT if rows is not None else STACK
        # Shared weights are in the signature by identity (a tensor hashes by id).
        keys = tuple(
            [
                leaves[i] if i in self.shared else (m.tail if mode == FLAT else m)
                for i, m in enumerate(metas)
            ]
        )
        return mode, rows, keys, None

    def run(self, fn, spec, batch, mode):
        cols = _columns(batch, mode, skip=self.shared)
        return _result(_call(fn, spec, cols), mode)


class Rows(Rule):
    """Modules whose every tensor argument has the batch as dim 0 (the library's cells and
    user modules declared row-wise): FLAT only."""

    name = "rows"

    def plan(self, fn, spec, leaves, metas):
        rows = flat_rows(metas, 0)
        if rows is None:
            return None
        return FLAT, rows, _keys(metas, FLAT), None

    def run(self, fn, spec, batch, mode):
        return _result(_call(fn, spec, _columns(batch, FLAT)), FLAT)


class Matmul(Lead):
    """``a @ W`` with a per-example `a` and one shared 1-D or 2-D `W` (else vmap)."""

    name = "matmul"

    def __init__(self):
        super().__init__(core=1, shared=(1,))

    def plan(self, fn, spec, leaves, metas):
        if len(metas) != 2 or len(metas[1].shape) not in (1, 2) or spec[0][:2] != (LEAF, LEAF):
            return VMAP, None, tuple(metas), None
        return super().plan(fn, spec, leaves, metas)


def _arg(spec, pos: int, name: str, default):
    """A constant argument of a call by position or keyword (LEAF if it is a tensor)."""
    a, kw = spec
    if pos < len(a):
        return a[pos]
    if kw is not None:
        for k, v in kw:
            if k == name:
                return v
    return default


def _set_arg(spec, pos: int, name: str, value):
    a, kw = spec
    if pos < len(a):
        return (a[:pos] + (value,) + a[pos + 1 :], kw)
    kw = tuple([(k, v) for k, v in (kw or ()) if k != name]) + ((name, value),)
    return (a, kw)


def _norm_dims(d, rank: int):
    """int or sequence of ints -> tuple of non-negative dims, or None if out of range."""
    ds = (d,) if isinstance(d, int) else d
    if not isinstance(ds, tuple) or not all(isinstance(x, int) for x in ds):
        return None
    out = []
    for x in ds:
        n = x + rank if x < 0 else x
        if not 0 <= n < max(rank, 1):
            return None
        out.append(n)
    return tuple(out)


def _value(s):
    """A constant argument's value (lists as tuples); LEAF (a tensor) stays LEAF."""
    if s is LEAF:
        return s
    try:
        v = constant(s)
    except ValueError:
        return LEAF
    return tuple(v) if isinstance(v, list) else v


class DimOp(Rule):
    """Functions with dim arguments. FLAT keeps the per-example dims when none of them is
    dim 0; STACK shifts every dim by one. ``dims``: (position, keyword, default) of each dim
    argument; ``extra``: 1 when the dim indexes the output (unsqueeze)."""

    name = "dim"

    def __init__(self, *dims, extra: int = 0, required: bool = True):
        self.dims = dims
        self.extra = extra
        self.required = required

    def _normalized(self, spec, metas):
        rank = len(metas[0].shape) + self.extra
        out = []
        for pos, name, default in self.dims:
            d = _value(_arg(spec, pos, name, default))
            if d is None and not self.required:
                continue
            n = _norm_dims(d, rank)
            if n is None:
                return None
            out.append(n)
        return out

    def plan(self, fn, spec, leaves, metas):
        if spec[0][:1] != (LEAF,) or not metas[0].shape:
            return VMAP, None, tuple(metas), None
        dims = self._normalized(spec, metas)
        if dims is None or (self.required and len(dims) != len(self.dims)):
            return VMAP, None, tuple(metas), None
        rows = flat_rows(metas, 0)
        if rows is not None and all(0 not in d for d in dims) and len(metas[0].shape) >= 1:
            return FLAT, rows, _keys(metas, FLAT), None
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        if mode == STACK:
            dims = self._normalized(spec, batch[0].site.metas)
            i = 0
            for pos, name, default in self.dims:
                d = _value(_arg(spec, pos, name, default))
                if d is None:
                    continue
                shifted = dims[i]
                i += 1
                new = shifted[0] + 1 if isinstance(d, int) else tuple(x + 1 for x in shifted)
                spec = _set_arg(spec, pos, name, new)
        return _result(_call(fn, spec, _columns(batch, mode)), mode)


class Squeeze(DimOp):
    """squeeze(): with no dim, the per-example size-1 dims (never the batch dim)."""

    def __init__(self):
        super().__init__((1, "dim", None), required=False)

    def plan(self, fn, spec, leaves, metas):
        if _arg(spec, 1, "dim", None) is None:
            return STACK, None, tuple(metas), None
        return super().plan(fn, spec, leaves, metas)

    def run(self, fn, spec, batch, mode):
        if _arg(spec, 1, "dim", None) is None:
            ones = tuple(i + 1 for i, s in enumerate(batch[0].site.metas[0].shape) if s == 1)
            g = column(batch, 0, STACK)
            return _result(g.squeeze(ones) if ones else g, STACK)
        return super().run(fn, spec, batch, mode)


class Reshape(Rule):
    """view / reshape / expand with a size list: STACK, the batch size prepended."""

    name = "reshape"

    def plan(self, fn, spec, leaves, metas):
        if len(metas) != 1 or spec[0][:1] != (LEAF,) or spec[1] is not None:
            return VMAP, None, tuple(metas), None
        if _sizes(spec) is None:
            return VMAP, None, tuple(metas), None
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        sizes = _sizes(spec)
        g = column(batch, 0, STACK)
        extra = len(sizes) - (g.dim() - 1)
        if extra > 0:  # expand adds leading dims: they go after the batch dim
            g = g.view(g.shape[0], *([1] * extra), *g.shape[1:])
        return _result(fn(g, (g.shape[0], *sizes)), STACK)


def _sizes(spec):
    """The size list of view/reshape/expand (varargs or one sequence), or None."""
    sizes = [_value(x) for x in spec[0][1:]]
    if len(sizes) == 1 and isinstance(sizes[0], tuple):
        sizes = list(sizes[0])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in sizes):
        return None
    return tuple(sizes)


class Getitem(Rule):
    """Basic indexing (ints, slices, None, ...). FLAT when the index starts with a full slice
    (``h[:, :H]``) or an Ellipsis that spans dim 0; else STACK (a full slice prepended).
    Tensor indices go to vmap."""

    name = "getitem"

    def plan(self, fn, spec, leaves, metas):
        if len(metas) != 1 or spec[0][0] is not LEAF:
            return VMAP, None, tuple(metas), None
        idx = _value(spec[0][1])
        if idx is LEAF:
            return VMAP, None, tuple(metas), None
        items = idx if isinstance(idx, tuple) else (idx,)
        m = metas[0]
        rank = len(m.shape)
        if rank >= 1 and _keeps_rows(items, rank):
            return FLAT, m.shape[0], _keys(metas, FLAT), None
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        g = column(batch, 0, mode)
        (_, idx), _ = rebuild(spec, [g])
        if mode == STACK:
            idx = (slice(None), *idx) if isinstance(idx, tuple) else (slice(None), idx)
        return _result(g[idx], mode)


def _full_slice(s) -> bool:
    return type(s) is slice and s.start is None and s.stop is None and s.step is None


def _keeps_rows(items: tuple, rank: int) -> bool:
    first = items[0]
    if _full_slice(first):
        return True
    if first is Ellipsis:
        used = sum(1 for it in items[1:] if it is not None and it is not Ellipsis)
        return used < rank
    return False


class Reduce(Rule):
    """sum / mean over every dim of each example (dim=None): FLAT with ragged rows, a
    per-example segment sum after reducing the trailing dims."""

    name = "reduce"

    def __init__(self, mean: bool):
        self.mean = mean

    def plan(self, fn, spec, leaves, metas):
        if len(metas) != 1 or spec[0][:1] != (LEAF,):
            return VMAP, None, tuple(metas), None
        if _arg(spec, 1, "dim", None) is not None or _arg(spec, 2, "keepdim", False):
            return VMAP, None, tuple(metas), None
        m = metas[0]
        if not m.shape:
            return STACK, None, tuple(metas), None
        return FLAT, m.shape[0], _keys(metas, FLAT), None

    def run(self, fn, spec, batch, mode):
        dtype = _arg(spec, 3, "dtype", None)
        g = column(batch, 0, mode)
        if mode == STACK:  # 0-d values: the reduction of one element
            out = (
                g.unsqueeze(1).mean(1, dtype=dtype)
                if self.mean
                else g.unsqueeze(1).sum(1, dtype=dtype)
            )
            return _result(out, STACK)
        if dtype is not None:
            g = g.to(dtype)
        rows = example_rows(batch)
        out = segment_sum(g, rows)
        if self.mean:
            per_row = prod(batch[0].site.metas[0].shape[1:])
            out = out / torch.tensor(
                [r * per_row for r in rows], dtype=out.dtype, device=out.device
            )
        return _result(out, STACK)


class Norm(Rule):
    """Vector norm of each example (dim None; p/ord numeric or 'fro'): STACK, vector_norm over
    every non-batch dim. With dims: the DimOp rule."""

    name = "norm"

    def __init__(self, p_pos: int, p_name: str, default):
        self.p = (p_pos, p_name, default)
        self.with_dim = DimOp((2, "dim", None))

    def _ord(self, spec):
        p = _arg(spec, *self.p)
        if p in ("fro", None):
            return 2
        return p if isinstance(p, (int, float)) else None

    def plan(self, fn, spec, leaves, metas):
        if len(metas) != 1 or spec[0][:1] != (LEAF,) or self._ord(spec) is None:
            return VMAP, None, tuple(metas), None
        if _arg(spec, 2, "dim", None) is not None:
            return self.with_dim.plan(fn, spec, leaves, metas)
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        if _arg(spec, 2, "dim", None) is not None:
            return self.with_dim.run(fn, spec, batch, mode)
        g = column(batch, 0, STACK)
        keep = bool(_arg(spec, 3, "keepdim", False))
        if g.dim() == 1:
            out = torch.linalg.vector_norm(g.unsqueeze(1), ord=self._ord(spec), dim=1)
        else:
            out = torch.linalg.vector_norm(
                g, ord=self._ord(spec), dim=tuple(range(1, g.dim())), keepdim=keep
            )
        return _result(out, STACK)


class Loss(Rule):
    """Loss functions with a reduction: computed with reduction='none' on the batch, then
    summed / averaged per example. `names`: the parameter names in order (input first, target
    second); only the default optional arguments are supported (else vmap)."""

    name = "loss"

    def __init__(self, names: tuple, classes: bool):
        self.names = names
        self.classes = classes  # class-index targets: the class dim is 1 (or 0 for 1-D input)

    def _args(self, spec):
        a, kw = spec
        out = dict(zip(self.names, a, strict=False))
        for k, v in kw or ():
            out[k] = v
        return out

    def plan(self, fn, spec, leaves, metas):
        args = self._args(spec)
        if args.get("input") is not LEAF or args.get("target") is not LEAF or len(metas) != 2:
            return VMAP, None, tuple(metas), None
        allowed = {"input", "target", "reduction", "ignore_index"}
        if any(k not in allowed and v not in (None, 0.0) for k, v in args.items()):
            return VMAP, None, tuple(metas), None
        if args.get("reduction", "mean") not in ("none", "sum", "mean"):
            return VMAP, None, tuple(metas), None
        x, t = metas
        if self.classes:
            flat = len(x.shape) >= 2 and len(t.shape) == len(x.shape) - 1
            flat = flat and t.shape[0] == x.shape[0]
        else:
            flat = x.shape == t.shape and len(x.shape) >= 1
        if flat:
            return FLAT, x.shape[0], _keys(metas, FLAT), None
        return STACK, None, tuple(metas), None

    def run(self, fn, spec, batch, mode):
        args = self._args(spec)
        reduction = args.get("reduction", "mean")
        x = column(batch, 0, mode)
        t = column(batch, 1, mode)
        kw = {"reduction": "none"}
        if "ignore_index" in args:
            kw["ignore_index"] = args["ignore_index"]
        loss = fn(x, t, **kw)
        if reduction == "none":
            return _result(loss, mode)
        if mode == STACK and not self.classes:
            loss = loss.reshape(t.shape[0], -1)
            out = loss.sum(1) if reduction == "sum" else loss.mean(1)
            return _result(out, STACK)
        rows = example_rows(batch) if mode == FLAT else [1] * t.shape[0]
        total = segment_sum(loss, rows)
        if reduction == "sum":
            return _result(total, STACK)
        return _result(total / self._count(t, args, rows, loss), STACK)

    def _count(self, t: Tensor, args: dict, rows: list, loss: Tensor) -> Tensor:
        """The denominator of 'mean' per example: non-ignored targets, or elements."""
        if self.classes:
            valid = (t != args.get("ignore_index", -100)).to(loss.dtype)
            return segment_sum(valid, rows)
        per = loss[0].numel() if loss.dim() > 1 else 1
        return torch.tensor([r * per for r in rows], dtype=loss.dtype, device=loss.device)


class Cat0(Rule):
    """torch.cat / torch.stack along each example's dim 0: the parts of every call, in order,
    gathered once; the signature ignores how many parts each example has."""

    name = "cat0"

    def __init__(self, stack: bool):
        self.stack = stack

    def plan(self, fn, spec, leaves, metas):
        first = metas[0]
        for m in metas:
            if m.dtype is not first.dtype or m.device != first.device:
                return None
            if self.stack and m is not first:
                return None
            if not self.stack and (not m.shape or m.tail is not first.tail):
                return None
        rows = len(metas) if self.stack else sum(m.shape[0] for m in metas)
        key = first if self.stack else first.tail
        return FLAT, rows, (key,), ("cat0", self.stack)

    def run(self, fn, spec, batch, mode):
        parts = [leaf for node in batch for leaf in node.leaves]
        return _result(gather(parts, STACK if self.stack else FLAT), FLAT)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
VMAP_RULE = Vmap()
ELEMENTWISE = Elementwise()
_FUNCTIONS: dict = {}

_UNARY = """abs absolute acos arccos acosh asin asinh atan atanh ceil cos cosh deg2rad digamma erf
erfc erfinv exp exp2 expm1 floor frac lgamma log log10 log1p log2 logit i0 isnan isinf isfinite
isneginf isposinf nan_to_num neg negative positive rad2deg reciprocal round rsqrt sigmoid sign
sgn signbit sin sinc sinh sqrt square tan tanh trunc fix relu logical_not bitwise_not detach
clone contiguous float double half bfloat16 long int short bool byte to type_as zeros_like
ones_like full_like empty_like rand_like randn_like clamp clip clamp_min clamp_max""".split()
_BINARY = """add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
float_power atan2 arctan2 maximum minimum fmax fmin eq ne lt le gt ge greater less greater_equal
less_equal not_equal logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor
hypot copysign xlogy where lerp addcmul addcdiv rsub masked_fill""".split()
_FELEMENTWISE = """relu relu6 elu selu celu leaky_relu gelu silu mish softplus softsign
tanhshrink hardtanh hardsigmoid hardswish logsigmoid sigmoid tanh threshold dropout
alpha_dropout""".split()


def _register(rule, names, modules=(torch, Tensor)):
    for mod in modules:
        for name in names:
            f = getattr(mod, name, None)
            if f is not None:
                _FUNCTIONS[f] = rule


def _build_registry() -> None:
    _register(ELEMENTWISE, _UNARY + _BINARY)
    _register(ELEMENTWISE, _FELEMENTWISE, (F,))
    _register(
        ELEMENTWISE,
        "add sub mul truediv floordiv mod pow and_ or_ xor lt le gt ge eq ne neg pos abs "
        "invert".split(),
        (operator,),
    )
    _FUNCTIONS[F.linear] = Lead(core=1, shared=(1, 2))
    _register(Matmul(), ["matmul", "mm"], (torch, Tensor, operator))
    _register(DimOp((1, "dim", None)), ["softmax", "log_softmax"], (torch, Tensor, F))
    keep = DimOp((1, "dim", None))
    _register(keep, "cumsum cumprod logcumsumexp narrow select gather".split())
    _register(DimOp((1, "dims", None)), ["flip"])
    _register(DimOp((1, "dim0", None), (2, "dim1", None)), ["transpose", "swapaxes", "swapdims"])
    _register(DimOp((1, "source", None), (2, "destination", None)), ["movedim", "moveaxis"])
    _register(DimOp((2, "dim", 0)), ["split", "chunk"])
    _register(DimOp((1, "dim", 0)), ["unbind"])
    _register(DimOp((1, "start_dim", 0), (2, "end_dim", -1)), ["flatten"])
    _register(DimOp((1, "dim", None), extra=1), ["unsqueeze"])
    _register(Squeeze(), ["squeeze"])
    reduce_dim = DimOp((1, "dim", None))
    for name in "amax amin prod logsumexp nansum std var argmax argmin all any max min".split():
        _register(reduce_dim, [name])
    _register(_SumOrDim(Reduce(mean=False), reduce_dim), ["sum"])
    _register(_SumOrDim(Reduce(mean=True), reduce_dim), ["mean"])
    _register(Norm(1, "p", "fro"), ["norm"])
    _FUNCTIONS[torch.linalg.vector_norm] = Norm(1, "ord", 2)
    _register(Reshape(), ["view", "reshape", "expand"])
    _FUNCTIONS[operator.getitem] = Getitem()
    _FUNCTIONS[Tensor.__getitem__] = _FUNCTIONS[operator.getitem]
    ce = ("input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction")
    _FUNCTIONS[F.cross_entropy] = Loss((*ce, "label_smoothing"), classes=True)
    _FUNCTIONS[F.nll_loss] = Loss(ce, classes=True)
    plain = ("input", "target", "size_average", "reduce", "reduction")
    _FUNCTIONS[F.mse_loss] = Loss(plain, classes=False)
    _FUNCTIONS[F.l1_loss] = Loss(plain, classes=False)
    _FUNCTIONS[F.binary_cross_entropy_with_logits] = Loss(
        ("input", "target", "weight", "size_average", "reduce", "reduction", "pos_weight"),
        classes=False,
    )
    for name in ("cat", "concat", "concatenate"):
        _register(Cat0(stack=False), [name], (torch,))
    _register(Cat0(stack=True), ["stack"], (torch,))


class _SumOrDim(Rule):
    """sum/mean: over everything (Reduce) or over given dims (DimOp)."""

    def __init__(self, total: Rule, with_dim: Rule):
        self.total = total
        self.with_dim = with_dim
        self.name = total.name

    def _pick(self, spec):
        return self.total if _arg(spec, 1, "dim", None) is None else self.with_dim

    def plan(self, fn, spec, leaves, metas):
        return self._pick(spec).plan(fn, spec, leaves, metas)

    def run(self, fn, spec, batch, mode):
        return self._pick(spec).run(fn, spec, batch, mode)


_build_registry()


def function_rule(func) -> Rule:
    """The rule for a torch function / tensor method / operator (vmap if none)."""
    try:
        return _FUNCTIONS.get(func, VMAP_RULE)
    except TypeError:  # unhashable callable
        return VMAP_RULE


# Modules batched as one call (their forward is not traced op by op).
_LEAD_MODULES = {
    nn.Linear: 1,
    nn.Bilinear: 1,
    nn.Embedding: 0,
    nn.ReLU: 0,
    nn.ReLU6: 0,
    nn.Tanh: 0,
    nn.Sigmoid: 0,
    nn.GELU: 0,
    nn.SiLU: 0,
    nn.ELU: 0,
    nn.SELU: 0,
    nn.LeakyReLU: 0,
    nn.Softplus: 0,
    nn.Hardtanh: 0,
    nn.Mish: 0,
    nn.LogSigmoid: 0,
    nn.Dropout: 0,
    nn.AlphaDropout: 0,
}
_CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
_CONV = {nn.Conv1d: 2, nn.Conv2d: 3, nn.Conv3d: 4}
_ROWS = Rows()
_lead_cache: dict = {}


def _lead(core: int, max_rank=None) -> Lead:
    key = (core, max_rank)
    r = _lead_cache.get(key)
    if r is None:
        r = _lead_cache[key] = Lead(core=core, max_rank=max_rank)
    return r


def module_rule(module: nn.Module, rowwise_types: tuple = ()) -> Rule | None:
    """The rule for calling `module` as one batched unit, or None to trace its forward."""
    t = type(module)
    core = _LEAD_MODULES.get(t)
    if core is not None:
        return _lead(core)
    if t in _CELLS:
        return _lead(1, max_rank=2)
    if t in _CONV:
        return _lead(_CONV[t], max_rank=_CONV[t] + 1)
    if t is nn.LayerNorm:
        return _lead(len(module.normalized_shape))
    if t in (nn.Softmax, nn.LogSoftmax) and module.dim is not None and module.dim < 0:
        return _lead(-module.dim)
    if rowwise_types and isinstance(module, rowwise_types):
        return _ROWS
    from treelstm import TreeCell  # the library's cells: one batched step per call

    if isinstance(module, TreeCell):
        return _ROWS
    return None
