"""Lazy values: what a per-example function holds instead of a tensor while it is autobatched.

A `Lazy` stands for ONE example's tensor that is (or will be) part of a batched result:

    stored as rows:  value = src[lo : lo + rows]   (per-example shape (rows, *src.shape[1:]))
    stored as a row: value = src[lo]               (rows is None; shape src.shape[1:])

so a batched call's output is never sliced per example: each example only keeps a reference
(`src`, `lo`) until a consumer gathers many of them with one index_select. Before the batch has
run, `src` is None and `node` is the recorded call that will produce it. A *composite* (the
result of torch.stack / torch.cat of per-example values along a non-batch dimension) keeps its
parts and is gathered part by part by its consumer, so stacking children costs no batched call.

Every tensor operation on a Lazy is recorded by the active run (operators, methods and torch
functions through ``__torch_function__``); asking for a concrete value (``bool``, ``item``,
``float``, ``tolist``...) suspends only this example until the scheduler has computed it. Shape,
dtype and device are known at once (`Meta`), without waiting.
"""

from __future__ import annotations

import operator

import torch
import torch.functional
import torch.nn.functional
from torch import Tensor, nn

from . import state

__all__ = ["ALIASES", "Lazy", "Meta", "alias_row", "alias_rows", "meta_of", "tensor_meta"]


class Meta:
    """Shape, dtype and device of one example's value; interned, so `is` compares them.

    ``tail`` is the interned key without the leading dimension (None for 0-d values): calls
    whose arguments agree in tails but not in row counts can still run as one batch.
    """

    __slots__ = ("shape", "dtype", "device", "tail", "rows", "resized", "__weakref__")

    def with_rows(self, n: int) -> Meta:
        """This meta with `n` rows (interned; remembered here: aliases ask for it often)."""
        r = self.resized
        if r is None:
            r = self.resized = {}
        m = r.get(n)
        if m is None:
            m = r[n] = meta_of((n, *self.shape[1:]), self.dtype, self.device)
        return m

    def __repr__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{dims} {str(self.dtype).replace('torch.', '')}"


_metas: dict = {}


def meta_of(shape: tuple, dtype, device) -> Meta:
    """The interned Meta for (shape, dtype, device)."""
    key = (shape, dtype, device)
    m = _metas.get(key)
    if m is None:
        m = Meta()
        m.shape = shape
        m.dtype = dtype
        m.device = device
        m.rows = shape[0] if shape else None
        m.resized = None
        m.tail = meta_of(shape[1:], dtype, device) if shape else None
        _metas[key] = m
    return m


def tensor_meta(t: Tensor) -> Meta:
    """Meta of a concrete tensor (its whole shape is the per-example shape)."""
    return meta_of(tuple(t.shape), t.dtype, t.device)


_IMMUTABLE = (
    "autobatched values are immutable: {} would change a value other calls may share "
    "(write `y = x + 1` or `torch.where(mask, value, x)` instead)"
)


tls = state.tls  # (read on every recorded call: a module global is the cheapest)
_COMPOSE = frozenset((torch.stack, torch.cat))


def _run():
    run = tls.run
    if run is None or run.current is None:
        raise RuntimeError(
            "an autobatched value was used outside its example (it escaped the function); "
            "return it from the function instead"
        )
    return run


