"""The seed's dynamic MNIST nets written for ONE sample, trained batched by `dynamic.autobatch`.

    python examples/autobatch_mnist.py --net halting   # while ||h|| < threshold: h = layer(h)
    python examples/autobatch_mnist.py --net depth     # the shared layer, a random number of times
    python examples/autobatch_mnist.py --net branch    # a random branch of 0-3 layers
    python examples/autobatch_mnist.py --dry-run       # all three on random images, seconds

Each sample draws its own depth / branch (from a torch.Generator the loop owns, passed in with
the sample) or stops on its own step: the per-sample code is the tutorial's, with `if` and
`while` on plain Python ints and on tensor values. Compare dynamic/nets.py, where the same nets
are batched by hand (group by draw, active set).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dynamic.autobatch import autobatch
from dynamic.nets import HaltingNet, RandomBranchNet, RandomDepthNet
from treelstm.runtime import add_config_arguments, config_from_args


@dataclass
class Config:
    net: str = "halting"  # halting | depth | branch
    train: int = 10000  # first N training images
    test: int = 2000
    epochs: int = 1
    batch_size: int = 128  # the tutorial's
    lr: float = 0.01  # SGD with momentum 0.5, the tutorial's
    threshold: float = 10.0  # halting: stop once ||h|| reaches it
    max_steps: int = 3  # halting: the README's default cap
    seed: int = 666  # the tutorial's


# -- the per-sample code ------------------------------------------------------------------------
def depth_sample(net: RandomDepthNet, x, depth: int):
    h = F.relu(net.input_layer(x))
    for _ in range(depth):
        h = F.relu(net.hidden_layer(h))
    return F.log_softmax(net.output_layer(h), dim=-1)


def branch_sample(net: RandomBranchNet, x, branch: int):
    h = F.relu(net.input_layer(x))
    for layer in net.branch_layers[:branch]:
        h = F.relu(layer(h))
    out = net.output_layer_wide if branch == 1 else net.output_layer
    return F.log_softmax(out(h), dim=-1)


def halting_sample(net: HaltingNet, x, _):
    h = F.relu(net.input_layer(x))
    steps = 0
    while steps < net.max_steps and h.norm() < net.threshold:
        h = F.relu(net.hidden_layer(h))
        steps += 1
    return F.log_softmax(net.output_layer(h), dim=-1), steps


def build(cfg: Config):
    """(net, per-sample function of (x, draw), number of draws or 0)."""
    torch.manual_seed(cfg.seed)
    if cfg.net == "depth":
        net = RandomDepthNet()
        return net, lambda e: (depth_sample(net, *e), None), net.n_choices
    if cfg.net == "branch":
        net = RandomBranchNet()
        return net, lambda e: (branch_sample(net, *e), None), net.n_choices
    net = HaltingNet(threshold=cfg.threshold, max_steps=cfg.max_steps)
    return net, lambda e: halting_sample(net, *e), 0


# -- training -----------------------------------------------------------------------------------
def _draws(n: int, choices: int, gen: torch.Generator) -> list[int]:
    if not choices:
        return [0] * n
    return torch.randint(choices, (n,), generator=gen).tolist()


def train(cfg: Config, x, y):
    net, sample, choices = build(cfg)
    batched = autobatch(sample)
    optim = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.5)
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            draws = _draws(len(idx), choices, gen)
            out = batched.map(list(zip(x[idx], draws, strict=True)))
            logp = torch.stack([o for o, _ in out])
            loss = F.nll_loss(logp, y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}: train loss {total / len(x):.4f}")
    return net, batched, choices


@torch.no_grad()
def evaluate(batched, choices: int, x, y, seed: int) -> tuple[float, Counter]:
    gen = torch.Generator().manual_seed(seed + 1)
    out = batched.map(list(zip(x, _draws(len(x), choices, gen), strict=True)))
    pred = torch.stack([o for o, _ in out]).argmax(1)
    steps = Counter(s for _, s in out if s is not None)
    return (pred == y).float().mean().item(), steps


def load(args, cfg: Config):
    root = args.data_dir or os.environ.get("TREELSTM_DATA")
    if not args.dry_run and root and (Path(root) / "MNIST" / "raw").exists():
        from torchvision.datasets import MNIST

        def part(train: bool, n: int):
            ds = MNIST(root, train=train, download=False)
            return ds.data[:n].float().div(255).sub(0.1307).div(0.3081).reshape(
                -1, 784
            ), ds.targets[:n]

        return (*part(True, cfg.train), *part(False, cfg.test)), "MNIST"
    # Random images whose class is a linear function of them: learnable, offline.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.train + cfg.test, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    n = cfg.train
    return (x[:n], y[:n], x[n:], y[n:]), "random images (dry run or no MNIST)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder with MNIST/raw (default $TREELSTM_DATA)")
    add_config_arguments(p, Config)
    p.add_argument("--dry-run", action="store_true", help="all three nets, 384 random images")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(Config, args)
    nets = ("halting", "depth", "branch") if args.dry_run else (cfg.net,)
    if args.dry_run:
        cfg.train, cfg.test, cfg.epochs = 256, 128, 1
    (xtr, ytr, xte, yte), where = load(args, cfg)
    out = {}
    for name in nets:
        cfg.net = name
        print(f"{name} net on {where}:")
        _, batched, choices = train(cfg, xtr, ytr)
        acc, steps = evaluate(batched, choices, xte, yte, cfg.seed)
        out[name] = acc
        extra = f"; halting steps {dict(sorted(steps.items()))}" if steps else ""
        print(f"  test accuracy {100 * acc:.2f}%{extra}")
    return out


if __name__ == "__main__":
    main()
