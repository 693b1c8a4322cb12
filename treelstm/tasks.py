"""The tasks of Tai, Socher & Manning (2015) as objects: what data a task reads, how a batch
is built, its head, its loss, its metrics and its prediction rule.

- `SentimentTask` ("sst", modes "fine" and "binary"): the Stanford Sentiment Treebank, a class
  at every node (a Tree-LSTM) or at the root only (a sequence model), accuracy at the root.
- `RelatednessTask` ("sick"): SICK sentence pairs (dependency or binarised constituency
  parses), a distribution over the scores 1..5 whose expectation is the prediction; Pearson r,
  Spearman rho, MSE.

A task is built for one model kind (`treelstm.encoders`: a Tree-LSTM, or a sequential
baseline), which makes its batches. A trainer asks its task; it never tests the task's or the
model's name. A new task is a new class with the same methods, registered in `TASKS`; a new
model kind is registered in `encoders.MODELS`.

Each task names the dev metrics that may pick the best epoch and which way is better
(`Task.GOALS`); `Task.primary` is the default. SICK's is the lowest dev MSE (the reference
code picks the highest dev Pearson r: see docs/reproduction.md, "The best-epoch rule").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from . import data as ds
from .encoders import ModelKind, get_model_kind
from .labels import IGNORE_INDEX
from .metrics import relatedness_metrics, sentiment_metrics, sentiment_predictions
from .models import RelatednessModel, SentimentModel, relatedness_loss
from .prediction import PairPrediction, SentencePrediction, TreePrediction
from .schedule import Schedule, collate
from .tree import Tree

__all__ = ["TASKS", "PairCollate", "RelatednessTask", "SentimentTask", "Splits", "Task", "get_task"]


@dataclass
class Splits:
    """A task's examples per split, and where they came from (printed once)."""

    train: list
    dev: list
    test: list
    source: str


