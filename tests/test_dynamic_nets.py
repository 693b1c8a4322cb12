"""Properties of the dynamic nets: weight sharing across depth, per-sample batching, halting."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic import HaltingNet, RandomBranchNet, RandomDepthNet
from dynamic.nets import run_grouped

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")
seeds = st.integers(0, 2**31 - 1)
batch_sizes = st.integers(1, 12)


def _inputs(seed: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [batch, 784] float64 and labels [batch], from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 784, generator=g, dtype=torch.float64), torch.randint(
        10, (batch,), generator=g
    )


def _grads(net: torch.nn.Module) -> list[torch.Tensor]:
    """Each parameter's gradient, zeros where backward never reached it."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]


def _net(cls, seed: int, **kw):
    torch.manual_seed(seed)
    return cls(**kw).double()


# ----------------------------------------------------------------------------- RandomDepthNet


@FAST
@given(seed=seeds, batch=batch_sizes, per_sample=st.booleans())
def test_depth_zero_leaves_shared_gradient_zero(seed, batch, per_sample):
    """A pass in which every sample has depth 0 gives the shared layer no gradient."""
    net = _net(RandomDepthNet, seed)
    x, y = _inputs(seed, batch)
    depth = torch.zeros(batch, dtype=torch.long) if per_sample else 0
    F.nll_loss(net(x, depth), y).backward()
    for p in net.hidden_layer.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert torch.count_nonzero(net.input_layer.weight.grad) > 0


@FAST
@given(seed=seeds, batch=batch_sizes, depth=st.integers(0, 3))
def test_shared_gradient_is_sum_of_per_use_contributions(seed, batch, depth):
    """With k reuses, the shared layer's gradient equals the sum of k per-use gradients."""
    net = _net(RandomDepthNet, seed)
    x, y = _inputs(seed, batch)
    F.nll_loss(net(x, depth), y).backward()

    # The same pass with an independent copy of the shared weights for each use.
    W, b = net.hidden_layer.weight.detach(), net.hidden_layer.bias.detach()
    copies = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for _ in range(depth)]
    h = F.relu(net.input_layer(x))
    for Wk, bk in copies:
        h = F.relu(F.linear(h, Wk, bk))
    F.nll_loss(F.log_softmax(net.output_layer(h), dim=1), y).backward()

    want_W = sum((Wk.grad for Wk, _ in copies), torch.zeros_like(W))
    want_b = sum((bk.grad for _, bk in copies), torch.zeros_like(b))
    got_W = net.hidden_layer.weight.grad
    got_b = net.hidden_layer.bias.grad
    if depth == 0:
        assert got_W is None
    else:
        torch.testing.assert_close(got_W, want_W, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_b, want_b, rtol=1e-10, atol=1e-12)


