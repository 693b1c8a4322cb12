"""Batching strategies side by side: per-node recursion, per-tree, level-batched (plain autograd
and fused), and a flat "oracle" bound.

For each cell and batch size it times forward + backward of a cross-entropy at every node
(embeddings frozen) and prints trees/s, nodes/s, the ratio to per-node recursion and to the
oracle, and the share of a training step that building the schedule would take.

The oracle does the same node evaluations with the tree dependencies removed: every leaf in one
cell call, every internal node in a second call reading its children's states from a constant
buffer. No scheduler can beat it on the same cell, so `ratio_vs_oracle` says how much the
level loop costs.

    python -m benchmarks.batching [--trees sst|synthetic|PATH] [--data-dir D]
        [--cell childsum,nary] [--batch-sizes 1,25,256] [--hidden 150] [--emb 300]
        [--threads 2] [--device auto|cpu|cuda] [--check] [--quick] [--json out.json]
        [--plot out.png]

On a GPU, schedules are built on the CPU and copied from pinned memory without blocking (that
time is the "schedule" column), and each timed step ends with a device synchronisation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from treelstm.cells import ChildSumCell, NaryCell
from treelstm.executor import run
from treelstm.schedule import build_schedule
from treelstm.tree import Tree, read_ptb

STRATEGIES = ("recursive", "tree", "level_autograd", "level", "oracle")


# -- data -----------------------------------------------------------------------------------
def synthetic_trees(n: int, seed: int = 0, vocab: int = 2000) -> list[Tree]:
    """Random binary trees with SST-like sentence lengths (2..45 words), labels 0..4."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = [
            Tree(rng.randrange(5), f"w{rng.randrange(vocab)}") for _ in range(rng.randint(2, 45))
        ]
        while len(row) > 1:
            k = rng.randrange(len(row) - 1)
            row[k : k + 2] = [Tree(rng.randrange(5), None, row[k : k + 2])]
        out.append(row[0])
    return out


def load_trees(spec: str, data_dir: str | None) -> tuple[list[Tree], str]:
    """(trees, description). 'sst' falls back to synthetic trees, saying so, when absent."""
    if spec == "synthetic":
        return synthetic_trees(8544), "synthetic binary trees (SST-like lengths)"
    if spec == "sst":
        root = data_dir or os.environ.get("TREELSTM_DATA")
        path = Path(root, "sst", "train.txt") if root else None
        if path is None or not path.exists():
            where = path or "no --data-dir / TREELSTM_DATA"
            print(f"SST not found ({where}); using synthetic trees instead", file=sys.stderr)
            return synthetic_trees(8544), "synthetic binary trees (SST not found)"
        return read_ptb(path), f"SST train ({path})"
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"--trees: no such file: {path}")
    try:
        trees = read_ptb(path)
    except ValueError:
        trees = read_ptb(path, label_type=str)  # Penn Treebank style labels ("NP")
    return trees, f"bracketed trees from {path}"


