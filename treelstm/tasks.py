"""The tasks of Tai, Socher & Manning (2015) as objects: what data a task reads, how a batch
is built, its head, its loss, its metrics and its prediction rule.

- `SentimentTask` ("sst", modes "fine" and "binary"): the Stanford Sentiment Treebank, a class
  at every node, accuracy at the root.
- `RelatednessTask` ("sick"): SICK sentence pairs, a distribution over the scores 1..5 whose
  expectation is the prediction; Pearson r, Spearman rho, MSE.

A trainer asks its task; it never tests the task's name. A new task (or model kind) is a new
class with the same methods, registered in `TASKS`.
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
from .labels import IGNORE_INDEX
from .metrics import relatedness_metrics, sentiment_metrics, sentiment_predictions
from .models import RelatednessModel, SentimentModel, TreeLSTM, relatedness_loss
from .prediction import PairPrediction, TreePrediction
from .schedule import Schedule, build_schedule, collate
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
    vector_files: ClassVar[tuple[str, ...]]  # word vectors looked for beside the data, in order
    primary: ClassVar[str]  # the dev metric that picks the best epoch (higher is better)
    defaults: ClassVar[dict[str, Any]]  # config defaults that depend on the task
    inputs: ClassVar[str]  # what one example is: "trees" (one tree) or "pairs" (two trees)

    protocol: str  # the row of the paper's table
    labels: tuple[str, ...]  # the output classes' names

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

    def head(self, encoder: TreeLSTM, cfg) -> nn.Module:
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
    vector_files = ("glove.840B.300d.txt", "glove.6B.300d.txt", "glove.6B.50d.sst_sick.txt")
    primary = "accuracy"
    defaults = dict(cell="nary", dropout=0.5, freeze_embeddings=False, output_gate=True,
                    input_at="leaves")  # fmt: skip

    def __init__(self, mode: str = "fine") -> None:
        if mode not in ds.SST_LABELS:
            raise ValueError(f"mode must be 'fine' or 'binary', got {mode!r}")
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
        return collate(vocab, n_ary=n_ary)

    def head(self, encoder: TreeLSTM, cfg) -> nn.Module:
        return SentimentModel(encoder, len(self.labels), cfg.dropout)

    def loss(self, model: nn.Module, batch: Schedule) -> torch.Tensor:
        logits = model(batch)
        total = nn.functional.cross_entropy(
            logits, batch.labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / batch.batch_size

    def outputs(self, model: nn.Module, batch: Schedule) -> dict[str, Any]:
        logits = model(batch).float()
        return {
            "root_logits": logits[batch.roots].cpu(),
            "root_labels": batch.labels[batch.roots].cpu(),
            "node_logits": logits.cpu(),
            "node_labels": batch.labels.cpu(),
        }

    def metrics(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        cat = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        return sentiment_metrics(cat["root_logits"], cat["root_labels"], self.mode,
                                 cat["node_logits"], cat["node_labels"])  # fmt: skip

    def describe(self) -> dict[str, Any]:
        rule = "argmax" if self.mode == "fine" else "negative if score[0] > score[2] else positive"
        return {"name": self.name, "mode": self.mode, "protocol": self.protocol,
                "labels": list(self.labels), "prediction": rule}  # fmt: skip

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
        (`metrics.sentiment_predictions`: the same as the trainer's root accuracy)."""
        logits = model(batch).float()
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
        return sentiment_metrics(
            torch.stack([p.logits[-1] for p in predictions]),
            torch.stack([lab[-1] for lab in node_labels]), self.mode,
            torch.cat([p.logits for p in predictions]), torch.cat(node_labels),
        )  # fmt: skip


class PairCollate:
    """collate_fn for SICK: (schedule of the a trees, schedule of the b trees, scores [B])."""

    def __init__(self, vocab) -> None:
        self.vocab = vocab

    def __call__(self, pairs):
        a = build_schedule([p.a for p in pairs], self.vocab)
        b = build_schedule([p.b for p in pairs], self.vocab)
        return a, b, torch.tensor([p.score for p in pairs], dtype=torch.float32)


class RelatednessTask(Task):
    """SICK: KL(target || p) to the sparse target over 1..5, averaged over the pairs and over
    the 5 entries (the reference's DistKLDivCriterion); the prediction is the expected score."""

    name = "sick"
    inputs = "pairs"
    cells = ("childsum",)  # dependency trees: any fan-out
    vector_files = ("glove.840B.300d.txt", "glove.840B.300d.sick.txt", "glove.6B.50d.sst_sick.txt")
    primary = "pearson"
    defaults = dict(cell="childsum", dropout=0.0, freeze_embeddings=True, output_gate=False,
                    input_at="all")  # fmt: skip
    num_classes = 5

    def __init__(self, mode: str = "fine") -> None:
        self.protocol = "sick"
        self.labels = tuple(str(r) for r in range(1, self.num_classes + 1))

    def load(self, folder: Path, max_children: int | None) -> Splits:
        s = ds.load_sick(folder)
        return Splits(s["train"], s["dev"], s["test"], f"data: {folder}")

    def synthetic(self) -> Splits:
        splits = [ds.synthetic_sick(n, seed=k) for k, n in ((1, 40), (2, 10), (3, 10))]
        return Splits(*splits, "dry run: generated data (no data directory read, no network)")

    def trees(self, example: ds.Pair) -> Sequence[Tree]:
        return (example.a, example.b)

    def collate(self, vocab, n_ary: int | None) -> Callable:
        return PairCollate(vocab)

    def head(self, encoder: TreeLSTM, cfg) -> nn.Module:
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
        return {"name": self.name, "protocol": self.protocol, "labels": list(self.labels),
                "prediction": "expected score: sum over r = 1..5 of r * p(r)"}  # fmt: skip

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


def get_task(name: str, mode: str = "fine") -> Task:
    """The task called ``name`` ("sst" with ``mode`` "fine" or "binary"; "sick")."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name](mode)
