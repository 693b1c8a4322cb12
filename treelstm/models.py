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

__all__ = ["Encoded", "TreeLSTM"]


class Encoded(NamedTuple):
    """What `TreeLSTM` returns: every node's states and the roots' hidden states."""

    h: Tensor  # [N, H] in schedule order
    c: Tensor  # [N, H]
    root_h: Tensor  # [B, H] in the order the trees were given


class TreeLSTM(nn.Module):
    """Embedding + Tree-LSTM cell + executor: ``encoder(schedule) -> Encoded(h, c, root_h)``.

    num_embeddings  vocabulary size; token ids come from the schedule (-1 = no word, which
                    reads a zero vector: one extra padding row is kept at index
                    ``num_embeddings``).
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
        tokens = schedule.tokens
        pad = self.embedding.padding_idx
        return self.embedding(torch.where(tokens >= 0, tokens, pad))

    def forward(self, schedule: Schedule, strategy: str | None = None) -> Encoded:
        x = self.embed(schedule)
        h, c = run(self.cell, schedule, x, strategy or self.strategy)
        return Encoded(h, c, h[schedule.roots])
