"""What a top-down pass adds: label EVERY node of a tree with the value of the whole tree.

    python examples/topdown_root_value.py              # about a minute on one core
    python examples/topdown_root_value.py --dry-run    # seconds

The trees are `treelstm.demo`'s random expressions over the digits with + and * (the word of an
internal node is its operator). Every node has two targets: its own value mod 10 (what `make
demo` learns: it teaches the bottom-up pass arithmetic) and the ROOT's value mod 10, the one
scored. A bottom-up Tree-LSTM knows a node's own subtree only, so below the root it can only
guess the root's value; a bidirectional one (`treelstm.BiTreeLSTM`: the same bottom-up cell,
then a Child-Sum cell from the roots to the leaves over the bottom-up states) hands the root's
state down to every node. Both get the same data, targets, heads and optimiser; the root-value
accuracy is printed at the roots, at every node and at the leaves.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from treelstm import BiTreeLSTM, ChildSumCell, NaryCell, TreeLSTM, build_schedule
from treelstm.demo import VOCAB, random_expression


@dataclass
class Config:
    train: int = 4000  # training trees
    test: int = 1000  # held-out trees
    max_leaves: int = 10  # leaves per tree, 2..max_leaves
    epochs: int = 6
    batch_size: int = 25
    hidden: int = 64
    emb: int = 32
    lr: float = 0.01  # Adam
    seed: int = 0


class NodeClassifier(nn.Module):
    """An encoder and two 10-way classifiers at every node: its own value, the root's."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out = nn.Linear(encoder.hidden_size, 20)

    def forward(self, schedule):
        own, root = self.out(self.encoder(schedule).h).chunk(2, 1)  # [N, 10] each
        return own, root


def make_model(kind: str, cfg: Config) -> NodeClassifier:
    up = NaryCell(cfg.emb, cfg.hidden, n_ary=2)
    if kind == "bottom-up":
        return NodeClassifier(TreeLSTM(len(VOCAB), up))
    return NodeClassifier(BiTreeLSTM(len(VOCAB), up, ChildSumCell(cfg.hidden, cfg.hidden)))


def batch(trees):
    """The schedule (its labels: each node's own value) and each node's root value."""
    s = build_schedule(trees, VOCAB, n_ary=2)
    return s, s.labels[s.roots][s.node_tree]


def train(model: NodeClassifier, trees, cfg: Config, rng: random.Random) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.epochs):
        model.train()
        order = list(range(len(trees)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            s, target = batch([trees[k] for k in order[i : i + cfg.batch_size]])
            own, root = model(s)
            loss = F.cross_entropy(own, s.labels) + F.cross_entropy(root, target)
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def evaluate(model: NodeClassifier, trees) -> dict[str, float]:
    """Accuracy of the root-value head at the roots, at every node and at the leaves."""
    model.eval()
    s, target = batch(trees)
    right = model(s)[1].argmax(1) == target
    leaves = torch.arange(s.num_nodes) < s.num_leaves
    return {
        "root": right[s.roots].float().mean().item(),
        "node": right.float().mean().item(),
        "leaf": right[leaves].float().mean().item(),
    }


def main(argv=None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=Config.epochs)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--dry-run", action="store_true", help="a few trees, one epoch: seconds")
    args = p.parse_args(argv)
    cfg = Config(epochs=args.epochs, seed=args.seed)
    if args.dry_run:
        cfg = Config(train=100, test=50, epochs=1, hidden=16, emb=8, seed=args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(cfg.seed)
    data = [random_expression(rng, rng.randint(2, cfg.max_leaves)) for _ in range(cfg.train)]
    test = [random_expression(rng, rng.randint(2, cfg.max_leaves)) for _ in range(cfg.test)]
    counts = torch.bincount(batch(test)[1], minlength=10)
    print(f"majority class on test: {counts.max().item() / counts.sum().item():.1%} of the nodes")
    results = {}
    for kind in ("bottom-up", "bidirectional"):
        torch.manual_seed(cfg.seed)
        model = make_model(kind, cfg)
        t0 = time.perf_counter()
        train(model, data, cfg, random.Random(cfg.seed))
        acc = results[kind] = evaluate(model, test)
        print(
            f"{kind:>13}: test accuracy at the roots {acc['root']:.1%}, every node "
            f"{acc['node']:.1%}, the leaves {acc['leaf']:.1%} ({time.perf_counter() - t0:.1f} s)"
        )
    return results


if __name__ == "__main__":
    main()
