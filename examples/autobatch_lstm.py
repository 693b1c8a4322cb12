"""A sequence model written for ONE sentence (an LSTM cell stepped over its words in a Python
loop), trained batched by `dynamic.autobatch`: sentences of every length share each step's call.

    python examples/autobatch_lstm.py --data-dir ../shared/data   # SST sentences, root label
    python examples/autobatch_lstm.py --dry-run                   # generated sentences, seconds

Calls of step t of every sentence that is that long run as one LSTMCell call; a sentence that
has ended simply makes no more calls.
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
from treelstm import Vocab, load_sst
from treelstm.runtime import add_config_arguments, config_from_args


@dataclass
class Config:
    train: int = 3000  # first N sentences
    test: int = 500
    epochs: int = 3
    batch_size: int = 25
    emb: int = 64
    hidden: int = 128
    lr: float = 0.003  # Adam
    seed: int = 0


class SentenceLSTM(nn.Module):
    def __init__(self, vocab: Vocab, classes: int, cfg: Config) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.vocab = vocab
        self.emb = nn.Embedding(len(vocab), cfg.emb)
        self.cell = nn.LSTMCell(cfg.emb, cfg.hidden)
        self.head = nn.Linear(cfg.hidden, classes)

    def sentence(self, example):
        """ONE sentence: (log-probabilities of its class, its label)."""
        words, label = example
        x = self.emb(torch.tensor([self.vocab(w) for w in words]))  # [n, emb]
        state = None
        for x_t in x:  # one LSTM step per word; row t of x costs no call
            state = self.cell(x_t, state)
        return F.log_softmax(self.head(state[0]), dim=-1), label


def generated(n: int, seed: int) -> list[tuple[list[str], int]]:
    """Sentences over a, b and filler words; the class says which of a / b is more frequent
    (0, 1, or 2 for a tie), so the model must count across the whole sentence."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(["a", "b", "x", "y", "z"]) for _ in range(rng.randint(1, 15))]
        a, b = words.count("a"), words.count("b")
        out.append((words, 0 if a > b else 1 if b > a else 2))
    return out


def load(args, cfg: Config):
    root = args.data_dir or os.environ.get("TREELSTM_DATA")
    if args.dry_run or not root or not os.path.exists(os.path.join(root, "sst", "train.txt")):
        return generated(cfg.train, 1), generated(cfg.test, 2), 3, "generated sentences"
    data = load_sst(
        os.path.join(root, "sst"), splits=("train", "dev"), limit=max(cfg.train, cfg.test)
    )
    pick = lambda ts, n: [(t.words(), t.label) for t in ts[:n]]  # noqa: E731
    return pick(data["train"], cfg.train), pick(data["dev"], cfg.test), 5, "SST sentences"


def train(model, data, cfg: Config) -> None:
    batched = model.batched = autobatch(model.sentence)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    for epoch in range(cfg.epochs):
        data = data[:]
        rng.shuffle(data)
        total = 0.0
        for i in range(0, len(data), cfg.batch_size):
            out = batched.map(data[i : i + cfg.batch_size])
            loss = F.nll_loss(torch.stack([lp for lp, _ in out]), torch.tensor([y for _, y in out]))
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}: train loss {total / -(-len(data) // cfg.batch_size):.3f}")


@torch.no_grad()
def evaluate(model, data) -> float:
    out = model.batched.map(data)
    pred = torch.stack([lp for lp, _ in out]).argmax(1)
    return (pred == torch.tensor([y for _, y in out])).float().mean().item()


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder holding sst/ (default $TREELSTM_DATA)")
    add_config_arguments(p, Config)
    p.add_argument("--dry-run", action="store_true", help="generated sentences, seconds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(Config, args)
    if args.dry_run:
        cfg.train, cfg.test, cfg.epochs, cfg.emb, cfg.hidden = 100, 50, 1, 8, 16
    train_data, test_data, classes, where = load(args, cfg)
    vocab = Vocab(w for words, _ in train_data + test_data for w in words)
    model = SentenceLSTM(vocab, classes, cfg)
    train(model, train_data, cfg)
    acc = evaluate(model, test_data)
    print(
        f"{where}: test accuracy {100 * acc:.1f}% ({len(test_data)} sentences, {classes} classes)"
    )
    return acc


if __name__ == "__main__":
    main()