def test_parameter_count_does_not_depend_on_depth():
    """The parameter count is fixed by construction: no depth drawn (or allowed) adds any."""
    expected = (784 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    net = RandomDepthNet()
    before = {k: v.shape for k, v in net.state_dict().items()}
    x = torch.randn(5, 784)
    for depth in range(4):
        net(x, depth)
        assert sum(p.numel() for p in net.parameters()) == expected
    assert {k: v.shape for k, v in net.state_dict().items()} == before
    assert sum(p.numel() for p in RandomDepthNet(max_depth=20).parameters()) == expected


@FAST
@given(seed=seeds, batch=batch_sizes, faithful=st.booleans())
def test_depth_per_sample_equals_one_by_one(seed, batch, faithful):
    """Per-sample depths run grouped equal each sample run alone at its own depth."""
    net = _net(RandomDepthNet, seed, faithful=faithful)
    x, _ = _inputs(seed, batch)
    depth = net.draw(batch, torch.Generator().manual_seed(seed), per_sample=True)
    out = net(x, depth)
    for i in range(batch):
        torch.testing.assert_close(out[i : i + 1], net(x[i : i + 1], int(depth[i])))


@FAST
@given(seed=seeds, batch=batch_sizes)
def test_grouped_gradients_equal_one_by_one(seed, batch):
    """Gradients of a grouped per-sample pass equal the sum of the one-by-one gradients."""
    net = _net(RandomDepthNet, seed)
    x, y = _inputs(seed, batch)
    depth = net.draw(batch, torch.Generator().manual_seed(seed + 1), per_sample=True)
    F.nll_loss(net(x, depth), y, reduction="sum").backward()
    grouped = _grads(net)
    net.zero_grad()
    for i in range(batch):
        F.nll_loss(net(x[i : i + 1], int(depth[i])), y[i : i + 1], reduction="sum").backward()
    for got, want in zip(grouped, _grads(net), strict=True):
        torch.testing.assert_close(got, want)


def test_draws_come_only_from_the_generator():
    """The same generator state replays the same pass; no draw touches the global RNG."""
    net = RandomDepthNet()
    x = torch.randn(16, 784)
    for per_sample in (False, True):
        a = net(x, generator=torch.Generator().manual_seed(3), per_sample=per_sample)
        torch.manual_seed(0)
        state = torch.get_rng_state()
        b = net(x, generator=torch.Generator().manual_seed(3), per_sample=per_sample)
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="generator"):
        net(x)
    with pytest.raises(ValueError):
        net(x, 4)
    with pytest.raises(ValueError):
        net(x, torch.zeros(3, dtype=torch.long))


def test_faithful_depth_net_applies_relu_before_log_softmax():
    """Faithful mode clips the output logits at 0 (the tutorial's output ReLU); default doesn't."""
    torch.manual_seed(0)
    default = RandomDepthNet()
    faithful = RandomDepthNet(faithful=True)
    faithful.load_state_dict(default.state_dict())
    x = torch.randn(8, 784)
    logits = default.output_layer(F.relu(default.input_layer(x)))
    torch.testing.assert_close(default(x, 0), F.log_softmax(logits, 1))
    torch.testing.assert_close(faithful(x, 0), F.log_softmax(F.relu(logits), 1))


# ----------------------------------------------------------------------------- RandomBranchNet


@FAST
@given(seed=seeds, batch=batch_sizes, faithful=st.booleans())
def test_branch_per_sample_equals_one_by_one(seed, batch, faithful):
    """Per-sample branches run grouped equal each sample run alone on its own branch."""
    net = _net(RandomBranchNet, seed, faithful=faithful)
    x, _ = _inputs(seed, batch)
    branch = net.draw(batch, torch.Generator().manual_seed(seed), per_sample=True)
    out = net(x, branch)
    assert out.shape[1] == max(net.output_width(int(b)) for b in branch)
    for i in range(batch):
        alone = net(x[i : i + 1], int(branch[i]))
        width = alone.shape[1]
        torch.testing.assert_close(out[i : i + 1, :width], alone)
        assert torch.all(out[i, width:] == -math.inf)  # padding: classes of zero mass


def test_faithful_branch_reproduces_the_300_100_column_quirk():
    """Faithful branches 1-3 give log-softmax over 300/100 columns and can predict classes >= 10."""
    torch.manual_seed(0)
    net = RandomBranchNet(faithful=True)
    x = torch.randn(6, 784)
    widths = [net(x, b).shape[1] for b in range(4)]
    assert widths == [10, 300, 100, 100]
    for b in range(4):
        out = net(x, b)
        torch.testing.assert_close(out.logsumexp(1), torch.zeros(6))  # normalised over W columns
    # Branch 1 ends in a ReLU'd 300-wide hidden layer: push one column up and it wins.
    with torch.no_grad():
        net.branch_layers[0].bias[250] = 1e3
    assert torch.all(net(x, 1).argmax(1) == 250)
    # The well-formed net always ends in a 10-way layer.
    wellformed = RandomBranchNet()
    assert [wellformed(x, b).shape[1] for b in range(4)] == [10, 10, 10, 10]


