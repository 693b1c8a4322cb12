"""check=True: run every example alone (plain PyTorch) and compare with the batched run.

Values are compared output by output; gradients through a random projection of the outputs:
one backward through the batched graph against the sum of one backward per example, for every
leaf tensor that requires grad (parameters and inputs). On a gradient mismatch each example is
checked alone to name the one that differs. Tolerances: float64 rtol 1e-7 / atol 1e-9,
float32 and below rtol 1e-4 / atol 1e-5, integers and booleans exact. The function must be
deterministic (dropout off, randomness passed in with the example).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .engine import AutobatchError

__all__ = ["MismatchError", "check_results"]


class MismatchError(AutobatchError):
    """The batched run and the example run alone disagree."""


def _tol(dtype) -> tuple[float, float]:
    if dtype == torch.float64 or dtype == torch.complex128:
        return 1e-7, 1e-9
    return 1e-4, 1e-5


def _leaves(obj, out: list, path: str = "result") -> None:
    """(path, value) pairs of a result: tensors and other plain values, in order."""
    if isinstance(obj, Tensor):
        out.append((path, obj))
    elif isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            _leaves(o, out, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _leaves(v, out, f"{path}[{k!r}]")
    else:
        out.append((path, obj))


def _compare_values(i: int, got, ref) -> None:
    a, b = [], []
    _leaves(got, a)
    _leaves(ref, b)
    if [p for p, _ in a] != [p for p, _ in b]:
        raise MismatchError(f"example {i}: the batched result has another structure", i)
    for (path, x), (_, y) in zip(a, b, strict=True):
        if not isinstance(y, Tensor):
            if x != y:
                raise MismatchError(f"example {i}: {path} is {x!r} batched, {y!r} alone", i)
            continue
        if not isinstance(x, Tensor) or x.shape != y.shape or x.dtype != y.dtype:
            raise MismatchError(f"example {i}: {path} differs in shape or dtype", i)
        if y.is_floating_point() or y.is_complex():
            rtol, atol = _tol(y.dtype)
            ok = torch.allclose(x.detach(), y.detach(), rtol=rtol, atol=atol, equal_nan=True)
        else:
            ok = torch.equal(x, y)
        if not ok:
            diff = (x.detach().double() - y.detach().double()).abs().max().item()
            raise MismatchError(f"example {i}: {path} differs (max |diff| {diff:.3g})", i)


def _graph_leaves(tensors: list) -> list:
    """Leaf tensors that require grad reachable from `tensors` (AccumulateGrad nodes)."""
    seen, found, stack = set(), {}, [t.grad_fn for t in tensors if t.grad_fn is not None]
    for t in tensors:
        if t.grad_fn is None and t.requires_grad:
            found[id(t)] = t
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            found[id(var)] = var
        stack.extend(f for f, _ in fn.next_functions)
    return list(found.values())


def _projection(results: list, gen: torch.Generator) -> list:
    """One random weight tensor per differentiable output tensor of each example."""
    out = []
    for r in results:
        ts = []
        _leaves(r, ts)
        out.append(
            [
                torch.rand(t.shape, generator=gen, dtype=t.dtype).to(t.device)
                for _, t in ts
                if isinstance(t, Tensor) and t.requires_grad
            ]
        )
    return out


def _scalar(result, weights: list):
    ts = []
    _leaves(result, ts)
    terms = [
        (t * w).sum()
        for (_, t), w in zip(
            [p for p in ts if isinstance(p[1], Tensor) and p[1].requires_grad], weights, strict=True
        )
    ]
    return sum(terms) if terms else None


def _grads(scalar, leaves, retain: bool):
    if scalar is None:
        return [None] * len(leaves)
    return torch.autograd.grad(scalar, leaves, retain_graph=retain, allow_unused=True)


def _same(a, b, leaf) -> bool:
    if a is None or b is None:
        return (a is None or not bool(a.abs().max() > 0)) and (
            b is None or not bool(b.abs().max() > 0)
        )
    rtol, atol = _tol(leaf.dtype)
    return torch.allclose(a, b, rtol=rtol, atol=atol)


def check_results(fn, examples: list, results: list, names: dict) -> None:
    """Raise MismatchError unless every example alone gives the batched values and gradients."""
    refs = []
    for i, ex in enumerate(examples):
        ref = fn(ex)
        _compare_values(i, results[i], ref)
        refs.append(ref)
    if not torch.is_grad_enabled():
        return
    ref_tensors = []
    for r in refs:
        ts = []
        _leaves(r, ts)
        ref_tensors.extend(t for _, t in ts if isinstance(t, Tensor) and t.requires_grad)
    leaves = _graph_leaves(ref_tensors)
    if not leaves:
        return
    gen = torch.Generator().manual_seed(0)
    weights = _projection(refs, gen)
    batched = _grads(
        _sum([_scalar(r, w) for r, w in zip(results, weights, strict=True)]), leaves, True
    )
    alone = [_grads(_scalar(r, w), leaves, False) for r, w in zip(refs, weights, strict=True)]
    total = [_sum([g[j] for g in alone]) for j in range(len(leaves))]
    bad = [j for j, leaf in enumerate(leaves) if not _same(batched[j], total[j], leaf)]
    if not bad:
        return
    j = bad[0]
    for i, (r, w) in enumerate(zip(results, weights, strict=True)):
        g = _grads(_scalar(r, w), [leaves[j]], True)[0]
        if not _same(g, alone[i][j], leaves[j]):
            raise MismatchError(
                f"example {i}: the gradient of {names.get(id(leaves[j]), 'a leaf tensor')} "
                f"{tuple(leaves[j].shape)} differs between the batched run and the example alone",
                i,
            )
    raise MismatchError(
        f"the gradient of {names.get(id(leaves[j]), 'a leaf tensor')} differs between the "
        "batched run and the examples alone (no single example shows it)"
    )


def _sum(xs: list):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out
