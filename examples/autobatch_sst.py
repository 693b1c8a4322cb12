"""Tree-LSTM sentiment on SST written as a recursive function of ONE tree, trained batched by
`dynamic.autobatch`, beside the same model trained with the level executor.

    python examples/autobatch_sst.py --data-dir ../shared/data            # 2000 train trees
    python examples/autobatch_sst.py --compare-level                       # + the level run
    python examples/autobatch_sst.py --dry-run                             # generated, seconds

Both runs start from the same weights and see the same batches in the same order; they
compute the same function, so their dev accuracies agree (to float rounding).
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dynamic.autobatch import autobatch
from treelstm import NaryCell, Tree, Vocab, build_schedule, load_sst, run
from treelstm.runtime import add_config_arguments, config_from_args


@dataclass
class Config:
    train: int = 2000  # first N train trees (the comparison is on a subset)
    dev: int = 500  # first N dev trees
    epochs: int = 3
    batch_size: int = 25  # the paper's
    hidden: int = 150  # the paper's memory size
    emb: int = 100  # random word vectors, frozen (no download needed)
    lr: float = 0.05  # AdaGrad, the reference code's rate
    seed: int = 0


class TreeSentiment(nn.Module):
    """Frozen word vectors -> binary N-ary Tree-LSTM (words at the leaves) -> 5 classes."""

    def __init__(self, vocab: Vocab, cfg: Config) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.vocab = vocab
        self.emb = nn.Embedding(len(vocab), cfg.emb).requires_grad_(False)
        self.cell = NaryCell(cfg.emb, cfg.hidden, n_ary=2, input_at="leaves")
        self.head = nn.Linear(cfg.hidden, 5)
        self.no_x = torch.zeros(1, cfg.emb)
        self.no_kids = torch.zeros(1, 2, cfg.hidden)
        self.leaf, self.full = torch.tensor([[False, False]]), torch.tensor([[True, True]])

    def tree(self, tree: Tree):
        """ONE tree: (loss summed over its nodes, root logits). Plain recursive PyTorch."""
        words = self.emb(torch.tensor([self.vocab(w) for w in tree.words()]))
        leaf = iter(range(len(words)))
        states = []

        def node(t):
            if t.children:
                (hl, cl), (hr, cr) = [node(k) for k in t.children]
                h, c = self.cell(
                    self.no_x, torch.stack([hl, hr], 1), torch.stack([cl, cr], 1), self.full
                )
            else:
                j = next(leaf)
                h, c = self.cell(words[j : j + 1], self.no_kids, self.no_kids, self.leaf)
            states.append(h)
            return h, c

        node(tree)
        logits = self.head(torch.cat(states))  # every node, post-order: the root last
        labels = torch.tensor([t.label for t in tree.postorder()])
        return F.cross_entropy(logits, labels, reduction="sum"), logits[-1]

    def level(self, trees: list[Tree]):
        """The same model through the level executor: (summed loss, root logits [B, 5])."""
        s = build_schedule(trees, self.vocab, n_ary=2)
        h, _ = run(self.cell, s, self.emb(s.tokens.clamp(min=0)), "level")
        logits = self.head(h)
        return F.cross_entropy(logits, s.labels, reduction="sum"), logits[s.roots]


def batch_forward(model, trees, engine):
    """(mean loss per tree, root logits [B, 5]) of a batch, by autobatch or the level executor."""
    if engine == "level":
        loss, roots = model.level(trees)
        return loss / len(trees), roots
    out = model.batched.map(trees)
    return torch.stack([lo for lo, _ in out]).sum() / len(trees), torch.stack([r for _, r in out])


def train(model, trees, cfg: Config, engine: str) -> None:
    """cfg.epochs of AdaGrad; the batch order depends on cfg.seed only."""
    optim = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    order = random.Random(cfg.seed)
    for epoch in range(cfg.epochs):
        trees = trees[:]
        order.shuffle(trees)
        total = 0.0
        for i in range(0, len(trees), cfg.batch_size):
            loss, _ = batch_forward(model, trees[i : i + cfg.batch_size], engine)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
        steps = -(-len(trees) // cfg.batch_size)
        print(f"  [{engine}] epoch {epoch + 1}: train loss {total / steps:.3f}")


@torch.no_grad()
def evaluate(model, trees, engine: str) -> float:
    """Root accuracy (5 classes)."""
    _, roots = batch_forward(model, trees, engine)
    gold = torch.tensor([t.label for t in trees])
    return (roots.argmax(1) == gold).float().mean().item()


def generated(n: int, seed: int) -> list[Tree]:
    """Trees whose root label is the majority of a few sentiment words (learnable quickly)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [
            rng.choice(["good", "bad", "fine", "film", "plot", "a"])
            for _ in range(rng.randint(2, 9))
        ]
        score = sum({"good": 1, "fine": 1, "bad": -1}.get(w, 0) for w in words)
        row = [Tree(2, w) for w in words]
        while len(row) > 1:
            k = rng.randrange(len(row) - 1)
            row[k : k + 2] = [Tree(2, None, row[k : k + 2])]
        out.append(
            Tree(0 if score < 0 else 4 if score > 0 else 2, None, row[0].children or [row[0]])
        )
    return [
        t if len(t.children) != 1 else Tree(t.label, None, [t.children[0], Tree(2, "a")])
        for t in out
    ]


def load(args, cfg: Config):
    if args.dry_run:
        return generated(cfg.train, 1), generated(cfg.dev, 2)
    root = args.data_dir or os.environ.get("TREELSTM_DATA") or "."
    data = load_sst(
        os.path.join(root, "sst"), splits=("train", "dev"), limit=max(cfg.train, cfg.dev)
    )
    return data["train"][: cfg.train], data["dev"][: cfg.dev]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder holding sst/ (default $TREELSTM_DATA)")
    add_config_arguments(p, Config)
    p.add_argument("--compare-level", action="store_true", help="train the level executor too")
    p.add_argument("--dry-run", action="store_true", help="generated trees, a few seconds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(Config, args)
    if args.dry_run:
        cfg.train, cfg.dev, cfg.epochs, cfg.hidden, cfg.emb = 60, 30, 2, 16, 8
    train_trees, dev_trees = load(args, cfg)
    vocab = Vocab(w for t in train_trees + dev_trees for w in t.words())
    out = {}
    for engine in ("autobatch", "level") if args.compare_level or args.dry_run else ("autobatch",):
        model = TreeSentiment(vocab, cfg)
        model.batched = autobatch(model.tree)
        train(model, train_trees, cfg, engine)
        out[engine] = acc = evaluate(model, dev_trees, engine)
        print(f"{engine}: dev root accuracy {100 * acc:.1f}% ({len(dev_trees)} trees)")
    return out


if __name__ == "__main__":
    main()
