"""The model kinds of Tai, Socher & Manning (2015) as one registry: what a task model is built
on, how its batches are made, and whether it predicts at every node.

    treelstm                        a Tree-LSTM cell (``--cell nary|childsum``) over each
                                    example's parse tree, level by level: a state at every node
    lstm, bilstm, lstm2, bilstm2    the sequential baselines (`treelstm.sequence`): the words
                                    left to right (and right to left); one state per sentence

A task (`treelstm.tasks`) asks its kind for batches (`ModelKind.batcher`) and for the encoder
(`ModelKind.encoder`); the trainer asks for the memory size (`ModelKind.paper_memory`). Nothing
else tests a kind's name: a new kind is a `ModelKind` registered in `MODELS`.

Memory sizes d (the paper's Table 1, chosen there so that the composition functions have about
the same number of parameters; see docs/reproduction.md for the counts with this library's
cells and with 50-d vectors, where that matching no longer holds):

    SST   LSTM, Bi-LSTM 168; 2-layer 108; Constituency (N-ary) 150
    SICK  LSTM, Bi-LSTM 150; 2-layer 108; Dependency (Child-Sum) 150; Constituency 142

(Child-Sum on SST's constituency trees is no row of the paper, whose SST Dependency
Tree-LSTM, d 168, ran on dependency parses that are not available here; it keeps 150.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .models import TreeLSTM, build_cell
from .schedule import collate
from .sequence import KINDS, PAPER_MEMORY, SequenceLSTM, collate_sequences

__all__ = [
    "MODELS",
    "TREE_OPTIONS",
    "ModelKind",
    "SequenceKind",
    "TreeLSTMKind",
    "get_model_kind",
    "random_vectors",
]

#: The options that shape a Tree-LSTM cell only (a sequence model refuses them).
TREE_OPTIONS = ("cell", "input_at", "double_bias", "forget_input")


class ModelKind:
    """One model kind: its encoder, its batches, what it predicts."""

    name: ClassVar[str]
    per_node: ClassVar[bool]  # a prediction at every node (True) or at the root only (False)
    label: str  # the row name in the paper's tables

    def encoder(self, cfg: Any, vocab_size: int, vectors: Tensor | None, emb_dim: int) -> nn.Module:
        """The encoder of a resolved `train.TrainConfig` over ``vectors`` [vocab_size, E]
        (the initial embedding rows; None: `random_vectors` of ``emb_dim``), initialised from
        torch's global generator: ``encoder(batch) -> models.Encoded``."""
        raise NotImplementedError

    def batcher(self, vocab, n_ary: int | None, labels: Any = "auto") -> Callable:
        """A picklable function: a list of trees -> this kind's batch (a `Schedule` or a
        `SequenceBatch`); ``labels`` as for `build_schedule` / `build_sequences`."""
        raise NotImplementedError

    def paper_memory(self, task: str, cell: str | None) -> int:
        """The memory size d the paper gives this kind on ``task`` ("sst" or "sick")."""
        raise NotImplementedError

    def summary(self, cfg: Any) -> str:
        """A few words for logs: "nary cell, d 150", "bilstm2, d 108"."""
        raise NotImplementedError


class TreeLSTMKind(ModelKind):
    """A Tree-LSTM cell run by the level executor over each example's tree."""

    name = "treelstm"
    per_node = True
    label = "Tree-LSTM"
    MEMORY: ClassVar[dict[tuple[str, str], int]] = {
        ("sst", "nary"): 150,  # Constituency Tree-LSTM
        ("sst", "childsum"): 150,  # no paper row (see the module docstring)
        ("sick", "childsum"): 150,  # Dependency Tree-LSTM
        ("sick", "nary"): 142,  # Constituency Tree-LSTM
    }

    def encoder(self, cfg: Any, vocab_size: int, vectors: Tensor | None, emb_dim: int) -> nn.Module:
        E = vectors.shape[1] if vectors is not None else emb_dim
        switches = dict(input_at=cfg.input_at, output_gate=cfg.output_gate,
                        double_bias=cfg.double_bias, forget_input=cfg.forget_input)  # fmt: skip
        cell = build_cell(cfg.cell, E, cfg.hidden, **switches)  # a user's module:factory too
        if vectors is None:  # drawn after the cell: the order every earlier run had
            vectors = random_vectors(vocab_size, E, cfg.emb_init)
        return TreeLSTM(
            vocab_size, cell, embeddings=vectors, freeze_embeddings=cfg.freeze_embeddings
        )

    def batcher(self, vocab, n_ary: int | None, labels: Any = "auto") -> Callable:
        return collate(vocab, n_ary=n_ary, labels=labels)

    def paper_memory(self, task: str, cell: str | None) -> int:
        # A user's cell (module:factory) has no paper row: the paper's Tree-LSTM memory, 150.
        return self.MEMORY.get((task, cell), 150)

    def summary(self, cfg: Any) -> str:
        return f"{cfg.cell} cell, d {cfg.hidden}"


class SequenceKind(ModelKind):
    """A sequential baseline: `sequence.SequenceLSTM` (tied directions when bidirectional,
    the final state of every layer as the sentence vector; no output gate on SICK)."""

    per_node = False

    def __init__(self, name: str, label: str) -> None:
        self.name = name  # type: ignore[misc]  # one instance per kind
        self.label = label
        self.layers, self.bidirectional = KINDS[name]

    def encoder(self, cfg: Any, vocab_size: int, vectors: Tensor | None, emb_dim: int) -> nn.Module:
        if vectors is None:
            vectors = random_vectors(vocab_size, emb_dim, cfg.emb_init)
        return SequenceLSTM(
            vocab_size,
            vectors.shape[1],
            cfg.hidden,
            self.layers,
            bidirectional=self.bidirectional,
            output_gate=cfg.output_gate,
            embeddings=vectors,
            freeze_embeddings=cfg.freeze_embeddings,
        )

    def batcher(self, vocab, n_ary: int | None, labels: Any = "auto") -> Callable:
        return collate_sequences(vocab, labels=labels)

    def paper_memory(self, task: str, cell: str | None) -> int:
        return PAPER_MEMORY[task][self.name]

    def summary(self, cfg: Any) -> str:
        return f"{self.name}, d {cfg.hidden}"


def random_vectors(vocab_size: int, dim: int, init: str = "uniform") -> Tensor:
    """[vocab_size, dim] word vectors from torch's global generator. ``init="uniform"``:
    uniform(-0.05, 0.05), as the reference code draws the vectors of words without a
    pretrained one; ``"normal"``: N(0, 1), the default of Torch7's ``nn.LookupTable`` (what
    the reference's model holds when no vectors are copied in) and of ``nn.Embedding``."""
    if init == "normal":
        return torch.randn(vocab_size, dim)
    if init != "uniform":
        raise ValueError(f"random word vectors: init {init!r} is not 'uniform' or 'normal'")
    return torch.empty(vocab_size, dim).uniform_(-0.05, 0.05)


MODELS: dict[str, ModelKind] = {
    "treelstm": TreeLSTMKind(),
    "lstm": SequenceKind("lstm", "LSTM"),
    "bilstm": SequenceKind("bilstm", "Bi-LSTM"),
    "lstm2": SequenceKind("lstm2", "2-layer LSTM"),
    "bilstm2": SequenceKind("bilstm2", "2-layer Bi-LSTM"),
}


def get_model_kind(name: str) -> ModelKind:
    """The kind called ``name`` (`MODELS`); ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]