class Lazy:
    """One example's tensor inside an autobatch run (see the module docstring)."""

    __slots__ = ("node", "out", "src", "lo", "rows", "meta", "parts", "count")

    def __init__(self, node, out: int, meta: Meta, count: int = 1) -> None:
        self.node = node
        self.out = out
        self.src = None
        self.lo = 0
        self.rows = meta.rows
        self.meta = meta
        self.parts = None
        self.count = count  # > 1: the values of a lane group's `count` examples, in order

    # -- recording -----------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        run = tls.run
        if run is None or run.current is None:
            run = _run()  # (raises: the value escaped its example)
        if func in _COMPOSE and not kwargs and len(args) == 2:
            out = run.compose(func, args[0], args[1])  # a node's children stacked: fast
            if type(out) is Lazy:
                return out
        return run.function_call(func, args, kwargs or {})

    def __setitem__(self, key, value):
        raise TypeError(_IMMUTABLE.format("item assignment"))

    # -- what is known without waiting -----------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.meta.shape)

    @property
    def dtype(self):
        return self.meta.dtype

    @property
    def device(self):
        return self.meta.device

    @property
    def ndim(self) -> int:
        return len(self.meta.shape)

    def dim(self) -> int:
        return len(self.meta.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.meta.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        if not self.meta.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.meta.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        done = "computed" if self.src is not None or self.parts is not None else "pending"
        return f"Lazy({self.meta}, {done})"

    __hash__ = object.__hash__

    # -- concrete values: this example waits for them --------------------------------------
    def __bool__(self) -> bool:
        return _run().concrete(self, bool)

    def __float__(self) -> float:
        return _run().concrete(self, float)

    def __int__(self) -> int:
        return _run().concrete(self, int)

    def __index__(self) -> int:
        return _run().concrete(self, operator.index)

    def item(self):
        return _run().concrete(self, Tensor.item)

    def tolist(self):
        return _run().concrete(self, Tensor.tolist)

    def numpy(self):
        return _run().concrete(self, lambda t: t.detach().numpy())

    def __array__(self, dtype=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    # -- the concrete value once computed (used by the engine) ----------------------------
    def value(self) -> Tensor:
        """The computed tensor (a view into the batched result); only after it has run.
        For a lane group's value: its examples' values stacked, [count, *shape]."""
        if self.count != 1:
            return self._group_value()
        if self.parts is not None:
            op, dim, parts = self.parts
            return op([p.value() if type(p) is Lazy else p for p in parts], dim)
        src = self.src
        if self.rows is None:
            return src[self.lo]
        if self.lo == 0 and self.rows == src.shape[0]:
            return src
        return src.narrow(0, self.lo, self.rows)

    def _group_value(self) -> Tensor:
        n = self.count
        if self.parts is not None:
            op, dim, parts = self.parts
            vals = [p.value() if type(p) is Lazy else p.expand(n, *p.shape) for p in parts]
            return op(vals, dim + 1)
        src = self.src
        if self.rows is None:
            return src if self.lo == 0 and src.shape[0] == n else src.narrow(0, self.lo, n)
        m = n * self.rows
        part = src if self.lo == 0 and src.shape[0] == m else src.narrow(0, self.lo, m)
        return part.reshape(n, self.rows, *part.shape[1:])


# Views of a value's leading rows (``x[j]``, ``x[a:b]``, ``x.squeeze(0)``, ``x.unsqueeze(0)``)
# are *aliases*: parts = (op, arg, (base,)). They cost no call: a consumer reads the base's
# rows directly when the base's storage allows it (see gather.resolve), else op makes a view.
def alias_row(vals, j):
    return vals[0][j]


def alias_rows(vals, ab):
    return vals[0][ab[0] : ab[1]]


def alias_squeeze0(vals, _):
    return vals[0].squeeze(0)


def alias_unsqueeze0(vals, _):
    return vals[0].unsqueeze(0)


ALIASES = (alias_row, alias_rows, alias_squeeze0, alias_unsqueeze0)


class _Method:
    """A tensor method looked up on a Lazy (``h.sum``): recorded when called."""

    __slots__ = ("func", "obj")

    def __init__(self, func, obj) -> None:
        self.func = func
        self.obj = obj

    def __call__(self, *args, **kwargs):
        return _run().function_call(self.func, (self.obj, *args), kwargs)


class _TensorMethod:
    """``lazy.name`` of a Tensor method: the method bound to the lazy value (recorded when
    called). A descriptor on the class, not ``__getattr__``: a class with ``__getattr__``
    loses CPython's fast attribute reads for every slot (~16 ns a read, ~25 reads a node)."""

    __slots__ = ("func",)

    def __init__(self, func) -> None:
        self.func = func

    def __get__(self, obj, cls=None):
        return self.func if obj is None else _Method(self.func, obj)


class _TensorData:
    """``lazy.name`` of a Tensor data attribute (.T, .grad, .requires_grad, ...): it needs
    the concrete value (this example waits for it; a lane group asks each example's)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        # Each example's own attribute: a lane group whose examples' answers differ (or are
        # tensors, like .T) splits, as for any other concrete value
        return _run().concrete(obj, operator.attrgetter(self.name))


class _InPlace:
    """``lazy.add_`` and other in-place methods: refused (values are shared)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, cls=None):
        raise TypeError(_IMMUTABLE.format(f"{self.name}()"))


def _tensor_attributes() -> None:
    """Every public Tensor attribute Lazy does not define itself, as a descriptor."""
    for name in dir(Tensor):
        if name.startswith("__") or name in Lazy.__dict__:
            continue
        attr = getattr(Tensor, name, None)
        if attr is None:
            continue
        if name.endswith("_"):
            setattr(Lazy, name, _InPlace(name))
        elif callable(attr):
            setattr(Lazy, name, _TensorMethod(attr))
        else:
            setattr(Lazy, name, _TensorData(name))


def _binary(func, swap: bool = False):
    if swap:

        def op(self, other):
            return _run().function_call(func, (other, self), {})

    else:

        def op(self, other):
            return _run().function_call(func, (self, other), {})

    return op


def _unary(func):
    def op(self):
        return _run().function_call(func, (self,), {})

    return op


_BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}
for _name, _func in _BINARY.items():
    setattr(Lazy, f"__{_name}__", _binary(_func))
    setattr(Lazy, f"__r{_name}__", _binary(_func, swap=True))
