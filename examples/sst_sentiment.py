"""Sentence sentiment with a binary Tree-LSTM on the Stanford Sentiment Treebank
(Tai, Socher & Manning 2015): a compact version of ``python -m treelstm.train sst``.

    python examples/sst_sentiment.py --data-dir ../shared/data --embeddings GLOVE.txt
    python examples/sst_sentiment.py --dry-run        # generated trees, offline, seconds

Every node of every tree is classified (5 classes); accuracy is reported at the root.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from treelstm.cells import NaryCell
from treelstm.data import Vocab, find_data, load_sst, load_vectors, synthetic_sst
from treelstm.models import SentimentModel, TreeLSTM
from treelstm.schedule import build_schedule, collate


def train(model, trees, vocab, epochs: int, batch_size: int = 25) -> None:
    emb = model.encoder.embedding.weight
    others = [p for p in model.parameters() if p is not emb]
    optim = torch.optim.Adagrad(others, lr=0.05, weight_decay=1e-4)  # the reference's settings
    emb_optim = torch.optim.SGD([emb], lr=0.1)  # embeddings tuned at their own rate
    # The schedule of each batch is built in the DataLoader's collate_fn.
    loader = DataLoader(trees, batch_size, shuffle=True, collate_fn=collate(vocab, n_ary=2))
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for schedule in loader:
            logits = model(schedule)  # [N, 5]: every node
            loss = F.cross_entropy(logits, schedule.labels, reduction="sum") / schedule.batch_size
            optim.zero_grad()
            emb_optim.zero_grad()
            loss.backward()
            optim.step()
            emb_optim.step()
            total += loss.item()
        print(f"epoch {epoch}: train loss {total / len(loader):.3f}")


@torch.no_grad()
def evaluate(model, trees, vocab) -> float:
    model.eval()
    schedule = build_schedule(trees, vocab, n_ary=2)
    pred = model(schedule)[schedule.roots].argmax(1)
    return (pred == schedule.labels[schedule.roots]).float().mean().item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder with sst/ (or train.txt); default $TREELSTM_DATA")
    p.add_argument("--embeddings", help="GloVe-format vectors (default: random)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--dry-run", action="store_true", help="generated trees, no data needed")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.dry_run:
        print("dry run: 100 generated trees instead of SST")
        train_trees, dev_trees = synthetic_sst(100, seed=1), synthetic_sst(30, seed=2)
        args.epochs, args.hidden, args.embeddings = 2, 32, None
    else:
        data = load_sst(find_data("sst", args.data_dir), "fine", splits=("train", "dev"))
        train_trees, dev_trees = data["train"], data["dev"]
    vocab = Vocab.from_trees(train_trees + dev_trees, lower=True)
    vectors = None
    if args.embeddings:
        vectors, coverage = load_vectors(args.embeddings, vocab)
        print(coverage)
    dim = 50 if vectors is None else vectors.shape[1]
    cell = NaryCell(dim, args.hidden, n_ary=2, input_at="leaves")  # words at the leaves only
    model = SentimentModel(TreeLSTM(len(vocab), cell, embeddings=vectors), num_classes=5)
    train(model, train_trees, vocab, args.epochs)
    print(f"dev root accuracy: {evaluate(model, dev_trees, vocab):.3f}")


if __name__ == "__main__":
    main()
