"""The speed a user's cell gets: the generic level loop (plain autograd, one cell call per level
or depth) beside the fused kernels of the built-in cells, bottom-up, top-down and both.

Rows (forward + backward of a cross-entropy at every node, frozen word vectors, one pass over
the same trees per row, rows interleaved round-robin, median of --reps):

  up    childsum fused       ChildSumCell, `run(..., "level")`: the fused kernel (native C on
                             the CPU for float32/64)
  up    childsum generic     the same cell and weights on the generic loop ("level_autograd"):
                             what a ChildSumCell subclass that redefines forward gets
  up    tree-gru generic     a user's Child-Sum Tree-GRU (h only), the generic loop
  down  childsum fused       ChildSumCell(H, H) from the roots to the leaves over the up states
                             of the row "up childsum fused" (computed once, before timing):
                             the fused top-down kernel
  down  childsum generic     the same on the generic depth loop
  down  tree-gru generic     a Tree-GRU top-down
  bi    fused / generic      BiTreeLSTM (up + down) with both passes fused / generic

    python -m benchmarks.cells [--trees sst|synthetic|PATH] [--data-dir D] [--n-trees 512]
        [--batch-sizes 25,256] [--hidden 150] [--emb 300] [--threads 1] [--reps 5] [--quick]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.batching import load_trees
from tests.user_cells import TreeGRU  # a cell written from the protocol alone
from treelstm import ChildSumCell, build_schedule, explain, run


class Bench:
    """Weights shared by every row: the up cells, the down cells, a head per width."""

    def __init__(self, trees, hidden: int, emb: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.vocab: dict[str, int] = {}
        for t in trees:
            for w in t.flat().words:
                if w is not None:
                    self.vocab.setdefault(w, len(self.vocab))
        self.emb = torch.randn(len(self.vocab) + 1, emb) * 0.1  # frozen; last row = no word
        self.emb[-1] = 0
        H = hidden
        self.up = {"childsum": ChildSumCell(emb, H), "tree-gru": TreeGRU(emb, H)}
        self.down = {"childsum": ChildSumCell(H, H), "tree-gru": TreeGRU(H, H)}
        self.head = nn.Linear(H, 5)
        self.head2 = nn.Linear(2 * H, 5)

    def x(self, s):
        return self.emb[torch.where(s.tokens >= 0, s.tokens, len(self.emb) - 1)]

    def up_states(self, s):
        """The input of the down rows: the fused up pass's h, without gradient."""
        with torch.no_grad():
            return run(self.up["childsum"], s, self.x(s), "level")[0]

    def step(self, s, row: tuple[str, str, str], h_up=None) -> None:
        """One forward + backward of the row (direction, cell, path) on schedule s (the down
        rows read ``h_up``, from `up_states`)."""
        direction, cell, path = row
        strategy = "level" if path == "fused" else "level_autograd"
        x = self.x(s)
        if direction == "up":
            h, _ = run(self.up[cell], s, x, strategy)
            out = self.head(h)
        elif direction == "down":
            h, _ = run(self.down[cell], s, h_up, strategy, direction="down")
            out = self.head(h)
        else:
            h_up, _ = run(self.up["childsum"], s, x, strategy)
            h_down, _ = run(self.down["childsum"], s, h_up, strategy, direction="down")
            out = self.head2(torch.cat([h_up, h_down], 1))
        labels = s.labels.clamp(0, 4) if s.labels is not None else torch.zeros_like(s.tokens)
        F.cross_entropy(out, labels).backward()


ROWS = [
    ("up", "childsum", "fused"),
    ("up", "childsum", "generic"),
    ("up", "tree-gru", "generic"),
    ("down", "childsum", "fused"),
    ("down", "childsum", "generic"),
    ("down", "tree-gru", "generic"),
    ("bi", "childsum", "fused"),
    ("bi", "childsum", "generic"),
]


def measure(bench: Bench, trees, B: int, reps: int) -> list[dict]:
    """trees/s of every row on `trees` in batches of B, interleaved, median over reps."""
    scheds = [build_schedule(trees[i : i + B], bench.vocab) for i in range(0, len(trees), B)]
    ups = [bench.up_states(s) for s in scheds]
    times: dict[tuple, list[float]] = {row: [] for row in ROWS}
    for rep in range(reps + 1):  # the first round warms up
        for row in ROWS:
            t = time.perf_counter()
            for s, h_up in zip(scheds, ups, strict=True):
                bench.step(s, row, h_up)
            if rep:
                times[row].append(time.perf_counter() - t)
    out = []
    base = {d: statistics.median(times[(d, "childsum", "fused")]) for d in ("up", "down", "bi")}
    for row in ROWS:
        med = statistics.median(times[row])
        direction, cell, path = row
        out.append(
            dict(
                direction=direction,
                cell=cell,
                path=path,
                batch=B,
                trees=len(trees),
                seconds=med,
                trees_per_s=len(trees) / med,
                x_fused=base[direction] / med,
            )  # fmt: skip
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", default="sst", help="sst (default), synthetic, or a PTB file")
    p.add_argument("--data-dir", default=os.environ.get("TREELSTM_DATA"))
    p.add_argument("--n-trees", type=int, default=512, help="the first N trees (default 512)")
    p.add_argument("--batch-sizes", default="25,256")
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--emb", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="128 trees, 2 reps (a smoke run)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.n_trees, args.reps = min(args.n_trees, 128), min(args.reps, 2)
    torch.set_num_threads(args.threads)
    trees, what = load_trees(args.trees, args.data_dir)
    trees = trees[: args.n_trees]
    bench = Bench(trees, args.hidden, args.emb)
    print(f"trees: {what}, first {len(trees)}; hidden {args.hidden}, emb {args.emb}, "
          f"{args.threads} thread(s), median of {args.reps}, rows interleaved")  # fmt: skip
    for d, cells in (("up", bench.up), ("down", bench.down)):
        for name, cell in cells.items():
            print(f"  {d:4s} {name:8s}: {explain(cell, direction=d)}")
    rows = []
    print(f"\n{'pass':5s} {'cell':9s} {'path':8s} {'batch':>5s} {'trees/s':>9s} {'x fused':>8s}")
    for B in (int(b) for b in args.batch_sizes.split(",")):
        for r in measure(bench, trees, B, args.reps):
            rows.append(r)
            print(f"{r['direction']:5s} {r['cell']:9s} {r['path']:8s} {B:5d} "
                  f"{r['trees_per_s']:9.1f} {r['x_fused']:8.2f}")  # fmt: skip
    if args.json:
        meta = dict(vars(args), load=os.getloadavg(), torch=torch.__version__, trees_source=what)
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
