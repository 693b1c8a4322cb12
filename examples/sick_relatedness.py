"""Semantic relatedness of sentence pairs (SICK) with a Child-Sum Tree-LSTM over dependency
trees (Tai, Socher & Manning 2015): a compact version of ``python -m treelstm.train sick``.

    python examples/sick_relatedness.py --data-dir ../shared/data --embeddings GLOVE.txt
    python examples/sick_relatedness.py --dry-run     # generated pairs, offline, seconds

The model predicts a distribution over the scores 1..5; the prediction is its expectation.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from treelstm.cells import ChildSumCell
from treelstm.data import Vocab, find_data, load_sick, load_vectors, synthetic_sick
from treelstm.models import RelatednessModel, TreeLSTM, relatedness_loss
from treelstm.schedule import build_schedule


class PairBatch:
    """collate_fn: the a-trees' schedule, the b-trees' schedule, the gold scores."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, pairs):
        a = build_schedule([p.a for p in pairs], self.vocab)
        b = build_schedule([p.b for p in pairs], self.vocab)
        return a, b, torch.tensor([p.score for p in pairs])


def train(model, pairs, vocab, epochs: int, batch_size: int = 25) -> None:
    params = [p for p in model.parameters() if p.requires_grad]  # embeddings are frozen
    optim = torch.optim.Adagrad(params, lr=0.05, weight_decay=1e-4)
    loader = DataLoader(pairs, batch_size, shuffle=True, collate_fn=PairBatch(vocab))
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for a, b, scores in loader:
            loss = relatedness_loss(model(a, b), scores)  # KL to the sparse target
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
        print(f"epoch {epoch}: train KL {total / len(loader):.4f}")


@torch.no_grad()
def evaluate(model, pairs, vocab) -> dict:
    model.eval()
    a, b, gold = PairBatch(vocab)(pairs)
    pred = model.expected_score(model(a, b))
    r = torch.corrcoef(torch.stack([pred, gold]))[0, 1].item()
    return {"pearson": r, "mse": ((pred - gold) ** 2).mean().item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder with sick/ (or train/ dev/ test/)")
    p.add_argument("--embeddings", help="GloVe-format vectors (default: random)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--dry-run", action="store_true", help="generated pairs, no data needed")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.dry_run:
        print("dry run: 100 generated sentence pairs instead of SICK")
        train_pairs, dev_pairs = synthetic_sick(100, seed=1), synthetic_sick(30, seed=2)
        args.epochs, args.hidden, args.embeddings = 2, 32, None
    else:
        data = load_sick(find_data("sick", args.data_dir), splits=("train", "dev"))
        train_pairs, dev_pairs = data["train"], data["dev"]
    vocab = Vocab.from_trees(t for p in train_pairs + dev_pairs for t in (p.a, p.b))
    vectors = None
    if args.embeddings:
        vectors, coverage = load_vectors(args.embeddings, vocab)
        print(coverage)
    dim = 50 if vectors is None else vectors.shape[1]
    cell = ChildSumCell(dim, args.hidden, output_gate=False)  # h = tanh(c), as the reference
    encoder = TreeLSTM(len(vocab), cell, embeddings=vectors, freeze_embeddings=True)
    model = RelatednessModel(encoder, sim_hidden=50)
    train(model, train_pairs, vocab, args.epochs)
    print("dev:", {k: round(v, 4) for k, v in evaluate(model, dev_pairs, vocab).items()})


if __name__ == "__main__":
    main()