# -- one training-like step per strategy ----------------------------------------------------
class Bench:
    def __init__(
        self,
        kind: str,
        trees: list[Tree],
        hidden: int,
        emb: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        torch.manual_seed(seed)
        self.kind = kind
        self.device = torch.device(device)
        self.vocab: dict[str, int] = {}
        for t in trees:
            for w in t.flat().words:
                if w is not None:
                    self.vocab.setdefault(w, len(self.vocab))
        fan_out = max(max(len(n.children) for n in t.postorder()) for t in trees)
        self.n_ary = max(2, fan_out) if kind == "nary" else None
        if kind == "childsum":
            self.cell = ChildSumCell(emb, hidden)
        else:
            self.cell = NaryCell(emb, hidden, n_ary=self.n_ary)
        self.emb = torch.randn(len(self.vocab) + 1, emb) * 0.1  # frozen; last row = no word
        self.emb[-1] = 0
        self.head = torch.nn.Linear(hidden, 5)
        self.cell.to(self.device)
        self.head.to(self.device)
        self.emb = self.emb.to(self.device)
        self.params = [*self.cell.parameters(), *self.head.parameters()]
        self._const: torch.Tensor | None = None  # the oracle's stand-in child states

    def schedule(self, trees):
        s = build_schedule(trees, self.vocab, n_ary=self.n_ary)
        if self.device.type == "cuda":
            s = s.pin_memory().to(self.device, non_blocking=True)
        return s

    def sync(self) -> None:
        """Wait for the device (a no-op on the CPU), so a timer sees finished work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def targets(self, s):
        if s.labels is None:
            return torch.zeros(s.num_nodes, dtype=torch.long, device=self.device)
        return s.labels.clamp(0, 4)

    def step(self, s, strategy: str) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        x = self.emb[torch.where(s.tokens >= 0, s.tokens, len(self.emb) - 1)]
        if strategy == "oracle":
            h = self._oracle(s, x)
        else:
            h, _ = run(self.cell, s, x, strategy)
        loss = F.cross_entropy(self.head(h), self.targets(s))
        loss.backward()
        return h

    def _oracle(self, s, x):
        """Leaves in one call, internal nodes in one call, children read from constants."""
        N, H = s.num_nodes, self.cell.hidden_size
        n0 = s.num_leaves
        ch = s.children
        if self.n_ary is not None and ch.shape[1] < self.n_ary:
            ch = torch.cat([ch, ch.new_full((N, self.n_ary - ch.shape[1]), -1)], dim=1)
        if self._const is None or self._const.shape[0] < N + 1:  # drawn once, not timed
            self._const = torch.rand(N + 1, H, device=self.device) - 0.5
        const = self._const
        slots = torch.where(ch >= 0, ch, N)
        mask = ch >= 0
        k = ch.shape[1]
        h0, _ = self.cell(x[:n0], x.new_zeros(n0, k, H), x.new_zeros(n0, k, H), mask[:n0])
        s1 = slots[n0:]
        h1, _ = self.cell(x[n0:], const[s1], const[s1], mask[n0:])
        return torch.cat([h0, h1])


def timed(fn, reps: int, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- the checks and the measurements --------------------------------------------------------
def check(bench: Bench, trees: list[Tree]) -> float:
    """Max abs difference of root h and parameter gradients, every strategy vs recursive."""
    s = bench.schedule(trees)
    results = {}
    for strategy in ("recursive", "tree", "level_autograd", "level"):
        h = bench.step(s, strategy)
        results[strategy] = [h[s.roots].detach()] + [p.grad.clone() for p in bench.params]
    worst = 0.0
    for strategy, vals in results.items():
        d = max((a - b).abs().max().item() for a, b in zip(vals, results["recursive"], strict=True))
        print(f"  check {bench.kind:8s} {strategy:15s} max |diff| vs recursive = {d:.2e}")
        worst = max(worst, d)
    return worst


def measure(bench: Bench, trees: list[Tree], B: int, reps: int, strategies) -> list[dict]:
    n_batches = max(1, min(reps, len(trees) // B))
    batches = [trees[k * B : (k + 1) * B] for k in range(n_batches)]
    scheds = [bench.schedule(b) for b in batches]
    nodes = statistics.mean(s.num_nodes for s in scheds)
    it = iter(range(10**9))

    def build():
        bench.schedule(batches[next(it) % n_batches])

    sched_s = timed(build, reps, sync=bench.sync)
    # Round-robin over the strategies, so a burst of load elsewhere hits all of them alike.
    # Per-node recursion costs ~1 s per 5k nodes: fewer repetitions at large batches.
    slow = nodes >= 2000
    counts = {
        st: reps if st not in ("recursive", "tree") or not slow else max(1, reps // 3)
        for st in strategies
    }
    times: dict[str, list[float]] = {st: [] for st in strategies}
    for k in range(max(counts.values()) + 1):  # round 0 is the warm-up
        for st in strategies:
            if k > counts[st]:
                continue
            bench.sync()
            t = time.perf_counter()
            bench.step(scheds[k % n_batches], st)
            bench.sync()
            if k:
                times[st].append(time.perf_counter() - t)
    rows = []
    for st in strategies:
        sec = statistics.median(times[st])
        rows.append(
            {
                "strategy": st,
                "cell": bench.kind,
                "batch_size": B,
                "nodes_per_batch": nodes,
                "median_s": sec,
                "trees_per_s": B / sec,
                "nodes_per_s": nodes / sec,
                "schedule_s": sched_s,
                "repetitions": counts[st],
            }
        )
    by = {r["strategy"]: r for r in rows}
    for r in rows:
        r["ratio_vs_recursive"] = (
            r["trees_per_s"] / by["recursive"]["trees_per_s"] if "recursive" in by else None
        )
        r["ratio_vs_oracle"] = (
            r["trees_per_s"] / by["oracle"]["trees_per_s"] if "oracle" in by else None
        )
        # Share of a training step spent building its schedule (if built inline, no workers).
        r["schedule_share"] = sched_s / (sched_s + r["median_s"])
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'cell':8s} {'batch':>5s} {'strategy':15s} {'trees/s':>9s} {'nodes/s':>9s} "
        f"{'x recursive':>11s} {'x oracle':>8s} {'schedule':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        rr = r["ratio_vs_recursive"]
        ro = r["ratio_vs_oracle"]
        print(
            f"{r['cell']:8s} {r['batch_size']:5d} {r['strategy']:15s} {r['trees_per_s']:9.1f} "
            f"{r['nodes_per_s']:9.0f} {'' if rr is None else f'{rr:.1f}':>11s} "
            f"{'' if ro is None else f'{ro:.2f}':>8s} {r['schedule_share']:8.1%}"
        )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({r["cell"] for r in rows})
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.5), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        for strategy in STRATEGIES:
            pts = [
                (r["batch_size"], r["trees_per_s"])
                for r in rows
                if r["cell"] == cell and r["strategy"] == strategy
            ]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                style = "--" if strategy == "oracle" else "-"
                ax.plot(xs, ys, style, marker="o", label=strategy)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trees per batch")
        ax.set_ylabel("trees / s (forward + backward)")
        ax.set_title(f"{cell} cell")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", default="sst", help="sst, synthetic, or a file of bracketed trees")
    p.add_argument("--data-dir", default=None, help="folder holding sst/ (default $TREELSTM_DATA)")
    p.add_argument("--cell", default="childsum,nary", help="childsum, nary or both")
    p.add_argument("--batch-sizes", default="1,25,256")
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--emb", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda (or cuda:N), or auto")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions (median reported)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--check", action="store_true", help="first compare strategies (1e-4)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions: under a minute")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: expected cpu, cuda, cuda:N or auto, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device: expected cpu, cuda, cuda:N or auto, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cells = [c.strip() for c in args.cell.split(",")]
    for c in cells:
        if c not in ("childsum", "nary"):
            p.error(f"--cell: unknown cell {c!r} (childsum or nary)")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    strategies = [s.strip() for s in args.strategies.split(",")]
    for s in strategies:
        if s not in STRATEGIES:
            p.error(f"--strategies: unknown {s!r}; choose from {', '.join(STRATEGIES)}")
    reps = 3 if args.quick else args.reps

    trees, source = load_trees(args.trees, args.data_dir)
    random.Random(0).shuffle(trees)
    print(
        f"trees: {source}; {len(trees)} trees; hidden {args.hidden}, emb {args.emb}, "
        f"{args.threads} threads, device {where}, median of {reps} repetitions"
    )

    rows = []
    worst = 0.0
    for kind in cells:
        bench = Bench(kind, trees, args.hidden, args.emb, device=device)
        if args.check:
            worst = max(worst, check(bench, trees[:25]))
        for B in sizes:
            rows += measure(bench, trees, B, reps, strategies)
    print()
    print_table(rows)
    meta = {
        "source": source,
        "hidden": args.hidden,
        "emb": args.emb,
        "threads": args.threads,
        "device": where,
        "torch": torch.__version__,
        "repetitions": reps,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(
            rows,
            args.plot,
            f"{source}; hidden {args.hidden}, emb {args.emb}, {args.threads} threads, {where}",
        )
        print(f"wrote {args.plot}")
    if args.check and worst > 1e-4:
        print(f"CHECK FAILED: strategies differ by {worst:.2e} > 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
