"""Helpers shared by the tests that compare `run` with the per-node evaluators (float64)."""

from __future__ import annotations

import torch

from treelstm.executor import evaluate_tree, run


def per_node(cell, trees, sched, x, direction="up", slots=None):
    """The per-node evaluator tree by tree, placed in schedule order: (h, c or None)."""
    h = c = None
    for t, rows in zip(trees, sched.per_tree_rows(), strict=True):
        hb, cb = evaluate_tree(cell, t, x[rows], direction, slots)
        h = (hb.new_zeros(sched.num_nodes, hb.shape[1]) if h is None else h).index_put((rows,), hb)
        if cb is not None:
            c = (cb.new_zeros(sched.num_nodes, cb.shape[1]) if c is None else c).index_put(
                (rows,), cb
            )
    return h, c


def loss_of(h, c):
    """A loss that weights every node and both states differently."""
    w = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)
    loss = (h * w).sum()
    return loss if c is None else loss + 0.3 * (c * c.flip(0)).sum()


def outputs_and_grads(module, compute, x):
    """[h, c, loss, x.grad, every parameter's grad] of ``compute(x) -> (h, c)``."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    h, c = compute(x)
    loss = loss_of(h, c)
    loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
    return [h.detach(), None if c is None else c.detach(), loss.detach(), x.grad, *grads]


def strategy_fn(cell, trees, sched, strategy, direction="up", slots=None):
    """compute(x) for `outputs_and_grads`: "oracle" (the per-node evaluator) or a strategy."""
    if strategy == "oracle":
        return lambda x: per_node(cell, trees, sched, x, direction, slots)
    return lambda x: run(cell, sched, x, strategy, direction=direction)


def assert_all_close(got, want, what, tol=1e-6):
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if a is None or b is None:
            assert a is None and b is None, f"{what}[{k}]: {a is None} vs {b is None}"
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, k=k: f"{what}[{k}]: {m}")
