"""dynamic.autobatch batching rules: each op, batched over examples of different row counts,
equals the op on each example alone (values and gradients, float64, 1e-9).

The examples are [n, 4] with n = 1, 2, 3 (ragged: FLAT batches mix them, STACK batches split
them by shape) and [4] vectors; `h = lin(x)` makes the value lazy before the op under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_autobatch import assert_batched_equals_alone, recording  # noqa: F401

pytestmark = pytest.mark.usefixtures("float64", "one_thread", "recording")

torch.manual_seed(5)
LIN = nn.Linear(4, 4).double()
W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
B = torch.randn(4, dtype=torch.float64, requires_grad=True)
LN = nn.LayerNorm(4).double()
EMB = nn.Embedding(7, 4).double()
CELL = nn.LSTMCell(4, 3).double()
CONV = nn.Conv1d(1, 2, 3, padding=1).double()
PARAMS = [*LIN.parameters(), W, B, *LN.parameters(), *EMB.parameters(), *CELL.parameters()]
PARAMS += list(CONV.parameters())

CASES = {
    # elementwise, broadcasting across ranks
    "arith": lambda h, t: h * 2 + 1 - h / (h.abs() + 1) + h**2,
    "swap": lambda h, t: 2 - h + 3 * h,
    "unary": lambda h, t: torch.tanh(h) - h.sigmoid() + F.gelu(h) + F.relu(h),
    "broadcast": lambda h, t: h + B,
    "where": lambda h, t: torch.where(h > 0, h, h * 0.1).clamp(min=-0.5),
    # reductions
    "sum": lambda h, t: h.sum() + h.mean(),
    "count": lambda h, t: ((h > 0).sum(), (h.argmax(-1) == t).sum(), t.sum(), (h > 0).sum(-1)),
    "sum_dim": lambda h, t: h.sum(-1) + h.mean(dim=-1) + h.amax(-1) + h.logsumexp(-1),
    "sum_dim0": lambda h, t: h.sum(0) * h.mean(0, keepdim=True),
    "norm": lambda h, t: h.norm() + torch.linalg.vector_norm(h, ord=1),
    "norm_dim": lambda h, t: torch.norm(h, dim=-1),
    # dims
    "softmax": lambda h, t: F.softmax(h, -1) + h.log_softmax(dim=0),
    "unsqueeze": lambda h, t: (h.unsqueeze(-1) * h.unsqueeze(-2)).sum(-1),
    "transpose": lambda h, t: h.transpose(0, -1).flatten(),
    "squeeze": lambda h, t: h.unsqueeze(1).squeeze() + 1,
    "cumsum": lambda h, t: torch.cumsum(h, -1).flip(-1),
    "split": lambda h, t: (torch.chunk(h, 2, dim=-1), h.split(3, dim=-1), h.unbind(-1)),
    # indexing and views
    "getitem": lambda h, t: (h[..., 1:3], h[..., 0], h[..., None]),
    "rows": lambda h, t: (
        h[0],
        h[-1],
        h[-1:],
        h[0].unsqueeze(0) * 2,
        h.squeeze(0) if len(h) == 1 else h,
    ),
    "reshape": lambda h, t: (h.view(-1), h.reshape(-1, 2), h.expand(2, *h.shape)),
    "iterate": lambda h, t: torch.stack([r * i for i, r in enumerate(h)], -1),
    # cat / stack: composites (non-batch dims) and cat0 nodes (dim 0)
    "cat": lambda h, t: torch.cat([h, h * 2], -1) + torch.stack([h, -h], -1).sum(-1).repeat(1, 2),
    "cat0": lambda h, t: (torch.cat([h, h * 3, h[:1]], 0), torch.stack([h, h], 0)),
    # matmul / linear with shared and per-example operands
    "matmul": lambda h, t: (
        h @ W,
        F.linear(h, W.t(), B[:3]),
        W.t() @ h.transpose(0, 1),
        h @ h.transpose(0, 1),
    ),
    # losses
    "ce": lambda h, t: (
        F.cross_entropy(h, t),
        F.cross_entropy(h, t, reduction="sum"),
        F.cross_entropy(h, t, reduction="none"),
        F.nll_loss(h.log_softmax(-1), t, reduction="sum"),
    ),
    "regression": lambda h, t: (
        F.mse_loss(h, h.detach() * 0.5),
        F.l1_loss(h, torch.zeros_like(h), reduction="sum"),
        F.binary_cross_entropy_with_logits(h, (h.detach() > 0).to(h.dtype)),
    ),
    # torch.vmap and the one-by-one fallback
    "vmap": lambda h, t: (
        torch.outer(h[0], h[-1]),
        torch.einsum("ij,ij->i", h, h),
        torch.kron(h, h),
    ),
    "alone": lambda h, t: (h.nonzero(), torch.unique(h.detach() > 0)),
    # modules batched as one call
    "modules": lambda h, t: (LN(h), CELL(h), CELL(h[0]), CONV(h[:, None, :]), EMB(t) * h[:, :1]),
}


def _examples():
    torch.manual_seed(6)
    rows = [1, 2, 3, 2, 1, 3]
    return [(torch.randn(n, 4), torch.randint(0, 4, (n,))) for n in rows]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_equals_alone(case):
    op = CASES[case]

    def fn(example):
        x, t = example
        return op(LIN(x), t)

    assert_batched_equals_alone(fn, _examples(), PARAMS)


@pytest.mark.parametrize(
    "case", ["arith", "sum", "norm", "softmax", "getitem", "cat", "matmul", "vmap"]
)
def test_rule_on_vectors_equals_alone(case):
    """Per-example values without a leading row dim ([4]): the STACK layout."""
    if case in ("softmax", "getitem", "matmul"):
        op = {
            "softmax": lambda h: F.softmax(h, 0) + h.log_softmax(-1),
            "getitem": lambda h: (h[1:3], h[0], h[None]),
            "matmul": lambda h: (h @ W, W.t() @ h, h @ h),
        }[case]
    else:
        op = {
            "arith": lambda h: h * 2 + B,
            "sum": lambda h: h.sum() + h.mean(0),
            "norm": lambda h: h.norm(),
            "cat": lambda h: torch.cat([h, h], 0),
            "vmap": lambda h: torch.outer(h, h),
        }[case]
    torch.manual_seed(7)
    xs = [torch.randn(4) for _ in range(5)]
    assert_batched_equals_alone(lambda x: op(LIN(x)), xs, PARAMS)


def test_grouped_batches_are_what_the_rules_say():
    """One FLAT batch for ragged rows; STACK splits by shape; composites cost no call."""
    from dynamic.autobatch import autobatch

    f = autobatch(lambda e: torch.stack([LIN(e[0]), LIN(e[0]) * 2], -1).sum(), profile=True)
    f.map(_examples())  # the first run pauses once per new signature to learn its outputs
    f.map(_examples())
    by_name = {s.name.split(" ")[0]: s for s in f.profile.signatures.values()}
    assert by_name["Linear"].batches == 1 and by_name["Linear"].calls == 12
    assert by_name["Tensor.sum"].batches == 1  # ragged rows, one segment sum
    assert "stack" not in by_name  # the stack was gathered by its consumer
