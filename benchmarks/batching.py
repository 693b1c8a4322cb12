"""Batching strategies side by side: per-node recursion, per-tree, level-batched (plain autograd
and fused), a dependency-free oracle bound and, optionally, DyNet's automatic batching.

For each cell and batch size it times forward + backward of a cross-entropy at every node
(embeddings frozen, word vectors at the leaves by default) and prints trees/s, nodes/s, the
ratio to per-node recursion, to the oracle and to DyNet, and the share of a training step that
building the schedule would take.

  level            `run(cell, s, x, "level")`: the fused level kernels (treelstm.kernels).
  oracle           the same node evaluations with the tree dependencies removed, computed the
                   fastest way the library knows: the same fused kernels on a schedule cut to
                   two levels (every leaf, then every internal node at once reading only its
                   leaf children), W x on input rows only, every edge's forget gate evaluated.
                   No level schedule does less work in fewer steps, so `ratio_vs_oracle` is what
                   the level loop costs. Its numbers are not a Tree-LSTM's (the cut is on
                   purpose).
  oracle_autograd  the previous oracle: the cell's plain-autograd step, all leaves in one call
                   and all internal nodes in a second, W x on every row (kept for comparison).
  dynet            (--peers dynet) a per-example recursive Tree-LSTM in DyNet with
                   autobatching, same weights and loss (`benchmarks.dynet_peer`); its time
                   includes building its graph, as the schedule is its graph. DyNet is a
                   benchmark-only dependency (PyPI dynet38); the row is skipped with a note
                   when it does not import.

    python -m benchmarks.batching [--trees sst|synthetic|PATH] [--data-dir D]
        [--cell childsum,nary] [--batch-sizes 1,25,256] [--hidden 150] [--emb 300]
        [--input-at leaves|all] [--threads 2] [--device auto|cpu|cuda] [--peers dynet]
        [--check] [--quick] [--json out.json] [--plot out.png]

On a GPU, schedules are built on the CPU and copied from pinned memory without blocking (that
time is the "schedule" column), and each timed step ends with a device synchronisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import dynet_peer
from treelstm.cells import ChildSumCell, NaryCell
from treelstm.executor import run
from treelstm.formats import read_ptb
from treelstm.schedule import Schedule, build_schedule
from treelstm.tree import Tree

STRATEGIES = ("recursive", "tree", "level_autograd", "level", "oracle", "oracle_autograd")
PEERS = ("dynet",)
SLOW = ("recursive", "tree")  # per-node Python: fewer repetitions at large batches


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


def oracle_schedule(s: Schedule) -> Schedule:
    """`s` cut to two levels: every leaf, then every internal node, each internal node keeping
    only its leaf children (the others become missing slots; their edge to it is kept as an
    edge to no parent, so every edge's forget gate is still evaluated)."""
    n0, N = s.num_leaves, s.num_nodes
    internal = torch.arange(N, device=s.device) >= n0
    return dataclasses.replace(
        s,
        parent=torch.where(internal, -1, s.parent),
        children=torch.where(s.children >= n0, -1, s.children),
        level_ptr=torch.tensor([0, n0, N], device=s.device),
        level_bounds=(0, n0, N),
    )


# -- one training-like step per strategy ----------------------------------------------------


def vocab_and_cell(kind: str, trees, hidden: int, emb: int, input_at: str):
    """The benchmark's word ids (first seen first), N-ary width (the widest node, at least 2;
    None for Child-Sum) and a fresh cell of `kind` ("childsum" or "nary")."""
    vocab: dict[str, int] = {}
    for t in trees:
        for w in t.flat().words:
            if w is not None:
                vocab.setdefault(w, len(vocab))
    fan_out = max(max(len(n.children) for n in t.postorder()) for t in trees)
    n_ary = max(2, fan_out) if kind == "nary" else None
    if kind == "childsum":
        return vocab, n_ary, ChildSumCell(emb, hidden, input_at=input_at)
    return vocab, n_ary, NaryCell(emb, hidden, n_ary=n_ary, input_at=input_at)


class Bench:
    def __init__(
        self,
        kind: str,
        trees: list[Tree],
        hidden: int,
        emb: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        input_at: str = "leaves",
    ):
        torch.manual_seed(seed)
        self.kind = kind
        self.device = torch.device(device)
        self.vocab, self.n_ary, self.cell = vocab_and_cell(kind, trees, hidden, emb, input_at)
        self.emb = torch.randn(len(self.vocab) + 1, emb) * 0.1  # frozen; last row = no word
        self.emb[-1] = 0
        self.head = torch.nn.Linear(hidden, 5)
        self.cell.to(self.device)
        self.head.to(self.device)
        self.emb = self.emb.to(self.device)
        self.params = [*self.cell.parameters(), *self.head.parameters()]
        self._const: torch.Tensor | None = None  # oracle_autograd's stand-in child states
        self.dynet: dynet_peer.DyNetTreeLSTM | None = None

    def add_dynet(self) -> None:
        """The DyNet peer, with this bench's weights (call after the weights are final)."""
        self.dynet = dynet_peer.DyNetTreeLSTM(self.cell, self.head, self.emb.cpu())

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

    def tree_targets(self, tree: Tree) -> list[int]:
        """The classes of a tree's nodes in its post-order (what `targets` gives per node)."""
        return [0 if not isinstance(y, int) else min(max(y, 0), 4) for y in tree.flat().labels]

    def step(self, s, strategy: str) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        x = self.emb[torch.where(s.tokens >= 0, s.tokens, len(self.emb) - 1)]
        if strategy == "oracle":
            h, _ = run(self.cell, oracle_schedule(s), x, "level")
        elif strategy == "oracle_autograd":
            h = self._oracle_autograd(s, x)
        else:
            h, _ = run(self.cell, s, x, strategy)
        loss = F.cross_entropy(self.head(h), self.targets(s))
        loss.backward()
        return h

    def loss(self, s) -> float:
        """The level strategy's loss on schedule `s` (what the DyNet peer must reproduce)."""
        x = self.emb[torch.where(s.tokens >= 0, s.tokens, len(self.emb) - 1)]
        h, _ = run(self.cell, s, x, "level")
        return F.cross_entropy(self.head(h), self.targets(s)).item()

    def _oracle_autograd(self, s, x):
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
    """Max abs difference of root h and parameter gradients, every strategy vs recursive; and
    the DyNet peer's loss vs the level strategy's when the peer is on."""
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
    if bench.dynet is not None:
        ours = bench.loss(s)
        theirs = bench.dynet.loss(trees, bench.vocab, bench.tree_targets)
        d = abs(ours - theirs) / abs(ours)
        print(f"  check {bench.kind:8s} {'dynet':15s} loss rel. diff vs level = {d:.2e}")
        worst = max(worst, d)
    return worst


def _steps(bench: Bench, batches, scheds, strategies):
    """name -> callable(k) running one timed step on batch k (round-robin over batches)."""
    n = len(batches)
    fns = {st: (lambda k, st=st: bench.step(scheds[k % n], st)) for st in strategies}
    if bench.dynet is not None:
        peer = bench.dynet
        fns["dynet"] = lambda k: peer.loss(batches[k % n], bench.vocab, bench.tree_targets)
    return fns


def measure(bench: Bench, trees: list[Tree], B: int, reps: int, strategies) -> list[dict]:
    n_batches = max(1, min(reps, len(trees) // B))
    batches = [trees[k * B : (k + 1) * B] for k in range(n_batches)]
    scheds = [bench.schedule(b) for b in batches]
    nodes = statistics.mean(s.num_nodes for s in scheds)
    it = iter(range(10**9))

    def build():
        bench.schedule(batches[next(it) % n_batches])

    sched_s = timed(build, reps, sync=bench.sync)
    fns = _steps(bench, batches, scheds, strategies)
    # Round-robin over the strategies, so a burst of load elsewhere hits all of them alike.
    # Per-node recursion costs ~1 s per 5k nodes: fewer repetitions at large batches.
    slow = nodes >= 2000
    counts = {st: max(1, reps // 3) if st in SLOW and slow else reps for st in fns}
    times: dict[str, list[float]] = {st: [] for st in fns}
    for k in range(max(counts.values()) + 1):  # round 0 is the warm-up
        for st, fn in fns.items():
            if k > counts[st]:
                continue
            bench.sync()
            t = time.perf_counter()
            fn(k)
            bench.sync()
            if k:
                times[st].append(time.perf_counter() - t)
    rows = []
    for st in fns:
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
    _add_ratios(rows, sched_s)
    return rows


def _add_ratios(rows: list[dict], sched_s: float) -> None:
    by = {r["strategy"]: r["trees_per_s"] for r in rows}
    for r in rows:
        for ref, key in (("recursive", "ratio_vs_recursive"), ("oracle", "ratio_vs_oracle"),
                         ("dynet", "ratio_vs_dynet")):  # fmt: skip
            r[key] = r["trees_per_s"] / by[ref] if ref in by else None
        # Share of a training step spent building its schedule (if built inline, no workers).
        r["schedule_share"] = sched_s / (sched_s + r["median_s"])


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'cell':8s} {'batch':>5s} {'strategy':15s} {'trees/s':>9s} {'nodes/s':>9s} "
        f"{'x recursive':>11s} {'x oracle':>8s} {'x dynet':>7s} {'schedule':>8s}"
    )
    print(head)
    print("-" * len(head))

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        print(
            f"{r['cell']:8s} {r['batch_size']:5d} {r['strategy']:15s} {r['trees_per_s']:9.1f} "
            f"{r['nodes_per_s']:9.0f} {fmt(r['ratio_vs_recursive'], '.1f'):>11s} "
            f"{fmt(r['ratio_vs_oracle'], '.2f'):>8s} {fmt(r['ratio_vs_dynet'], '.2f'):>7s} "
            f"{r['schedule_share']:8.1%}"
        )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({r["cell"] for r in rows})
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.5), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        for strategy in (*STRATEGIES, *PEERS):
            pts = [
                (r["batch_size"], r["trees_per_s"])
                for r in rows
                if r["cell"] == cell and r["strategy"] == strategy
            ]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                style = "--" if strategy.startswith("oracle") else "-"
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


# -- command line ---------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", default="sst", help="sst, synthetic, or a file of bracketed trees")
    p.add_argument("--data-dir", default=None, help="folder holding sst/ (default $TREELSTM_DATA)")
    p.add_argument("--cell", default="childsum,nary", help="childsum, nary or both")
    p.add_argument("--batch-sizes", default="1,25,256")
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--emb", type=int, default=300)
    p.add_argument("--input-at", default="leaves", choices=("leaves", "all"),
                   help="where word vectors enter (leaves: the paper's SST setting)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda (or cuda:N), or auto")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions (median reported)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--peers", default="", help="outside peers to time beside ours: dynet")
    p.add_argument("--check", action="store_true", help="first compare strategies (1e-4)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions: under a minute")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    _validate(p, args)
    return args


def _split(p: argparse.ArgumentParser, value: str, allowed, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            p.error(f"{flag}: unknown {v!r}; choose from {', '.join(allowed)}")
    return items


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn the comma lists into lists and the device into a torch.device (usage errors)."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device: expected cpu, cuda, cuda:N or auto, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    args.device = device
    args.cell = _split(p, args.cell, ("childsum", "nary"), "--cell")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    args.strategies = _split(p, args.strategies, STRATEGIES, "--strategies")
    args.peers = _split(p, args.peers, PEERS, "--peers")
    if args.quick:
        args.reps = 3


def _dynet_on(args) -> bool:
    """Whether the DyNet row runs (said on stderr when asked for and not possible)."""
    if "dynet" not in args.peers:
        return False
    if args.device.type != "cpu":
        print("peer dynet: runs on the CPU only; row skipped on", args.device, file=sys.stderr)
        return False
    if not dynet_peer.available():
        dynet_peer.note_unavailable()
        return False
    return True


def run_benchmarks(args, trees) -> tuple[list[dict], float]:
    """Every cell x batch size: (rows, worst --check difference)."""
    rows, worst = [], 0.0
    with_dynet = _dynet_on(args)
    for kind in args.cell:
        bench = Bench(kind, trees, args.hidden, args.emb, device=args.device,
                      input_at=args.input_at)  # fmt: skip
        if with_dynet:
            bench.add_dynet()
        if args.check:
            worst = max(worst, check(bench, trees[:25]))
        for B in args.batch_sizes:
            rows += measure(bench, trees, B, args.reps, args.strategies)
    return rows, worst


def write_outputs(args, rows: list[dict], meta: dict) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        title = (
            f"{meta['source']}; hidden {args.hidden}, emb {args.emb}, input at {args.input_at}, "
            f"{args.threads} threads, {meta['device']}"
        )
        plot(rows, args.plot, title)
        print(f"wrote {args.plot}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    trees, source = load_trees(args.trees, args.data_dir)
    random.Random(0).shuffle(trees)
    print(
        f"trees: {source}; {len(trees)} trees; hidden {args.hidden}, emb {args.emb}, input at "
        f"{args.input_at}, {args.threads} threads, device {where}, median of {args.reps} "
        "repetitions"
    )
    rows, worst = run_benchmarks(args, trees)
    print()
    print_table(rows)
    meta = {
        "source": source,
        "hidden": args.hidden,
        "emb": args.emb,
        "input_at": args.input_at,
        "threads": args.threads,
        "device": where,
        "torch": torch.__version__,
        "repetitions": args.reps,
    }
    write_outputs(args, rows, meta)
    if args.check and worst > 1e-4:
        print(f"CHECK FAILED: strategies differ by {worst:.2e} > 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