for _name, _func in {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}.items():
    setattr(Lazy, f"__{_name}__", _binary(_func))
for _name, _func in {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
}.items():
    setattr(Lazy, f"__{_name}__", _unary(_func))


def _row_alias(x: Lazy, arg):
    """``x[j]`` / ``x[a:b]`` (step 1, not empty) of a lazy x (one example's) as an alias, or
    None (then it is a recorded call)."""
    m = x.meta
    t = type(arg)
    if t is slice:
        n = m.rows
        if n is None or (arg.step is not None and arg.step != 1):
            return None
        a, b = arg.start, arg.stop
        if type(a) is not int or type(b) is not int or not 0 <= a < b <= n:
            a, b, _ = arg.indices(n)
            if b <= a:
                return None
        out = Lazy(None, 0, m.with_rows(b - a))
        out.parts = (alias_rows, (a, b), (x,))
        return out
    if t is int and m.rows is not None:
        j = arg + m.rows if arg < 0 else arg
        if not 0 <= j < m.rows:
            return None
        out = Lazy(None, 0, m.tail)
        out.parts = (alias_row, j, (x,))
        return out
    return None


def _getitem(self, key):
    run = tls.run
    if run is None or run.current is None:
        run = _run()  # (raises: the value escaped its example)
    if run.count == 1:  # x[j], x[a:b]: no call (a tree's leaf input: the common case)
        out = run.row_alias(self, key)  # (values._row_alias, or the C extension's)
        if out is not None:
            return out
    return run.function_call(operator.getitem, (self, key), {})


Lazy.__getitem__ = _getitem
_tensor_attributes()


_torch_handle = torch.overrides.handle_torch_function
_mode_enabled = torch._C._is_torch_function_mode_enabled
_PLAIN = (Tensor, nn.Parameter)  # tensor types torch never hands a call to


def _handle_torch_function(public_api, relevant_args, *args, **kwargs):
    """``handle_torch_function`` of `torch.nn.functional` / `torch.functional` during a run
    (see state.py): a call whose overloaded arguments are all lazy values goes to
    ``Lazy.__torch_function__`` directly, as PyTorch's would send it (the same arguments)."""
    run = tls.run
    if run is not None and run.current is not None and not _mode_enabled():
        lazy = False
        for a in relevant_args:
            t = type(a)
            if t is Lazy:
                lazy = True
            elif t not in _PLAIN and hasattr(t, "__torch_function__"):
                lazy = False  # another overloaded type: PyTorch's rules decide
                break
        if lazy:
            return Lazy.__torch_function__(public_api, (Lazy,), args, kwargs)
    return _torch_handle(public_api, relevant_args, *args, **kwargs)


for _module in (torch.nn.functional, torch.functional):
    if _module.handle_torch_function is _torch_handle:
        state.SHORTCUTS.append((_module, "handle_torch_function", _handle_torch_function))
