"""Epoch time and accuracy of the random-depth net on MNIST: the tutorial's data path vs ours.

    python -m benchmarks.mnist_epoch [--epochs 8] [--quick] [--threads N] [--data-dir D]
                                     [--json runs/bench/mnist_epoch.json] [--plot FILE.png]

Strategies, run one after another in ONE process with the same thread count:

- tutorial: the tutorial's data path: torchvision's MNIST dataset with a per-sample
  ToTensor() + Normalize((0.1307,), (0.3081,)) transform, through a DataLoader (batch 128,
  shuffle=True, no workers, as the tutorial has on CPU); the tutorial's net (ReLU on the output
  layer: `RandomDepthNet(faithful=True)`), its depth drawn with Python's `random` once per
  batch, and `loss.item()` every step (the tutorial fed each loss to livelossplot).
- ours: `dynamic.train.train`: MNIST read into tensors and normalised once, one
  `torch.randperm` per epoch from a `torch.Generator`, each batch an index into the tensors;
  the default net (no output ReLU).
- ours-faithful: our data path with the tutorial's net, so the data path alone is compared.

Each strategy trains from the same seed (SGD lr 0.01 momentum 0.5, batch 128) after a short
warm-up on a throwaway copy; the strategies' epochs are interleaved (epoch 1 of each, then
epoch 2 of each, ...) so that a change in machine load hits them alike. Only the training loop
is timed. The test accuracy after the last epoch is measured the way the tutorial tested (one
depth drawn per test batch of 1000). The table gives median and min epoch seconds and the
speed-up of each strategy over `tutorial` (ratio of medians).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dynamic.nets import RandomDepthNet
from dynamic.train import (
    MNIST_MEAN,
    MNIST_STD,
    Config,
    DataError,
    evaluate,
    load_mnist,
    report_line,
    resolve_data_dir,
    train,
)
from treelstm.runtime import atomic_write

STRATEGIES = ("tutorial", "ours", "ours-faithful")
WARMUP_BATCHES = 20


class Tutorial:
    """The tutorial's loop over torchvision datasets and a DataLoader."""

    net = "faithful"

    def __init__(self, root: Path, cfg: Config):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        t0 = time.perf_counter()
        tf = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        )
        train_set = datasets.MNIST(str(root), train=True, transform=tf)
        test_set = datasets.MNIST(str(root), train=False, transform=tf)
        self.load_seconds = time.perf_counter() - t0

        torch.manual_seed(cfg.seed + 1000)  # warm-up on a throwaway model
        warm = RandomDepthNet(faithful=True)
        self._loop(
            warm, torch.optim.SGD(warm.parameters(), lr=cfg.lr, momentum=cfg.momentum),
            DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True),
            lambda: random.randint(0, 3), WARMUP_BATCHES,
        )  # fmt: skip

        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)  # the tutorial drew with Python's random
        self.model = RandomDepthNet(faithful=True)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True)
        self.test_loader = DataLoader(test_set, batch_size=cfg.test_batch_size, shuffle=True)

    @staticmethod
    def _loop(model, optimizer, loader, draw, max_batches=None) -> float:
        model.train()
        t = time.perf_counter()
        for i, (data, target) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            optimizer.zero_grad()
            loss = F.nll_loss(model(data, draw()), target)
            loss.item()  # the tutorial's per-step liveloss.update({'loss': loss.item()})
            loss.backward()
            optimizer.step()
        return time.perf_counter() - t

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        return self._loop(
            self.model, self.optimizer, self.train_loader, lambda: self.rng.randint(0, 3)
        )

    @torch.no_grad()
    def test(self) -> tuple[float, int, int]:
        """(mean NLL, correct, total), one depth drawn per test batch as in the tutorial."""
        self.model.eval()
        loss, correct = 0.0, 0
        for data, target in self.test_loader:
            out = self.model(data, self.rng.randint(0, 3))
            loss += F.nll_loss(out, target, reduction="sum").item()
            correct += int((out.argmax(1) == target).sum())
        n = len(self.test_loader.dataset)
        return loss / n, correct, n