class Task:
    """What a trainer needs to know about a task (see the subclasses)."""

    name: ClassVar[str]  # the task word of the command line
    cells: ClassVar[tuple[str, ...]]  # the cells that can run it (the first is the default)
    parse_kinds: ClassVar[tuple[str, ...]]  # the parses its data come in (the first: default)
    vector_files: ClassVar[tuple[str, ...]]  # word vectors looked for beside the data, in order
    GOALS: ClassVar[dict[str, str]]  # dev metric -> "max" or "min": those that may pick epochs
    primary: ClassVar[str]  # the default of those (the trainer's --select)
    defaults: ClassVar[dict[str, Any]]  # config defaults that depend on the task
    inputs: ClassVar[str]  # what one example is: "trees" (one tree) or "pairs" (two trees)

    protocol: str  # the row of the paper's table
    labels: tuple[str, ...]  # the output classes' names
    model: ModelKind  # what the task's model is built on (its batches, per node or not)
    parses: str  # the trees read: "constituency" or "dependency"

    def _setup(self, model: str, parses: str | None) -> None:
        self.model = get_model_kind(model)
        parses = parses or self.parse_kinds[0]
        if parses not in self.parse_kinds:
            raise ValueError(
                f"{self.name} comes with {' or '.join(self.parse_kinds)} parses, not {parses!r}"
            )
        self.parses = parses

    def better(self, metric: str, value: float, best: float) -> bool:
        """Whether dev ``metric`` at ``value`` beats ``best`` (strictly: of equal epochs the
        earliest stays)."""
        return value > best if self.GOALS[metric] == "max" else value < best

    def worst(self, metric: str) -> float:
        """The start value of a best-epoch search on ``metric``."""
        return -math.inf if self.GOALS[metric] == "max" else math.inf

    def load(self, folder: Path, max_children: int | None) -> Splits:
        raise NotImplementedError

    def synthetic(self) -> Splits:
        raise NotImplementedError

    def trees(self, example) -> Sequence[Tree]:
        """The trees of one example (their words make the vocabulary)."""
        raise NotImplementedError

    def collate(self, vocab, n_ary: int | None) -> Callable:
        """The DataLoader collate_fn turning a list of examples into a batch."""
        raise NotImplementedError

    def head(self, encoder: nn.Module, cfg) -> nn.Module:
        """The task's model on ``encoder`` (a `TreeLSTM` or a `sequence.SequenceLSTM`)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def outputs(self, model: nn.Module, batch) -> dict[str, Any]:
        """What evaluation keeps of one batch (on the CPU; gathered over ranks)."""
        raise NotImplementedError

    def metrics(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The task as a checkpoint records it: what a saved model's outputs mean."""
        raise NotImplementedError

    def _described(self, **fields: Any) -> dict[str, Any]:
        return {"name": self.name, **fields, "protocol": self.protocol, "model": self.model.name,
                "parses": self.parses, "labels": list(self.labels)}  # fmt: skip

    def example(self, item: Any, where: str) -> Any:
        """One input to predict as this task's example (a `Tree` for SST; a `data.Pair`, or
        an (a, b) tuple of trees, for SICK); ``where`` names it in a ValueError."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch, examples: Sequence) -> list:
        """What ``model`` (in eval mode) predicts for each of ``examples``, whose `collate`d
        ``batch`` this is: one `prediction.TreePrediction` / `PairPrediction` each, on the
        CPU, in order."""
        raise NotImplementedError

    def gold_metrics(self, predictions: Sequence) -> dict[str, float] | None:
        """The task's metrics of ``predictions`` against the gold labels the examples carry
        (as the trainer computes them), or None when they carry none."""
        raise NotImplementedError


class SentimentTask(Task):
    """SST: a class at every node (cross-entropy summed over a tree's labelled nodes, averaged
    over the trees), root accuracy; "binary" follows the reference code (`data.load_sst`,
    `metrics.sentiment_predictions`)."""

    name = "sst"
    inputs = "trees"
    cells = ("nary", "childsum")
    parse_kinds = ("constituency",)
    vector_files = ("glove.840B.300d.txt", "glove.6B.300d.txt", "glove.6B.50d.sst_sick.txt")
    GOALS = {"accuracy": "max"}
    primary = "accuracy"
    defaults = dict(cell="nary", dropout=0.5, freeze_embeddings=False, output_gate=True,
                    input_at="leaves")  # fmt: skip

    def __init__(self, mode: str = "fine", model: str = "treelstm", parses: str | None = None):
        if mode not in ds.SST_LABELS:
            raise ValueError(f"mode must be 'fine' or 'binary', got {mode!r}")
        self._setup(model, parses)
        self.mode = mode
        self.protocol = f"sst-{mode}"
        self.labels = ds.SST_LABELS[mode]

    def load(self, folder: Path, max_children: int | None) -> Splits:
        s = ds.load_sst(folder, self.mode, max_children=max_children)
        return Splits(s["train"], s["dev"], s["test"], f"data: {folder}")

    def synthetic(self) -> Splits:
        splits = [ds.synthetic_sst(n, seed=k) for k, n in ((1, 40), (2, 10), (3, 10))]
        if self.mode == "binary":
            splits = [[ds.binarize_labels(t) for t in s if t.label != 2] for s in splits]
        return Splits(*splits, "dry run: generated data (no data directory read, no network)")

    def trees(self, example: Tree) -> Sequence[Tree]:
        return (example,)

    def collate(self, vocab, n_ary: int | None) -> Callable:
        """Schedules for a Tree-LSTM (labels at every node), `SequenceBatch`es for a sequence
        model (the root labels only: the paper trains those on the sentences' labels)."""
        return self.model.batcher(vocab, n_ary)

    def head(self, encoder: nn.Module, cfg) -> nn.Module:
        return SentimentModel(encoder, len(self.labels), cfg.dropout)

    def loss(self, model: nn.Module, batch: Schedule) -> torch.Tensor:
        logits = model(batch)
        total = nn.functional.cross_entropy(
            logits, batch.labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / batch.batch_size

    def outputs(self, model: nn.Module, batch: Schedule) -> dict[str, Any]:
        """Root scores and labels; every node's too for a model that predicts every node."""
        logits = model(batch).float()
        out = {
            "root_logits": logits[batch.roots].cpu(),
            "root_labels": batch.labels[batch.roots].cpu(),
        }
        if self.model.per_node:
            out.update(node_logits=logits.cpu(), node_labels=batch.labels.cpu())
        return out

    def metrics(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        cat = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        return sentiment_metrics(cat["root_logits"], cat["root_labels"], self.mode,
                                 cat.get("node_logits"), cat.get("node_labels"))  # fmt: skip

    def describe(self) -> dict[str, Any]:
        rule = "argmax" if self.mode == "fine" else "negative if score[0] > score[2] else positive"
        scope = "every node" if self.model.per_node else "the root (the sentence) only"
        return self._described(mode=self.mode, prediction=rule, predicts=scope)

    def example(self, item: Any, where: str) -> Tree:
        if isinstance(item, str):
            try:  # SST's integer labels: the reader's fast path
                return Tree.from_ptb(item, where=where)
            except ValueError:  # other labels (a parser's "NP") are kept as text
                return Tree.from_ptb(item, label_type=_sst_label, where=where)
        if not isinstance(item, Tree):
            raise TypeError(f"{where}: a {type(item).__name__}, not a Tree or PTB text")
        return item

    def predict(self, model: nn.Module, batch: Schedule, examples: Sequence) -> list:
        """A class at every node: the argmax, and at the roots the protocol's sentence rule
        (`metrics.sentiment_predictions`: the same as the trainer's root accuracy). A sequence
        model predicts the sentence only: one `SentencePrediction` each."""
        logits = model(batch).float()
        if not self.model.per_node:
            roots = sentiment_predictions(logits, self.mode).cpu().tolist()
            return [SentencePrediction(t, self.labels, self.model.name, k, lg.softmax(0), lg)
                    for t, k, lg in zip(examples, roots, logits.cpu(), strict=True)]  # fmt: skip
        classes = sentiment_predictions(logits, "fine")
        if self.mode == "binary":  # a sentence is negative or positive, never neutral
            classes[batch.roots] = sentiment_predictions(logits[batch.roots], self.mode)
        logits, classes = logits.cpu(), classes.cpu()
        parts = zip(batch.split(logits), batch.split(logits.softmax(1)), batch.split(classes),
                    strict=True)  # fmt: skip
        return [TreePrediction(t, self.labels, c, p, lg)
                for t, (lg, p, c) in zip(examples, parts, strict=True)]  # fmt: skip

    def gold_metrics(self, predictions: Sequence[TreePrediction]) -> dict[str, float] | None:
        """Root (and node) accuracy against labels 0..4 on every node, as in the SST files:
        in the binary protocol the labels are binarised and neutral-root trees left out, as
        `data.load_sst` does for training, so a split's numbers equal the trainer's."""
        if not predictions or not all(_sst_labelled(p.tree) for p in predictions):
            return None
        if self.mode == "binary":
            predictions = [p for p in predictions if p.tree.label != 2]
            if not predictions:
                return None
        trees = [p.tree if self.mode == "fine" else ds.binarize_labels(p.tree)
                 for p in predictions]  # fmt: skip
        node_labels = [torch.tensor(t.flat().labels) for t in trees]
        roots = (torch.stack([p.root_logits for p in predictions]),
                 torch.stack([lab[-1] for lab in node_labels]))  # fmt: skip
        if not self.model.per_node:
            return sentiment_metrics(*roots, self.mode)
        return sentiment_metrics(*roots, self.mode, torch.cat([p.logits for p in predictions]),
                                 torch.cat(node_labels))  # fmt: skip


class PairCollate:
    """collate_fn for SICK: (batch of the a sentences, batch of the b sentences, scores [B]);
    a batch is what ``build`` makes of a list of trees (default: a `Schedule`)."""

    def __init__(self, vocab, build: Callable | None = None) -> None:
        self.vocab = vocab
        self.build = build or collate(vocab)

    def __call__(self, pairs):
        a = self.build([p.a for p in pairs])
        b = self.build([p.b for p in pairs])
        return a, b, torch.tensor([p.score for p in pairs], dtype=torch.float32)


class RelatednessTask(Task):
    """SICK: KL(target || p) to the sparse target over 1..5, averaged over the pairs and over
    the 5 entries (the reference's DistKLDivCriterion); the prediction is the expected score."""

    name = "sick"
    inputs = "pairs"
    cells = ("childsum", "nary")  # Child-Sum: dependency trees; binary N-ary: constituency
    parse_kinds = ("dependency", "constituency")
    vector_files = ("glove.840B.300d.txt", "glove.840B.300d.sick.txt", "glove.6B.50d.sst_sick.txt")
    GOALS = {"mse": "min", "pearson": "max", "spearman": "max", "kl": "min"}
    primary = "mse"  # see the module docstring
    defaults = dict(cell="childsum", dropout=0.0, freeze_embeddings=True, output_gate=False,
                    input_at="all")  # fmt: skip
    num_classes = 5

    def __init__(self, mode: str = "fine", model: str = "treelstm", parses: str | None = None):
        self._setup(model, parses)
        self.protocol = "sick"
        self.labels = tuple(str(r) for r in range(1, self.num_classes + 1))

    def load(self, folder: Path, max_children: int | None) -> Splits:
        s = ds.load_sick(folder, parses=self.parses)
        return Splits(s["train"], s["dev"], s["test"], f"data: {folder} ({self.parses} parses)")

    def synthetic(self) -> Splits:
        splits = [ds.synthetic_sick(n, seed=k, parses=self.parses)
                  for k, n in ((1, 40), (2, 10), (3, 10))]  # fmt: skip
        return Splits(*splits, "dry run: generated data (no data directory read, no network)")

    def trees(self, example: ds.Pair) -> Sequence[Tree]:
        return (example.a, example.b)

    def collate(self, vocab, n_ary: int | None) -> Callable:
        return PairCollate(vocab, self.model.batcher(vocab, n_ary, labels=None))

    def head(self, encoder: nn.Module, cfg) -> nn.Module:
        return RelatednessModel(encoder, cfg.sim_hidden, self.num_classes)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        a, b, scores = batch
        return relatedness_loss(model(a, b), scores) / self.num_classes

    def outputs(self, model: nn.Module, batch) -> dict[str, Any]:
        a, b, scores = batch
        logp = model(a, b)
        return {
            "pred": model.expected_score(logp).double().cpu(),
            "gold": scores.double().cpu(),
            "kl_sum": float(relatedness_loss(logp, scores)) * scores.shape[0],
        }

    def metrics(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        pred = torch.cat([o["pred"] for o in outputs]).numpy()
        gold = torch.cat([o["gold"] for o in outputs]).numpy()
        m = relatedness_metrics(pred, gold)
        m["kl"] = sum(o["kl_sum"] for o in outputs) / max(len(gold), 1)
        return m

    def describe(self) -> dict[str, Any]:
        return self._described(prediction="expected score: sum over r = 1..5 of r * p(r)")

    def example(self, item: Any, where: str) -> ds.Pair:
        if isinstance(item, ds.Pair):
            return item
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, Tree) for t in item):
            return ds.Pair(item[0], item[1], math.nan, where)
        raise TypeError(f"{where}: a {type(item).__name__}, not a Pair or an (a, b) tuple of trees")

    def predict(self, model: nn.Module, batch, examples: Sequence) -> list:
        a, b, _ = batch
        logp = model(a, b).float()
        scores = model.expected_score(logp).cpu().tolist()
        return [PairPrediction(p.a, p.b, self.labels, s, lp, p.score)
                for p, s, lp in zip(examples, scores, logp.exp().cpu(), strict=True)]  # fmt: skip

    def gold_metrics(self, predictions: Sequence[PairPrediction]) -> dict[str, float] | None:
        """Pearson r, Spearman rho and MSE against the pairs' known scores (all or none),
        the scores in float32 as `PairCollate` gives them to the trainer's metrics."""
        if not predictions or any(math.isnan(p.gold) for p in predictions):
            return None
        gold = torch.tensor([p.gold for p in predictions], dtype=torch.float32).double()
        return relatedness_metrics([p.score for p in predictions], gold.numpy())


_INT = re.compile(r"[-+]?[0-9]+")


def _sst_label(text: str) -> int | str:
    """A PTB label read for prediction: an integer (SST's classes, the gold labels) when it is
    one, else the text as it is (a parser's "NP"; such trees are predicted all the same)."""
    return int(text) if _INT.fullmatch(text) else text


def _sst_labelled(tree: Tree) -> bool:
    """Whether every node carries an SST label 0..4."""
    return all(isinstance(n.label, int) and 0 <= n.label <= 4 for n in tree.preorder())


TASKS: dict[str, type[Task]] = {"sst": SentimentTask, "sick": RelatednessTask}


def get_task(
    name: str, mode: str = "fine", model: str = "treelstm", parses: str | None = None
) -> Task:
    """The task called ``name`` ("sst" with ``mode`` "fine" or "binary"; "sick") for a
    ``model`` of `encoders.MODELS` over ``parses`` (default: the task's first parse kind)."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name](mode, model, parses)
