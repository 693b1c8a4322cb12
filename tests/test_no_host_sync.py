"""The level-batched path never waits for the device: on a GPU, a tensor read back by Python
(`.item()`, `bool(t)`, `.tolist()`, ...) or an op whose output size depends on values
(`nonzero`, boolean masks) stalls the CPU until all queued kernels finish. These tests record
every tensor operation of a forward and backward pass on the CPU (a TorchFunctionMode sees the
same calls there as on CUDA) and fail on any that would synchronise.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from treelstm import kernels
from treelstm.cells import ChildSumCell, NaryCell
from treelstm.executor import run
from treelstm.models import BiTreeLSTM, TreeLSTM
from treelstm.schedule import build_schedule
from treelstm.tree import Tree

# Tensor -> Python conversions and ops whose output shape depends on tensor values.
SYNCING = {
    "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "numpy",
    "cpu", "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
    "repeat_interleave", "equal", "allclose",
}  # fmt: skip


class SyncSpy(TorchFunctionMode):
    """Records the name of every tensor operation; `.syncing` lists those that sync."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in ("__getitem__", "__setitem__") and _has_bool_index(args[1:2]):
            name += "[bool mask]"
        self.calls.append(name)
        return func(*args, **kwargs)

    @property
    def syncing(self) -> list[str]:
        return [c for c in self.calls if c in SYNCING or c.endswith("[bool mask]")]


def _has_bool_index(idx) -> bool:
    items = idx[0] if idx and isinstance(idx[0], tuple) else idx
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def test_the_spy_catches_what_it_must():
    """The recorder is not blind: it sees a boolean mask, `.item()` and ops inside backward."""
    x = torch.randn(4, requires_grad=True)
    with SyncSpy() as spy:
        (x[x > 0].sum() * 2).item()
        torch.autograd.grad((x.exp()).sum(), x)
    assert spy.syncing == ["__getitem__[bool mask]", "item"]
    assert "exp" in spy.calls


TREES = [
    "(3 (2 (1 a) (2 b)) (4 (3 c) (1 (2 d) (2 e))))",
    "(1 (0 f) (2 g))",
    "(2 h)",
]


@pytest.fixture
def torch_kernels():
    """The PyTorch level kernels: the ones a GPU runs (the CPU may take the native ones)."""
    old = kernels.set_native(False)
    yield
    kernels.set_native(old)


@pytest.mark.usefixtures("torch_kernels")
@pytest.mark.parametrize("kind", ["childsum", "nary"])
@pytest.mark.parametrize("strategy", ["level", "level_autograd"])
@pytest.mark.parametrize("switches", [{}, {"input_at": "leaves", "output_gate": False}])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_level_strategies_never_sync_forward_or_backward(kind, strategy, switches, direction):
    """Forward and backward of a batch of trees call nothing that reads device values,
    bottom-up and top-down (the fused kernels and the generic loops)."""
    trees = [Tree.from_ptb(s) for s in TREES]
    sched = build_schedule(trees)
    torch.manual_seed(0)
    n_ary = 1 if direction == "down" else 2
    cell = (
        ChildSumCell(5, 6, **switches) if kind == "childsum" else NaryCell(5, 6, n_ary, **switches)
    )
    x = torch.randn(sched.num_nodes, 5, requires_grad=True)
    with SyncSpy() as spy:
        h, c = run(cell, sched, x, strategy, direction=direction)
        (h.sum() + c.square().sum()).backward()
    assert spy.calls, "nothing recorded"
    assert spy.syncing == [], f"host synchronisation in the {strategy} path: {spy.syncing}"
    with SyncSpy() as spy, torch.no_grad():  # the forward that skips the gate factors
        run(cell, sched, x, strategy, direction=direction)
    assert spy.calls and spy.syncing == [], spy.syncing


@pytest.mark.usefixtures("torch_kernels")
@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_the_encoder_never_syncs(kind):
    """TreeLSTM (embedding lookup, leaf mask, level loop, roots) is free of syncs too."""
    trees = [Tree.from_ptb(s) for s in TREES]
    sched = build_schedule(trees, {w: i for i, w in enumerate("abcdefgh")})
    torch.manual_seed(0)
    cell = ChildSumCell(5, 6) if kind == "childsum" else NaryCell(5, 6, n_ary=2)
    enc = TreeLSTM(8, cell)
    with SyncSpy() as spy:
        out = enc(sched)
        out.root_h.sum().backward()
    assert spy.syncing == [], spy.syncing


@pytest.mark.usefixtures("torch_kernels")
def test_the_bidirectional_encoder_never_syncs():
    """BiTreeLSTM: the up pass, the depth layout (built on the device from the schedule's
    integer tensors on first use) and the top-down pass, forward and backward."""
    trees = [Tree.from_ptb(s) for s in TREES]
    sched = build_schedule(trees, {w: i for i, w in enumerate("abcdefgh")})
    torch.manual_seed(0)
    enc = BiTreeLSTM(8, ChildSumCell(5, 6), ChildSumCell(6, 4))
    with SyncSpy() as spy:
        out = enc(sched)
        out.root_h.sum().backward()
    assert spy.calls and spy.syncing == [], spy.syncing
