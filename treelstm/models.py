"""Models built on a Tree-LSTM (Tai, Socher & Manning 2015): the encoder a user drops into a
model, and the task heads that sit on top of it.

    schedule --(embed tokens)--> x [N, E] --(cell, level by level)--> h, c [N, H] --> head
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .executor import run
from .schedule import Schedule
from .tree import Tree

__all__ = [
    "Encoded",
    "TreeLSTM",
    "SentimentModel",
    "RelatednessModel",
    "relatedness_target",
    "relatedness_loss",
]


class Encoded(NamedTuple):
    """What `TreeLSTM` returns: every node's states and the roots' hidden states."""

    h: Tensor  # [N, H] in schedule order
    c: Tensor  # [N, H]
    root_h: Tensor  # [B, H] in the order the trees were given


class TreeLSTM(nn.Module):
    """Embedding + Tree-LSTM cell + executor: ``encoder(schedule) -> Encoded(h, c, root_h)``.

    num_embeddings  vocabulary size V = len(vocab): token ids 0..V-1 come from the schedule
                    (-1 = no word, which reads a zero vector: one extra padding row is kept at
                    index V). A schedule with a token id >= V raises ValueError.
    cell            a `ChildSumCell`, `NaryCell` or any module with the same step signature.
    strategy        executor strategy (see `treelstm.executor.STRATEGIES`); "level" is fast.
    embeddings      optional pretrained [num_embeddings, E] vectors to start from.
    freeze_embeddings  keep the embedding fixed (the reference code's SICK setting).
    """

    def __init__(
        self,
        num_embeddings: int,
        cell: nn.Module,
        *,
        strategy: str = "level",
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
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
        h, c = run(self.cell, schedule, x, strategy or self.strategy)
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