class Ours:
    """dynamic.train's loop over tensors loaded and normalised once."""

    def __init__(self, root: Path, cfg: Config, faithful: bool):
        self.net = "faithful" if faithful else "default"
        t0 = time.perf_counter()
        self.data = load_mnist(root)
        self.load_seconds = time.perf_counter() - t0
        self.cfg = cfg = dataclasses.replace(cfg, faithful=faithful, progress=False)

        torch.manual_seed(cfg.seed + 1000)  # warm-up on a throwaway model
        warm = RandomDepthNet(faithful=faithful)
        n = WARMUP_BATCHES * cfg.batch_size
        train(
            warm, torch.optim.SGD(warm.parameters(), lr=cfg.lr, momentum=cfg.momentum),
            self.data.x_train[:n], self.data.y_train[:n], cfg, 0, torch.Generator(),
        )  # fmt: skip

        torch.manual_seed(cfg.seed)
        self.model = RandomDepthNet(faithful=faithful)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epochs = 0

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        self.epochs += 1
        t = time.perf_counter()
        train(
            self.model, self.optimizer, self.data.x_train, self.data.y_train, self.cfg,
            self.epochs, self.generator,
        )  # fmt: skip
        return time.perf_counter() - t

    def test(self) -> tuple[float, int, int]:
        """(mean NLL, correct, total), one depth drawn per test batch as in the tutorial."""
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        m = evaluate(self.model, self.data.x_test, self.data.y_test, self.cfg, generator=g)
        return m["loss"], m["correct"], m["total"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen strategies, their epochs interleaved; returns the JSON document."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    epochs = 1 if args.quick else args.epochs
    root, origin = resolve_data_dir(args.data_dir)
    cfg = Config(seed=args.seed, data_dir=str(root))
    runners = {
        name: Tutorial(root, cfg) if name == "tutorial"
        else Ours(root, cfg, faithful=name == "ours-faithful")
        for name in args.strategies
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in runners}
    # Interleaved, epoch by epoch: a change in machine load hits every strategy alike.
    for epoch in range(1, epochs + 1):
        for name, runner in runners.items():
            times[name].append(runner.epoch())
        done = ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items())
        print(f"epoch {epoch}/{epochs}: {done}", file=sys.stderr, flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        loss, correct, total = runner.test()
        results[name] = {
            "net": runner.net, "load_seconds": runner.load_seconds,
            "epoch_seconds": times[name],
            "median_epoch_seconds": statistics.median(times[name]),
            "min_epoch_seconds": min(times[name]),
            "test_loss": loss, "test_correct": correct, "test_total": total,
            "test_accuracy": 100.0 * correct / total,
            "test_line": report_line(loss, correct, total),
        }  # fmt: skip
    base = results.get("tutorial")
    for r in results.values():
        r["speedup_vs_tutorial"] = (
            base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
        )
    return {
        "benchmark": "mnist_epoch",
        "command": " ".join(["python -m benchmarks.mnist_epoch", *sys.argv[1:]]),
        "settings": {
            "epochs": epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "momentum": cfg.momentum, "seed": cfg.seed, "threads": torch.get_num_threads(),
            "data": str(root / "MNIST" / "raw"), "data_from": origin,
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "warmup_batches": WARMUP_BATCHES,
            "load_average": _load_average(),
        },
        "strategies": results,
    }  # fmt: skip


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load average: other work on the machine skews every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def table(doc: dict[str, Any]) -> str:
    """The results as a fixed-width text table."""
    s = doc["settings"]
    lines = [
        f"MNIST random-depth net, batch {s['batch_size']}, SGD lr {s['lr']} momentum "
        f"{s['momentum']}, {s['epochs']} epoch(s), seed {s['seed']}, {s['threads']} thread(s), "
        f"torch {s['torch']}, load average {s['load_average']}",
        f"{'strategy':<14} {'net':<9} {'load s':>7} {'epoch s med':>12} {'min':>7} "
        f"{'speed-up':>9} {'test acc':>9}",
    ]
    for name, r in doc["strategies"].items():
        speedup = f"{r['speedup_vs_tutorial']:.2f}x" if r["speedup_vs_tutorial"] else "-"
        lines.append(
            f"{name:<14} {r['net']:<9} {r['load_seconds']:>7.2f} "
            f"{r['median_epoch_seconds']:>12.3f} {r['min_epoch_seconds']:>7.3f} "
            f"{speedup:>9} {r['test_accuracy']:>8.2f}%"
        )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Bar chart of the median epoch time per strategy."""
    from matplotlib.figure import Figure

    names = list(doc["strategies"])
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(names, [doc["strategies"][n]["median_epoch_seconds"] for n in names])
    ax.set(ylabel="seconds per epoch (median)", title="MNIST random-depth net, one epoch")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="timed epochs per strategy")
    p.add_argument("--quick", action="store_true", help="one epoch per strategy")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=666, help="the tutorial's seed")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    args = p.parse_args(argv)
    try:
        doc = run(args)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(table(doc))
    if args.json:
        text = json.dumps(doc, indent=2)
        atomic_write(args.json, lambda f: f.write(text.encode()))
    if args.plot:
        plot(doc, args.plot)
    return doc


if __name__ == "__main__":
    main()
