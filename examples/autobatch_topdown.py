"""A bidirectional Tree-LSTM written per tree: a bottom-up pass, then a top-down pass from the
root to the leaves, batched by `dynamic.autobatch` (the level executor only runs bottom-up).

    python examples/autobatch_topdown.py              # generated trees, ~a minute
    python examples/autobatch_topdown.py --dry-run    # seconds

The task needs the top-down pass: every node is labelled with the sum of ALL the digits of its
tree mod 5, which a node only knows if information flows back down from the root. The script
trains the bidirectional model and the bottom-up-only one and prints both node accuracies.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dynamic.autobatch import autobatch
from treelstm import ChildSumCell, Tree
from treelstm.runtime import add_config_arguments, config_from_args


@dataclass
class Config:
    trees: int = 2000  # generated training trees
    test: int = 300
    epochs: int = 6
    batch_size: int = 32
    hidden: int = 48
    lr: float = 0.01  # Adam
    seed: int = 0


class BiTreeLSTM(nn.Module):
    """Up: Child-Sum Tree-LSTM over the digits. Down: an LSTM cell from each parent's down
    state, fed the node's up state. A 5-way head on [up; down] at every node."""

    def __init__(self, cfg: Config, top_down: bool = True) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        H = cfg.hidden
        self.top_down = top_down
        self.digit = nn.Embedding(10, 16)
        self.up = ChildSumCell(16, H)
        self.down = nn.LSTMCell(H, H)
        self.head = nn.Linear(2 * H if top_down else H, 5)
        self.no_x, self.no_kids = torch.zeros(1, 16), torch.zeros(1, 0, H)
        self.masks = {k: torch.ones(1, k, dtype=torch.bool) for k in range(8)}

    def tree(self, tree: Tree):
        """ONE tree -> (loss summed over its nodes, number of correct nodes)."""
        up = {}  # node -> (h, c) of the bottom-up pass

        def upward(t):
            kids = [upward(k) for k in t.children]
            x = self.digit(torch.tensor([int(t.word)])) if t.word is not None else self.no_x
            ch = torch.stack([h for h, _ in kids], 1) if kids else self.no_kids
            cc = torch.stack([c for _, c in kids], 1) if kids else self.no_kids
            up[id(t)] = self.up(x, ch, cc, self.masks[len(kids)])
            return up[id(t)]

        upward(tree)
        feats = []

        def downward(t, state):
            h_up = up[id(t)][0]
            state = self.down(h_up, state)  # the root starts from zeros (state None)
            feats.append(torch.cat([h_up, state[0]], 1) if self.top_down else h_up)
            for k in t.children:
                downward(k, state)

        downward(tree, None)
        logits = self.head(torch.cat(feats))  # pre-order, like tree.preorder()
        labels = torch.tensor([t.label for t in tree.preorder()])
        return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(1) == labels).sum()


def generated(n: int, seed: int) -> list[Tree]:
    """Random trees over digits (words at leaves and at some internal nodes); every node's
    label is the sum of all the tree's digits mod 5."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = [Tree(None, str(rng.randrange(10))) for _ in range(rng.randint(1, 8))]
        while len(row) > 1:
            k = rng.randint(2, min(3, len(row)))
            i = rng.randrange(len(row) - k + 1)
            word = str(rng.randrange(10)) if rng.random() < 0.3 else None
            row[i : i + k] = [Tree(None, word, row[i : i + k])]
        digits = sum(int(t.word) for t in row[0].preorder() if t.word is not None)
        out.append(_relabel(row[0], digits % 5))
    return out


def _relabel(t: Tree, label: int) -> Tree:
    return Tree(label, t.word, [_relabel(k, label) for k in t.children])


def train(model, trees, cfg: Config) -> None:
    batched = autobatch(model.tree)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    for _ in range(cfg.epochs):
        trees = trees[:]
        rng.shuffle(trees)
        for i in range(0, len(trees), cfg.batch_size):
            batch = trees[i : i + cfg.batch_size]
            loss = torch.stack([lo for lo, _ in batched.map(batch)]).sum() / len(batch)
            optim.zero_grad()
            loss.backward()
            optim.step()
    model.batched = batched


@torch.no_grad()
def evaluate(model, trees) -> float:
    correct = sum(int(c) for _, c in model.batched.map(trees))
    return correct / sum(t.size for t in trees)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p, Config)
    p.add_argument("--dry-run", action="store_true", help="a few dozen trees, one epoch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(Config, args)
    if args.dry_run:
        cfg.trees, cfg.test, cfg.epochs, cfg.hidden = 64, 32, 1, 8
    train_trees, test_trees = generated(cfg.trees, cfg.seed), generated(cfg.test, cfg.seed + 1)
    out = {}
    for name, top_down in (("bidirectional", True), ("bottom-up only", False)):
        model = BiTreeLSTM(cfg, top_down)
        train(model, train_trees, cfg)
        out[name] = acc = evaluate(model, test_trees)
        print(f"{name}: node accuracy {100 * acc:.1f}% on {cfg.test} test trees (chance 20%)")
    return out


if __name__ == "__main__":
    main()
