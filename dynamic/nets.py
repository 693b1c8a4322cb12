"""Nets whose structure is drawn on every forward pass: the "Dynamic Graphs" MNIST demos.

PyTorch records the autograd graph while `forward` runs, so ordinary Python control flow decides
the architecture of each pass and backward follows whatever was actually run:

- `RandomDepthNet`: ONE shared hidden layer applied k times, k in 0..3 (weights shared across
  depth, so the gradient of the shared layer is the sum over its uses).
- `RandomBranchNet`: a coin 0..3 picks a branch of 0-3 distinct layers (100->300, 300->100,
  100->100).
- `HaltingNet`: the data-dependent loop `while ||h||_2 < threshold: h = layer(h)`, one stopping
  step per sample, capped at `max_steps`.

Randomness is passed in, never drawn from the global RNG: `depth` / `branch` is an int (one draw
for the whole batch, as in the tutorial) or a LongTensor [B] (one draw per sample), or a
`torch.Generator` is given and the draw is made from it. Any pass can therefore be replayed.

Per-sample draws run batched: samples are grouped by their draw, each group runs as one
sub-batch, and the rows are put back in their original order. That equals running the samples
one at a time (the tests check it) at the cost of one pass per distinct draw instead of one per
sample.

`faithful=True` keeps the tutorial's quirks: a ReLU on the output layer before log-softmax, and
for the branch net, branches 1-3 that never reach the 10-way layer (log-softmax over 300 or 100
columns, so classes >= 10 can be predicted). The default is the well-formed variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RandomDepthNet", "RandomBranchNet", "HaltingNet", "draw_choices", "run_grouped"]

N_PIXELS = 28 * 28
N_CLASSES = 10


def draw_choices(
    n_choices: int, batch_size: int, generator: torch.Generator, per_sample: bool = False
) -> int | Tensor:
    """Draw uniformly from 0..n_choices-1 with `generator`.

    Returns an int (one draw for the batch) or, with `per_sample`, a LongTensor [batch_size]
    on the generator's device.
    """
    if per_sample:
        return torch.randint(n_choices, (batch_size,), generator=generator, device=generator.device)
    return int(torch.randint(n_choices, (1,), generator=generator, device=generator.device))


def _resolve_choice(
    choice: int | Tensor | None,
    n_choices: int,
    batch_size: int,
    generator: torch.Generator | None,
    per_sample: bool,
    name: str,
) -> int | Tensor:
    """Check a passed-in draw, or make one from `generator`; int for per batch, [B] per sample."""
    if choice is None:
        if generator is None:
            # Forward never falls back to the global RNG: a pass must be replayable.
            raise TypeError(f"pass {name}=<int or LongTensor [B]> or generator=torch.Generator")
        choice = draw_choices(n_choices, batch_size, generator, per_sample)
    if isinstance(choice, Tensor):
        if choice.dim() == 0:
            choice = int(choice)
        else:
            if choice.shape != (batch_size,) or choice.is_floating_point():
                raise ValueError(
                    f"{name} must be an int or an integer tensor of shape [{batch_size}], "
                    f"got {tuple(choice.shape)} {choice.dtype}"
                )
            if batch_size and not (0 <= int(choice.min()) and int(choice.max()) < n_choices):
                raise ValueError(f"{name} values must lie in 0..{n_choices - 1}")
            return choice.long()
    if not 0 <= choice < n_choices:
        raise ValueError(f"{name} must lie in 0..{n_choices - 1}, got {choice}")
    return int(choice)


def run_grouped(
    h: Tensor, choice: Tensor, n_choices: int, fn: Callable[[Tensor, int], Tensor]
) -> Tensor:
    """Run `fn(h_group, c)` once per distinct draw c; return the rows in their original order.

    h: [B, D]; choice: LongTensor [B] with values in 0..n_choices-1; fn maps [b, D] -> [b, W_c].
    Returns [B, max_c W_c]. Groups narrower than the widest are right-padded with -inf: the
    outputs are log-probabilities, and -inf is a class of zero mass, so argmax and NLL of the real
    columns are untouched (only the faithful branch net has groups of different widths).
    """
    choice = choice.to(h.device)
    # One stable sort puts each group in a contiguous slice; bincount gives the slice sizes
    # with a single host sync for all groups.
    order = torch.argsort(choice, stable=True)
    counts = torch.bincount(choice, minlength=n_choices).tolist()
    parts = [
        fn(part, c)
        for c, part in enumerate(h.index_select(0, order).split(counts))
        if part.shape[0] > 0
    ]
    if not parts:  # empty batch
        return fn(h, 0)
    width = max(p.shape[1] for p in parts)
    parts = [F.pad(p, (0, width - p.shape[1]), value=-math.inf) for p in parts]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    # A gather (not an indexed write) keeps autograd to one cheap IndexBackward.
    return torch.cat(parts).index_select(0, inverse)


def _flatten(x: Tensor) -> Tensor:
    """[B, 1, 28, 28] or [B, 784] -> [B, 784]."""
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != N_PIXELS:
        raise ValueError(f"expected {N_PIXELS} pixels per sample, got {x.shape[1]}")
    return x


class RandomDepthNet(nn.Module):
    """784 -> hidden (ReLU) -> [shared hidden -> hidden (ReLU)] x depth -> 10 -> log-softmax.

    depth is drawn per pass from 0..max_depth. The hidden layer is ONE module used `depth`
    times, so the parameter count does not depend on the depth drawn. `faithful=True` adds the
    tutorial's ReLU on the output layer (it clips negative logits to 0 before log-softmax).

    forward(x [B, 784] or [B, 1, 28, 28], depth=int | LongTensor [B] | None, generator=...,
    per_sample=False) -> log-probabilities [B, 10].
    """

    def __init__(self, hidden: int = 100, max_depth: int = 3, faithful: bool = False):
        super().__init__()
        self.input_layer = nn.Linear(N_PIXELS, hidden)
        self.hidden_layer = nn.Linear(hidden, hidden)
        self.output_layer = nn.Linear(hidden, N_CLASSES)
        self.max_depth = max_depth
        self.faithful = faithful

    @property
    def n_choices(self) -> int:
        """Number of possible draws (depths 0..max_depth)."""
        return self.max_depth + 1

    def draw(
        self, batch_size: int, generator: torch.Generator, per_sample: bool = False
    ) -> int | Tensor:
        """A depth for the batch (int) or one per sample (LongTensor [batch_size])."""
        return draw_choices(self.n_choices, batch_size, generator, per_sample)

    def _repeat(self, h: Tensor, depth: int) -> Tensor:
        """[b, hidden] -> [b, hidden]: the shared layer applied `depth` times."""
        for _ in range(depth):
            h = F.relu(self.hidden_layer(h))
        return h

    def forward(
        self,
        x: Tensor,
        depth: int | Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        per_sample: bool = False,
    ) -> Tensor:
        h = F.relu(self.input_layer(_flatten(x)))
        depth = _resolve_choice(depth, self.n_choices, h.shape[0], generator, per_sample, "depth")
        if isinstance(depth, int):
            h = self._repeat(h, depth)
        else:
            # Only the variable middle is grouped; input and output layers run once for all.
            h = run_grouped(h, depth, self.n_choices, self._repeat)
        z = self.output_layer(h)
        if self.faithful:
            z = F.relu(z)
        return F.log_softmax(z, dim=1)


class RandomBranchNet(nn.Module):
    """784 -> 100 (ReLU) -> branch b in 0..3 -> log-softmax.

    Branch b runs the first b of the layers 100->300, 300->100, 100->100 (each with ReLU):

    - default (well-formed): every branch ends in a 10-way layer; branch 1 ends 300 wide, so it
      has its own 300->10 layer (`output_layer_wide`), the others share `output_layer` (100->10).
      Returns [B, 10].
    - faithful: as in the tutorial, only branch 0 ends in the 10-way layer (with a ReLU);
      branches 1-3 take log-softmax over their 300 or 100 hidden columns. Returns [B, W] with
      W = 10, 300, 100, 100 for b = 0..3; per-sample draws pad narrower rows with -inf to the
      widest branch drawn. A prediction >= 10 is an impossible class.

    forward(x, branch=int | LongTensor [B] | None, generator=..., per_sample=False).
    """

    n_choices = 4
    widths = (100, 300, 100, 100)  # hidden width after 0, 1, 2, 3 branch layers

    def __init__(self, faithful: bool = False):
        super().__init__()
        self.input_layer = nn.Linear(N_PIXELS, 100)
        self.branch_layers = nn.ModuleList(
            [nn.Linear(100, 300), nn.Linear(300, 100), nn.Linear(100, 100)]
        )
        self.output_layer = nn.Linear(100, N_CLASSES)
        if not faithful:
            self.output_layer_wide = nn.Linear(300, N_CLASSES)
        self.faithful = faithful

    def draw(
        self, batch_size: int, generator: torch.Generator, per_sample: bool = False
    ) -> int | Tensor:
        """A branch for the batch (int) or one per sample (LongTensor [batch_size])."""
        return draw_choices(self.n_choices, batch_size, generator, per_sample)

    def output_width(self, branch: int) -> int:
        """Columns of the log-softmax for `branch`: 10, or the tutorial's 300/100 when faithful."""
        if self.faithful and branch > 0:
            return self.widths[branch]
        return N_CLASSES

    def _branch(self, h: Tensor, branch: int) -> Tensor:
        """[b, 100] -> log-probabilities [b, output_width(branch)]."""
        for layer in self.branch_layers[:branch]:
            h = F.relu(layer(h))
        if self.faithful:
            # The tutorial's quirk: branches 1-3 never reach the 10-way layer.
            z = F.relu(self.output_layer(h)) if branch == 0 else h
        elif branch == 1:  # the only branch that ends 300 wide
            z = self.output_layer_wide(h)
        else:
            z = self.output_layer(h)
        return F.log_softmax(z, dim=1)

    def forward(
        self,
        x: Tensor,
        branch: int | Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        per_sample: bool = False,
    ) -> Tensor:
        h = F.relu(self.input_layer(_flatten(x)))
        branch = _resolve_choice(
            branch, self.n_choices, h.shape[0], generator, per_sample, "branch"
        )
        if isinstance(branch, int):
            return self._branch(h, branch)
        return run_grouped(h, branch, self.n_choices, self._branch)