def test_branch_faithful_per_sample_trains_with_padding():
    """NLL through -inf padded rows is finite and its gradient has no NaN."""
    torch.manual_seed(0)
    net = RandomBranchNet(faithful=True)
    x, y = torch.randn(12, 784), torch.randint(10, (12,))
    branch = torch.tensor([0, 1, 2, 3] * 3)
    loss = F.nll_loss(net(x, branch), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------- HaltingNet


def _doubling_halting_net(h0_norms: list[float], threshold: float, max_steps: int) -> HaltingNet:
    """A halting net whose loop doubles ||h|| each step, with sample i starting at h0_norms[i].

    Input i is the one-hot pixel i; the input layer maps it to h0_norms[i] * e_0.
    """
    net = HaltingNet(hidden=4, threshold=threshold, max_steps=max_steps).double()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for i, n in enumerate(h0_norms):
            net.input_layer.weight[0, i] = n
        net.hidden_layer.weight.copy_(2 * torch.eye(4))
    return net


@FAST
@given(
    norms=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=10),
    threshold=st.floats(0.1, 1000.0),
    max_steps=st.integers(0, 12),
)
def test_halting_stops_each_sample_at_the_right_step(norms, threshold, max_steps):
    """Each sample stops at min(max_steps, first t with 2^t * ||h0|| >= threshold)."""
    net = _doubling_halting_net(norms, threshold, max_steps)
    x = torch.eye(len(norms), 784, dtype=torch.float64)
    _, steps = net(x, return_steps=True)
    for n, s in zip(norms, steps.tolist(), strict=True):
        t = 0
        while n * 2**t < threshold and t < max_steps:  # the loop, one sample at a time
            t += 1
        assert s == t


@FAST
@given(seed=seeds, batch=batch_sizes, threshold=st.floats(0.0, 20.0))
def test_halting_batched_equals_one_by_one(seed, batch, threshold):
    """Batched halting with an active mask equals running each sample's loop alone."""
    net = _net(HaltingNet, seed, threshold=threshold, max_steps=5)
    with torch.no_grad():  # a loop that grows ||h||, so samples stop at different steps
        net.hidden_layer.weight.mul_(6.0)
    x, _ = _inputs(seed, batch)
    out, steps = net(x, return_steps=True)
    for i in range(batch):
        alone, s = net(x[i : i + 1], return_steps=True)
        torch.testing.assert_close(out[i : i + 1], alone)
        assert int(steps[i]) == int(s)


def test_halting_never_loops_forever():
    """An unreachable threshold (inf, or a loop that zeroes h) stops every sample at max_steps."""
    x = torch.randn(7, 784)
    net = HaltingNet(threshold=math.inf, max_steps=6)
    _, steps = net(x, return_steps=True)
    assert steps.tolist() == [6] * 7
    with torch.no_grad():  # h0 = 0 and the loop keeps it 0: ||h|| < 1 forever
        for p in [*net.input_layer.parameters(), *net.hidden_layer.parameters()]:
            p.zero_()
    net.threshold = 1.0
    _, steps = net(x, return_steps=True)
    assert steps.tolist() == [6] * 7
    _, steps = HaltingNet(max_steps=0)(x, return_steps=True)
    assert steps.tolist() == [0] * 7
    with pytest.raises(ValueError):
        HaltingNet(max_steps=-1)


def test_halting_faithful_uses_one_batch_norm():
    """Faithful halting tests the norm of the whole batch tensor: all samples take one count."""
    net = _doubling_halting_net([1.0, 8.0], threshold=10.0, max_steps=10)
    net.faithful = True
    _, steps = net(torch.eye(2, 784, dtype=torch.float64), return_steps=True)
    # ||[1, 8]|| = 8.06 -> one doubling reaches 16.1 >= 10.
    assert steps.tolist() == [1, 1]


def test_run_grouped_keeps_order_and_handles_missing_groups():
    """Rows come back in input order, whichever groups are empty."""
    h = torch.arange(10.0).unsqueeze(1)
    choice = torch.tensor([3, 0, 3, 3, 0, 0, 3, 0, 3, 3])
    out = run_grouped(h, choice, 4, lambda part, c: part * 10 + c)
    torch.testing.assert_close(out, h * 10 + choice.unsqueeze(1).float())
