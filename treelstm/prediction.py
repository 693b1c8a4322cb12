"""What a trained model predicts, one object per example: `TreePrediction` (a class at every
node of a tree: a Tree-LSTM on SST), `SentencePrediction` (a class for the sentence only: a
sequential baseline on SST, which has no states inside the tree) and `PairPrediction` (a
relatedness score for a sentence pair, SICK).

Made by a task's ``predict`` (`treelstm.tasks`), returned by `treelstm.load_model(...).predict`,
written by ``python -m treelstm.predict`` and drawn by `treelstm.draw`. A tree's nodes are in its
own post-order, the order of ``tree.postorder()`` and ``tree.flat()``: children before their
parent, left to right, the root last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .formats.ptb import normalize_token
from .tree import Tree

__all__ = ["PairPrediction", "SentencePrediction", "TreePrediction", "span_texts"]

_DIGITS = 4  # decimals of the probabilities written to JSON


def _sentence_fields(p) -> dict[str, Any]:
    """The sentence-level fields every prediction's JSON starts with (its words, root class,
    class name and probability, and the input's root label)."""
    return {
        "sentence": " ".join(normalize_token(w) for w in p.tree.words()),
        "class": p.root,
        "label": p.root_label,
        "prob": round(p.root_prob, _DIGITS),
        "gold": _plain(p.tree.label),
    }


@dataclass(frozen=True, eq=False)
class TreePrediction:
    """The classes a sentiment model predicts at every node of ``tree``.

    tree     the tree as given (its own labels, if any, are the gold ones; never used to predict)
    names    the class names, e.g. ("very negative", ..., "very positive")
    classes  [n] int64: node i's predicted class (node i of ``tree.postorder()``)
    probs    [n, C] float32: softmax of the scores; each row sums to 1
    logits   [n, C] float32: the scores themselves (the rules compare these)

    ``classes`` is the argmax at every node, except for a binary-protocol model's root, which
    follows the reference rule (negative when its negative score beats its positive score,
    else positive: a sentence is never neutral in that protocol).
    """

    tree: Tree
    names: tuple[str, ...]
    classes: Tensor
    probs: Tensor
    logits: Tensor

    @property
    def root(self) -> int:
        """The sentence's class (the root's)."""
        return int(self.classes[-1])

    @property
    def root_label(self) -> str:
        return self.names[self.root]

    @property
    def root_prob(self) -> float:
        """The probability of the root's predicted class."""
        return float(self.probs[-1, self.root])

    @property
    def root_logits(self) -> Tensor:
        """[C] the root's scores."""
        return self.logits[-1]

    def labels(self) -> list[str]:
        """Every node's predicted class name, in post-order."""
        return [self.names[k] for k in self.classes.tolist()]

    def to_tree(self) -> Tree:
        """``tree`` with every node's label replaced by its predicted class id (an int), so
        that ``to_ptb`` / ``write_ptb`` give SST-style text that `read_ptb` reads back."""
        classes = self.classes.tolist()
        made: dict[int, Tree] = {}
        for i, node in enumerate(self.tree.postorder()):
            kids = [made.pop(id(c)) for c in node.children]
            made[id(node)] = Tree(classes[i], node.word, kids, node.word_at)
        return made[id(self.tree)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the root's prediction, the sentence, and every node in post-order with
        its parent's index (-1 for the root), word (null inside), class, name, gold label (the
        tree's own, or null) and probabilities (4 decimals)."""
        flat = self.tree.flat()
        classes = self.classes.tolist()
        probs = torch.round(self.probs.double(), decimals=_DIGITS).tolist()
        nodes = [
            {
                "parent": int(flat.parent[i]),
                "word": flat.words[i],
                "class": classes[i],
                "label": self.names[classes[i]],
                "gold": _plain(flat.labels[i]),
                "probs": probs[i],
            }
            for i in range(len(classes))
        ]
        return {**_sentence_fields(self), "nodes": nodes}


@dataclass(frozen=True, eq=False)
class SentencePrediction:
    """The class a sequence model (LSTM, Bi-LSTM, ...) predicts for a whole sentence.

    Such a model reads the words left to right and has one state per sentence: it predicts at
    the root only, as in the paper. There are no per-node predictions to ask for: `labels` and
    `to_tree` raise ValueError saying so, and `to_dict` has no ``nodes``.

    tree     the tree as given (its words, in order, were read; its root label is the gold one)
    names    the class names
    model    the model kind ("lstm", "bilstm", ...)
    root     the sentence's class (the argmax, or the binary protocol's rule)
    probs    [C] float32: softmax of the scores
    logits   [C] float32: the scores
    """

    tree: Tree
    names: tuple[str, ...]
    model: str
    root: int
    probs: Tensor
    logits: Tensor

    @property
    def root_label(self) -> str:
        return self.names[self.root]

    @property
    def root_prob(self) -> float:
        return float(self.probs[self.root])

    @property
    def root_logits(self) -> Tensor:
        """[C] the sentence's scores (the same as ``logits``)."""
        return self.logits

    def _root_only(self, what: str) -> ValueError:
        return ValueError(
            f"{what}: this model ({self.model}, a sequence model) predicts the sentence (the "
            "root) only, not every node; use root_label / root_prob (per-node classes need a "
            "Tree-LSTM run)"
        )

    def labels(self) -> list[str]:
        raise self._root_only("labels()")

    def to_tree(self) -> Tree:
        raise self._root_only("to_tree()")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the sentence, its class, name, probability, gold label and the
        probabilities of every class (no ``nodes``: see the class docstring)."""
        probs = torch.round(self.probs.double(), decimals=_DIGITS).tolist()
        return {**_sentence_fields(self), "probs": probs}


@dataclass(frozen=True, eq=False)
class PairPrediction:
    """The relatedness a SICK model predicts for the pair (``a``, ``b``).

    score  the expected score, sum over r = 1..5 of r * p(r)
    probs  [5] float32: p(r) for r = 1..5
    gold   the pair's known score, or NaN when none was given
    """

    a: Tree
    b: Tree
    names: tuple[str, ...]
    score: float
    probs: Tensor
    gold: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": " ".join(self.a.words()),
            "b": " ".join(self.b.words()),
            "score": round(self.score, _DIGITS),
            "probs": torch.round(self.probs.double(), decimals=_DIGITS).tolist(),
            "gold": None if math.isnan(self.gold) else self.gold,
        }


def _plain(label: Any) -> Any:
    """A label as JSON holds it: ints, strings and None as they are, anything else (the marks
    `binarize` adds) as its text."""
    return label if label is None or isinstance(label, int | str) else str(label)


def span_texts(tree: Tree) -> list[str]:
    """The words under each node (PTB escapes undone), joined by spaces, in post-order: one
    pass over the post-order with a stack of the finished subtrees' word lists."""
    out: list[str] = []
    stack: list[list[str]] = []
    for node in tree.postorder():
        n = len(node.children)
        parts = stack[len(stack) - n :] if n else []
        del stack[len(stack) - n :]
        words: list[str] = []
        for i, part in enumerate(parts):
            if node.word is not None and i == node.word_at:
                words.append(normalize_token(node.word))
            words.extend(part)
        if node.word is not None and node.word_at >= n:
            words.append(normalize_token(node.word))
        stack.append(words)
        out.append(" ".join(words))
    return out