class HaltingNet(nn.Module):
    """784 -> hidden (ReLU) -> while ||h||_2 < threshold: h = ReLU(shared(h)) -> 10 -> log-softmax.

    The tutorial's `while x.norm(2) < 10: x = layer(x)` made batchable: each sample stops on its
    own (a row stops once its norm reaches `threshold`), and no sample takes more than
    `max_steps` steps, so the loop always ends. Only rows still running are computed at each
    step (an active set), which equals running the samples one at a time.

    `faithful=True` takes the tutorial's snippet literally: one norm over the whole batch tensor
    decides for every sample, and the output layer has a ReLU.

    forward(x [B, 784] or [B, 1, 28, 28], return_steps=False) -> log-probabilities [B, 10], and
    with `return_steps` also the steps each sample took, LongTensor [B].
    """

    def __init__(
        self,
        hidden: int = 100,
        threshold: float = 10.0,
        max_steps: int = 10,
        faithful: bool = False,
    ):
        super().__init__()
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        self.input_layer = nn.Linear(N_PIXELS, hidden)
        self.hidden_layer = nn.Linear(hidden, hidden)
        self.output_layer = nn.Linear(hidden, N_CLASSES)
        self.threshold = float(threshold)
        self.max_steps = max_steps
        self.faithful = faithful

    def _halt(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """[B, hidden] -> (h after each row's own loop [B, hidden], steps LongTensor [B])."""
        steps = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        if self.faithful:
            n = 0
            while n < self.max_steps and h.norm(2) < self.threshold:
                h = F.relu(self.hidden_layer(h))
                n += 1
            return h, steps.fill_(n)
        for _ in range(self.max_steps):
            # A row that has stopped is never updated again, so its norm stays >= threshold
            # and it stays stopped: recomputing the test on all rows is enough.
            active = (h.norm(2, dim=1) < self.threshold).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            new = F.relu(self.hidden_layer(h.index_select(0, active)))
            h = h.index_copy(0, active, new)  # out of place: autograd keeps the old rows
            steps[active] += 1
        return h, steps

    def forward(self, x: Tensor, *, return_steps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = F.relu(self.input_layer(_flatten(x)))
        h, steps = self._halt(h)
        z = self.output_layer(h)
        if self.faithful:
            z = F.relu(z)
        logp = F.log_softmax(z, dim=1)
        return (logp, steps) if return_steps else logp
