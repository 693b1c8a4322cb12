"""The evaluation measures of Tai, Socher & Manning (2015).

- SST: accuracy at the root (and at every labelled node). The binary protocol follows the
  reference code: nodes labelled neutral are skipped and a node is predicted negative when its
  negative score beats its positive score, else positive (`sentiment_predictions`).
- SICK: Pearson r, Spearman rho and mean squared error of the predicted relatedness.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "accuracy",
    "pearson",
    "ranks",
    "relatedness_metrics",
    "sentiment_metrics",
    "sentiment_predictions",
    "spearman",
]


def ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x, y) -> float:
    """Pearson's r (0.0 when either side is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the ranks."""
    return pearson(ranks(x), ranks(y))


def sentiment_predictions(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Predicted classes [N] from scores [N, C]: argmax ("fine"), or the reference's binary
    rule, negative (0) when score 0 beats score 2, else positive (2) ("binary")."""
    if mode == "fine":
        return logits.argmax(1)
    return torch.where(logits[:, 0] > logits[:, 2], 0, 2)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, mode: str) -> tuple[float, int]:
    """(accuracy, nodes counted): labels < 0 (unlabelled) and, in "binary", neutral (1) are
    skipped; NaN when nothing is counted."""
    keep = labels >= 0 if mode == "fine" else (labels >= 0) & (labels != 1)
    n = int(keep.sum())
    pred = sentiment_predictions(logits, mode)
    return (float((pred[keep] == labels[keep]).sum()) / n if n else float("nan")), n


def sentiment_metrics(root_logits, root_labels, mode, node_logits=None, node_labels=None):
    """Accuracy at the roots (and at all labelled nodes) under the fine or binary protocol."""
    out = {}
    out["accuracy"], out["n"] = accuracy(root_logits, root_labels, mode)
    if node_logits is not None:
        out["node_accuracy"], out["n_nodes"] = accuracy(node_logits, node_labels, mode)
    return out


def relatedness_metrics(pred, gold) -> dict:
    """Pearson r, Spearman rho and MSE of predicted vs gold relatedness (1-d arrays)."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    return {
        "pearson": pearson(p, g),
        "spearman": spearman(p, g),
        "mse": float(((p - g) ** 2).mean()),
        "n": len(g),
    }
