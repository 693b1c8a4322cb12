"""`make demo`: a Tree-LSTM learns arithmetic on trees it generates, offline, in about a minute.

Task: random expression trees over digits 0-9 with + and * ; every node is labelled with its
value mod 10. The label of a node is a function of its children's labels and its operator, so
the model has to follow the tree: a bag of the same tokens cannot tell (2+3)*4 from 2+(3*4).
A binary N-ary Tree-LSTM (the word of an internal node is its operator) is trained with a
cross-entropy at every node; accuracy is reported at the root on held-out trees, next to the
majority-class rate. Finally the same model is timed with per-node evaluation ("recursive")
and with the level scheduler ("level") on one batch.

    python -m treelstm.demo [--train 4000] [--epochs 5] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, fields

import torch
from torch import nn

from .cells import NaryCell
from .models import TreeLSTM
from .schedule import build_schedule
from .tree import Tree

VOCAB = {str(d): d for d in range(10)} | {"+": 10, "*": 11}


@dataclass
class DemoConfig:
    train: int = 4000  # training trees
    test: int = 1000  # held-out trees
    max_leaves: int = 12  # leaves per tree, drawn from 2..max_leaves
    epochs: int = 5  # passes over the training trees
    batch_size: int = 25  # trees per step (the paper's batch size)
    hidden: int = 64  # Tree-LSTM memory size
    emb: int = 32  # token embedding size
    lr: float = 0.01  # Adam learning rate
    seed: int = 0  # seeds the data, the initialisation and the batch order
    threads: int = 2  # torch intra-op threads


def random_expression(rng: random.Random, n_leaves: int) -> Tree:
    """A random binary expression tree; labels are values mod 10, operators are words."""
    nodes = [Tree(d, str(d)) for d in (rng.randrange(10) for _ in range(n_leaves))]
    while len(nodes) > 1:
        k = rng.randrange(len(nodes) - 1)
        a, b = nodes[k], nodes[k + 1]
        op = rng.choice("+*")
        value = (a.label + b.label) % 10 if op == "+" else (a.label * b.label) % 10
        nodes[k : k + 2] = [Tree(value, op, (a, b))]
    return nodes[0]


def infix(tree: Tree) -> str:
    """'((2+3)*4)' for a tree made by `random_expression` (iterative: trees can be deep)."""
    out: dict[int, str] = {}
    for node in tree.postorder():
        if node.is_leaf:
            out[id(node)] = node.word
        else:
            a, b = (out.pop(id(k)) for k in node.children)
            out[id(node)] = f"({a}{node.word}{b})"
    return out[id(tree)]


def make_trees(n: int, cfg: DemoConfig, rng: random.Random) -> list[Tree]:
    return [random_expression(rng, rng.randint(2, cfg.max_leaves)) for _ in range(n)]


class ExpressionModel(nn.Module):
    def __init__(self, cfg: DemoConfig) -> None:
        super().__init__()
        self.encoder = TreeLSTM(len(VOCAB), NaryCell(cfg.emb, cfg.hidden, n_ary=2))
        self.out = nn.Linear(cfg.hidden, 10)

    def forward(self, schedule, strategy=None):
        return self.out(self.encoder(schedule, strategy).h)


def root_accuracy(model: ExpressionModel, trees: list[Tree]) -> float:
    model.eval()
    with torch.no_grad():
        s = build_schedule(trees, VOCAB, n_ary=2)
        pred = model(s)[s.roots].argmax(1)
        return (pred == s.labels[s.roots]).float().mean().item()


def train(cfg: DemoConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_trees = make_trees(cfg.train, cfg, rng)
    test_trees = make_trees(cfg.test, cfg, rng)
    roots = [t.label for t in test_trees]
    majority = max(roots.count(v) for v in set(roots)) / len(roots)
    print(
        f"{cfg.train} training and {cfg.test} test expression trees with 2..{cfg.max_leaves} "
        f"leaves, e.g. {infix(test_trees[0])} = {test_trees[0].label} (mod 10)"
    )
    print(f"majority-class root accuracy on test: {majority:.1%}")
    model = ExpressionModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    acc = 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        rng.shuffle(train_trees)
        total = 0.0
        for k in range(0, len(train_trees), cfg.batch_size):
            s = build_schedule(train_trees[k : k + cfg.batch_size], VOCAB, n_ary=2)
            loss = loss_fn(model(s), s.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * s.batch_size
        acc = root_accuracy(model, test_trees)
        print(
            f"epoch {epoch:2d}  train loss {total / len(train_trees):.3f}  "
            f"test root accuracy {acc:.1%}  ({time.perf_counter() - t0:.1f} s)"
        )
    speed = compare_speed(model, test_trees[:256])
    return {"root_accuracy": acc, "majority": majority, **speed}


def compare_speed(model: ExpressionModel, trees: list[Tree]) -> dict:
    """Forward + backward of one batch, per-node evaluation vs the level scheduler."""
    s = build_schedule(trees, VOCAB, n_ary=2)
    times = {}
    for strategy in ("recursive", "level"):
        reps = []
        for _ in range(3):
            t = time.perf_counter()
            model(s, strategy).logsumexp(1).sum().backward()
            reps.append(time.perf_counter() - t)
        times[strategy] = sorted(reps)[1]
    ratio = times["recursive"] / times["level"]
    print(
        f"one batch of {len(trees)} trees ({s.num_nodes} nodes, {s.num_levels} levels), "
        f"forward+backward: per-node {times['recursive'] * 1e3:.0f} ms, "
        f"level-batched {times['level'] * 1e3:.1f} ms -> {ratio:.0f}x faster"
    )
    return {"recursive_s": times["recursive"], "level_s": times["level"], "speedup": ratio}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(DemoConfig):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    cfg = DemoConfig(**vars(parser.parse_args(argv)))
    return train(cfg)


if __name__ == "__main__":
    main()
