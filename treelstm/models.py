"""Models built on a Tree-LSTM (Tai, Socher & Manning 2015): the encoders a user drops into a
model, and the task heads that sit on top of them.

    schedule --(embed tokens)--> x [N, E] --(cell, level by level)--> h, c [N, H] --> head

`TreeLSTM` runs one cell bottom-up (or top-down); `BiTreeLSTM` runs a cell bottom-up, then a
second one top-down over the first one's states (the bidirectional Tree-LSTM of Teng & Zhang
2017, "Head-Lexicalized Bidirectional Tree LSTMs", TACL): each node ends up with a summary of
its subtree and of everything around it. `build_cell` makes a cell from its name or from a
user's ``module:factory``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .cells import ChildSumCell, NaryCell, check_cell
from .executor import run
from .schedule import Schedule
from .tree import Tree

__all__ = [
    "BiTreeLSTM",
    "Encoded",
    "TreeLSTM",
    "build_cell",
    "cell_factory",
    "cell_n_ary",
    "SentimentModel",
    "RelatednessModel",
    "relatedness_target",
    "relatedness_loss",
]


class Encoded(NamedTuple):
    """What `TreeLSTM` returns: every node's states and the roots' hidden states."""

    h: Tensor  # [N, H] in schedule order
    c: Tensor | None  # [N, H]; None for a cell that returns h alone
    root_h: Tensor  # [B, H] in the order the trees were given


class TreeLSTM(nn.Module):
    """Embedding + Tree-LSTM cell + executor: ``encoder(schedule) -> Encoded(h, c, root_h)``.

    num_embeddings  vocabulary size V = len(vocab): token ids 0..V-1 come from the schedule
                    (-1 = no word, which reads a zero vector: one extra padding row is kept at
                    index V). A schedule with a token id >= V raises ValueError.
    cell            a `ChildSumCell`, `NaryCell` or any cell of the protocol (`treelstm.cells`).
    strategy        executor strategy (see `treelstm.executor.STRATEGIES`); "level" is fast.
    direction       "up" (leaves to roots, the Tree-LSTM) or "down" (roots to leaves).
    embeddings      optional pretrained [num_embeddings, E] vectors to start from.
    freeze_embeddings  keep the embedding fixed (the reference code's SICK setting).
    """

    def __init__(
        self,
        num_embeddings: int,
        cell: nn.Module,
        *,
        strategy: str = "level",
        direction: str = "up",
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        check_cell(cell)
        E = cell.input_size
        self.embedding = nn.Embedding(num_embeddings + 1, E, padding_idx=num_embeddings)
        if embeddings is not None:
            if tuple(embeddings.shape) != (num_embeddings, E):
                raise ValueError(
                    f"embeddings must be [{num_embeddings}, {E}], got {tuple(embeddings.shape)}"
                )
            with torch.no_grad():
                self.embedding.weight[:num_embeddings] = embeddings
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.cell = cell
        self.strategy = strategy
        self.direction = direction

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def embed(self, schedule: Schedule) -> Tensor:
        """x [N, E]: each node's word vector, zeros for nodes without a word."""
        _check_schedule(schedule)
        tokens = schedule.tokens
        pad = self.embedding.padding_idx
        # max_token is a Python int from build_schedule: this check reads nothing back from
        # the device. Without it, id V would silently read the zero padding row.
        if schedule.max_token >= pad:
            raise ValueError(
                f"token id {schedule.max_token} in this batch, but TreeLSTM(num_embeddings={pad}) "
                f"has ids 0..{pad - 1}: pass the vocabulary size, len(vocab), not its largest id"
            )
        return self.embedding(torch.where(tokens >= 0, tokens, pad))

    def forward(self, schedule: Schedule, strategy: str | None = None) -> Encoded:
        """schedule (from `build_schedule`) -> Encoded(h [N, H], c [N, H], root_h [B, H])."""
        x = self.embed(schedule)
        h, c = run(self.cell, schedule, x, strategy or self.strategy, direction=self.direction)
        return Encoded(h, c, h[schedule.roots])


class BiTreeLSTM(nn.Module):
    """Embedding + a bottom-up cell + a top-down cell: ``encoder(schedule) -> Encoded`` with
    h = [h_up | h_down] [N, H_up + H_down] at every node (c likewise; None if a cell returns h
    alone), root_h = h at the roots.

    up_cell    runs from the leaves to the roots over the word vectors (as in `TreeLSTM`).
    down_cell  runs from the roots to the leaves: a node's input is its own h_up
               (``down_cell.input_size == up_cell.hidden_size``), its one child slot holds its
               parent's down state (masked out at the roots). A `ChildSumCell` or an
               ``NaryCell(n_ary=1)`` runs on the fused top-down kernel.
    The rest as `TreeLSTM`. Per-node reference: `treelstm.executor.evaluate_bidirectional`.
    """

    def __init__(
        self,
        num_embeddings: int,
        up_cell: nn.Module,
        down_cell: nn.Module,
        *,
        strategy: str = "level",
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        check_cell(down_cell)
        self.up = TreeLSTM(
            num_embeddings,
            up_cell,
            strategy=strategy,
            embeddings=embeddings,
            freeze_embeddings=freeze_embeddings,
        )
        if down_cell.input_size != up_cell.hidden_size:
            raise ValueError(
                f"the top-down cell reads each node's bottom-up h: down_cell.input_size must be "
                f"up_cell.hidden_size = {up_cell.hidden_size}, got {down_cell.input_size}"
            )
        self.down_cell = down_cell

    @property
    def hidden_size(self) -> int:
        return self.up.hidden_size + self.down_cell.hidden_size

    @property
    def strategy(self) -> str:
        return self.up.strategy

    def embed(self, schedule: Schedule) -> Tensor:
        return self.up.embed(schedule)

    def forward(self, schedule: Schedule, strategy: str | None = None) -> Encoded:
        """schedule -> Encoded(h [N, H_up + H_down], c, root_h [B, H_up + H_down])."""
        strategy = strategy or self.up.strategy
        up = self.up(schedule, strategy)
        h_down, c_down = run(self.down_cell, schedule, up.h, strategy, direction="down")
        h = torch.cat([up.h, h_down], 1)
        c = None if up.c is None or c_down is None else torch.cat([up.c, c_down], 1)
        return Encoded(h, c, h[schedule.roots])


def _check_schedule(schedule) -> None:
    """A model takes a Schedule; a list of trees is the usual mistake, named as such."""
    if isinstance(schedule, Schedule):
        return
    if isinstance(schedule, list | tuple | Tree):
        what = "a Tree" if isinstance(schedule, Tree) else f"a {type(schedule).__name__} of trees"
        raise TypeError(
            f"a Tree-LSTM model takes a Schedule, not {what}: batch the trees first with "
            "build_schedule(trees, vocab) (or collate(vocab) as a DataLoader collate_fn)"
        )
    raise TypeError(
        f"a Tree-LSTM model takes a Schedule (from build_schedule), not a {type(schedule).__name__}"
    )


# ------------------------------------------------------------------------------------- cells

BUILT_IN_CELLS = ("nary", "childsum")


def cell_factory(spec: str) -> Callable[[int, int], nn.Module]:
    """The factory a ``"module:factory"`` spec names (``factory`` may be dotted: ``mod:Cls.make``),
    imported now. Raises ValueError, one line saying what to fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"cell {spec!r}: expected one of {', '.join(BUILT_IN_CELLS)} or 'module:factory' "
            "(a function or class taking (input_size, hidden_size) and returning a cell)"
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cell {spec!r}: cannot import module {module_name!r} ({e}); put its folder on "
            "PYTHONPATH (or install it)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"cell {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"cell {spec!r}: {attr} is a {type(obj).__name__}, not callable")
    return obj


def build_cell(spec: str, input_size: int, hidden_size: int, **switches) -> nn.Module:
    """A cell from its name: "nary" (binary `NaryCell`), "childsum" (`ChildSumCell`), both with
    the cell `switches` (input_at=..., output_gate=...), or a user's "module:factory", called as
    ``factory(input_size, hidden_size)`` (switches do not apply) and checked against the cell
    protocol. Raises ValueError naming what is wrong."""
    if spec == "nary":
        return NaryCell(input_size, hidden_size, n_ary=2, **switches)
    if spec == "childsum":
        return ChildSumCell(input_size, hidden_size, **switches)
    cell = cell_factory(spec)(input_size, hidden_size)
    try:
        check_cell(cell)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cell {spec!r} made a {type(cell).__name__}: {e}") from None
    if (cell.input_size, cell.hidden_size) != (input_size, hidden_size):
        raise ValueError(
            f"cell {spec!r} was asked for input_size={input_size}, hidden_size={hidden_size} "
            f"and made a cell with {cell.input_size}, {cell.hidden_size}"
        )
    if not isinstance(cell, nn.Module):
        raise ValueError(f"cell {spec!r} made a {type(cell).__name__}, not a torch.nn.Module")
    return cell


def cell_n_ary(spec: str, input_size: int, hidden_size: int) -> int | None:
    """The ``n_ary`` of the cell `spec` names (None: any number of children), to check trees
    before a model exists: built once under a forked RNG, so the caller's stream is as it was."""
    if spec in BUILT_IN_CELLS:
        return 2 if spec == "nary" else None
    with torch.random.fork_rng(devices=[]):
        return getattr(build_cell(spec, input_size, hidden_size), "n_ary", None)


# ------------------------------------------------------------------------------------- heads


class SentimentModel(nn.Module):
    """Tree-LSTM -> dropout -> linear -> class scores at every node (Tai et al. 2015, sec. 5.1).

    ``model(schedule) -> logits [N, num_classes]`` in schedule order; the roots' rows are
    ``logits[schedule.roots]``. Train with a cross-entropy at every labelled node.
    """

    def __init__(self, encoder: TreeLSTM, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.hidden_size, num_classes)

    def forward(self, schedule: Schedule) -> Tensor:
        h = self.encoder(schedule).h
        return self.classifier(self.dropout(h))


class RelatednessModel(nn.Module):
    """Sentence-pair relatedness (Tai et al. 2015, sec. 5.2) over two Tree-LSTM encodings.

    h_x = h_L * h_R, h_+ = |h_L - h_R| -> sigmoid layer (``sim_hidden`` units) -> log-softmax
    over the scores 1..num_classes. ``model(schedule_a, schedule_b) -> log p [B, num_classes]``;
    `expected_score` turns it into the prediction sum_r r p_r.
    """

    def __init__(self, encoder: TreeLSTM, sim_hidden: int = 50, num_classes: int = 5) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.hidden = nn.Linear(2 * encoder.hidden_size, sim_hidden)
        self.out = nn.Linear(sim_hidden, num_classes)

    def forward(self, schedule_a: Schedule, schedule_b: Schedule) -> Tensor:
        hl = self.encoder(schedule_a).root_h
        hr = self.encoder(schedule_b).root_h
        features = torch.cat([hl * hr, (hl - hr).abs()], dim=1)
        return torch.log_softmax(self.out(torch.sigmoid(self.hidden(features))), dim=1)

    def expected_score(self, log_probs: Tensor) -> Tensor:
        """[B, K] log-probabilities -> [B] expected score sum_r r p_r (r = 1..K)."""
        r = torch.arange(1, self.num_classes + 1, dtype=log_probs.dtype, device=log_probs.device)
        return log_probs.exp() @ r


def relatedness_target(scores: Tensor, num_classes: int = 5) -> Tensor:
    """[B] gold scores in [1, K] -> [B, K] sparse distributions p with sum_r r p_r = score.

    The mass sits on floor(y) and ceil(y): p_floor = ceil(y) - y, p_ceil = y - floor(y)
    (all of it on y when y is an integer), as in Tai et al. 2015, sec. 4.2.
    """
    y = scores.to(torch.get_default_dtype() if not scores.is_floating_point() else scores.dtype)
    if y.numel() and (y.min() < 1 or y.max() > num_classes):
        raise ValueError(f"relatedness scores must lie in [1, {num_classes}]")
    lo = y.floor()
    frac = y - lo
    target = y.new_zeros(y.shape[0], num_classes + 1)  # one spare column for ceil(K) = K + 1
    rows = torch.arange(y.shape[0], device=y.device)
    target[rows, lo.long() - 1] = 1 - frac
    target[rows, lo.long()] += frac
    return target[:, :num_classes]


def relatedness_loss(log_probs: Tensor, scores: Tensor) -> Tensor:
    """Mean over the batch of KL(target || p), the target from `relatedness_target`."""
    target = relatedness_target(scores, log_probs.shape[1]).to(log_probs.dtype)
    return nn.functional.kl_div(log_probs, target, reduction="batchmean")
