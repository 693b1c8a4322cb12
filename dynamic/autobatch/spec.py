"""Call arguments as (tensor leaves, hashable spec): the spec is part of a call's signature.

``flatten_call(args, kwargs, leaves)`` appends every tensor-like argument (a `Lazy` or a plain
tensor), found inside tuples, lists and dicts too, to `leaves` and returns a hashable spec of
everything else (numbers, None, strings, dtypes, slices, ...); ``rebuild(spec, leaves)`` puts
batched leaves back. Outputs are taken apart the same way (`flatten_out` / `unflatten_out`).
"""

from __future__ import annotations

from torch import Size, Tensor

from .values import Lazy

__all__ = ["LEAF", "SEQ", "constant", "flatten_call", "flatten_out", "rebuild", "unflatten_out"]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


LEAF = _Marker("LEAF")
SEQ = _Marker("SEQ")
_DICT = _Marker("DICT")
_SLICE = _Marker("SLICE")


def _flat(obj, leaves: list):
    t = type(obj)
    if t is Lazy or isinstance(obj, Tensor):
        leaves.append(obj)
        return LEAF
    if t is tuple or t is list:
        return (SEQ, t, tuple([_flat(o, leaves) for o in obj]))
    if t is slice:
        return (_SLICE, _flat(obj.start, leaves), _flat(obj.stop, leaves), _flat(obj.step, leaves))
    if t is dict:
        return (_DICT, tuple(obj), tuple([_flat(v, leaves) for v in obj.values()]))
    if isinstance(obj, tuple) and t is not Size:  # namedtuple
        return (SEQ, t, tuple([_flat(o, leaves) for o in obj]))
    return obj


def flatten_call(args: tuple, kwargs: dict, leaves: list) -> tuple:
    """Spec of a call ``fn(*args, **kwargs)``; its tensor-like arguments go to `leaves`."""
    a = tuple([_flat(x, leaves) for x in args])
    if not kwargs:
        return (a, None)
    return (a, tuple([(k, _flat(v, leaves)) for k, v in kwargs.items()]))


def _build(s, it):
    if s is LEAF:
        return next(it)
    if type(s) is tuple:
        tag = s[0]
        if tag is SEQ:
            t = s[1]
            items = [_build(x, it) for x in s[2]]
            if t is tuple or t is list or not hasattr(t, "_fields"):
                return t(items)  # also torch.return_types (structseq) take one sequence
            return t(*items)  # namedtuple
        if tag is _SLICE:
            return slice(_build(s[1], it), _build(s[2], it), _build(s[3], it))
        if tag is _DICT:
            return dict(zip(s[1], [_build(v, it) for v in s[2]], strict=True))
    return s


def rebuild(spec: tuple, leaves) -> tuple[tuple, dict]:
    """(args, kwargs) from a spec and the leaves that replace its LEAF markers, in order."""
    it = iter(leaves)
    args = tuple([_build(s, it) for s in spec[0]])
    kwargs = {} if spec[1] is None else {k: _build(s, it) for k, s in spec[1]}
    return args, kwargs


def constant(s):
    """The Python value of a spec item without tensors (raises ValueError if it has one)."""
    try:
        return _build(s, iter(()))
    except StopIteration:
        raise ValueError("the argument holds a tensor") from None


def flatten_out(obj) -> tuple[list, object]:
    """(tensor leaves, spec) of a function's output: a tensor, or tuples/lists/dicts of them.

    Raises TypeError for anything else (a batched call cannot return per-example Python
    values).
    """
    leaves: list = []
    spec = _flat_out(obj, leaves)
    return leaves, spec


def _flat_out(obj, leaves: list):
    if isinstance(obj, Tensor):
        leaves.append(obj)
        return LEAF
    t = type(obj)
    if isinstance(obj, (tuple, list)):
        return (SEQ, t, tuple([_flat_out(o, leaves) for o in obj]))
    if t is dict:
        return (_DICT, tuple(obj), tuple([_flat_out(v, leaves) for v in obj.values()]))
    raise TypeError(f"returned a {t.__name__}, not tensors")


def unflatten_out(spec, leaves):
    """The output structure `spec` with `leaves` in place of its tensors."""
    return _build(spec, iter(leaves))
