"""Where the time of a level-batched training step goes: torch.profiler over one pass.

The step is the one `benchmarks.batching` and the outside yardstick time, through the public
API: `build_schedule` -> embedding lookup (frozen) -> `run(cell, s, x, "level")` -> linear head
-> cross-entropy at every node -> backward. One warm-up pass over the trees, then one profiled
pass. Printed per cell and batch size:

- the op kinds: calls, calls per level step (one level of one batch), self time and share;
- the same summed by category (matmul, elementwise, gather/scatter, memory, views, other),
  plus the native element-wise kernels when they run (timed by wrapping each call) and the
  rest of the wall time, which no op accounts for (Python);
- minor page faults per step (fresh memory the kernel has to zero: a cost of allocating large
  buffers anew at every step).

Op counts and page faults do not depend on the machine's load; times do (quote shares). With
``TREELSTM_NATIVE_TIMING=1`` the native loops are built with timers and the report splits
their time into BLAS matmuls, direct (few-row) matmuls and the rest.

    python -m benchmarks.profile_levels [--trees sst|synthetic|PATH] [--n-trees 512]
        [--cell childsum,nary] [--batch-sizes 25,256] [--threads 1] [--input-at leaves]
        [--top 14] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.batching import load_trees, vocab_and_cell
from treelstm.executor import run
from treelstm.kernels import build
from treelstm.schedule import build_schedule

CATEGORIES = {
    "matmul": ("mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul"),
    "elementwise": (
        "mul", "mul_", "add", "add_", "addcmul", "addcmul_", "sigmoid", "sigmoid_", "tanh",
        "tanh_", "sub", "sub_", "rsub", "neg", "neg_", "div", "div_", "clamp", "clamp_",
        "clamp_min", "where", "sigmoid_backward", "tanh_backward", "threshold_backward",
    ),
    "gather/scatter": (
        "index_select", "index_add_", "index_add", "scatter_add_", "index", "gather",
        "embedding", "index_put_", "_index_put_impl_",
    ),
    "memory": (
        "empty", "empty_like", "zeros", "zeros_like", "new_zeros", "new_empty", "fill_",
        "zero_", "copy_", "cat", "clone", "contiguous", "repeat", "resize_", "empty_strided",
    ),
    # views cost no memory traffic, only dispatch: listed apart from the ops that compute
    "views": (
        "slice", "as_strided", "select", "view", "t", "transpose", "expand", "unsqueeze",
        "reshape", "_unsafe_view", "detach", "alias", "narrow", "split", "chunk", "permute",
        "_reshape_alias", "squeeze", "unbind", "numpy_T", "lift_fresh", "result_type",
    ),
}  # fmt: skip


def category(name: str) -> str:
    op = name.removeprefix("aten::")
    for cat, ops in CATEGORIES.items():
        if op in ops:
            return cat
    return "other"


class Step:
    """One training-like step through the public API (embeddings frozen, head at every node)."""

    def __init__(self, kind: str, trees, hidden: int, emb: int, input_at: str):
        torch.manual_seed(0)
        self.vocab, self.n_ary, self.cell = vocab_and_cell(kind, trees, hidden, emb, input_at)
        self.emb = torch.nn.Embedding(len(self.vocab) + 1, emb)
        self.emb.weight.requires_grad_(False)
        self.head = torch.nn.Linear(hidden, 5)
        self.params = [*self.cell.parameters(), *self.head.parameters()]
        self.levels = 0  # level steps run since the last reset

    def __call__(self, trees) -> None:
        for p in self.params:
            p.grad = None
        s = build_schedule(trees, self.vocab, n_ary=self.n_ary)
        self.levels += s.num_levels
        x = self.emb(torch.where(s.tokens >= 0, s.tokens, len(self.vocab)))
        h, _ = run(self.cell, s, x, "level")
        labels = s.labels.clamp(0, 4) if s.labels is not None else torch.zeros_like(s.tokens)
        F.cross_entropy(self.head(h), labels, reduction="sum").div(len(trees)).backward()


@contextlib.contextmanager
def native_timer(stats: dict[str, list[float]]):
    """Wrap every native kernel so each call adds (1, seconds) to stats[name]."""
    lib = build.library()
    if lib is None:
        yield
        return
    saved = []
    for ns in (lib.f32, lib.f64):
        for name, fn in list(vars(ns).items()):

            def timed(*args, _fn=fn, _name=name):
                t = time.perf_counter()
                _fn(*args)
                c = stats.setdefault(_name, [0, 0.0])
                c[0] += 1
                c[1] += time.perf_counter() - t

            saved.append((ns, name, fn))
            setattr(ns, name, timed)
    try:
        yield
    finally:
        for ns, name, fn in saved:
            setattr(ns, name, fn)


def profile_pass(step: Step, trees, B: int) -> dict:
    """Warm up, then profile one pass over `trees` in batches of B; op table and totals."""
    batches = [trees[k : k + B] for k in range(0, len(trees), B)]
    for b in batches:
        step(b)
    step.levels = 0
    build.timing()  # resets the native timers (when built with them)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    native: dict[str, list[float]] = {}
    with profile(activities=[ProfilerActivity.CPU]) as prof, native_timer(native):
        t = time.perf_counter()
        for b in batches:
            step(b)
        wall = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    inside = build.timing()  # where the native loops' time went (TREELSTM_NATIVE_TIMING=1)
    ops = [
        {
            "op": e.key,
            "category": category(e.key),
            "calls": e.count,
            "self_ms": e.self_cpu_time_total / 1e3,
        }
        for e in prof.key_averages()
        if e.key.startswith("aten::")
    ]
    ops += [
        {"op": f"native::{k}", "category": "native", "calls": n, "self_ms": sec * 1e3}
        for k, (n, sec) in native.items()
    ]
    ops.sort(key=lambda r: -r["self_ms"])
    return {
        "batch_size": B,
        "steps": len(batches),
        "level_steps": step.levels,
        "wall_ms": wall * 1e3,
        "page_faults_per_step": faults / len(batches),
        "ops": ops,
        "native_inside_ms": None if inside is None else {k: v * 1e3 for k, v in inside.items()},
    }


def print_report(kind: str, r: dict, top: int) -> None:
    ops, lv = r["ops"], r["level_steps"]
    wall = r["wall_ms"]
    calls = sum(o["calls"] for o in ops if o["category"] != "views")
    r["compute_calls_per_level_step"] = calls / lv
    print(
        f"\n{kind}, batch {r['batch_size']}: {r['steps']} steps, {lv} level steps, "
        f"{calls} aten calls besides views ({calls / lv:.1f} per level step), profiled wall "
        f"{wall:.0f} ms, {r['page_faults_per_step']:.0f} page faults per step"
    )
    print(f"  {'op':28s} {'calls':>7s} {'/level':>7s} {'self ms':>8s} {'share':>6s}")
    for o in ops[:top]:
        print(
            f"  {o['op'][:28]:28s} {o['calls']:7d} {o['calls'] / lv:7.1f} "
            f"{o['self_ms']:8.1f} {o['self_ms'] / wall:6.1%}"
        )
    cats: dict[str, list[float]] = {}
    for o in ops:
        c = cats.setdefault(o["category"], [0, 0.0])
        c[0] += o["calls"]
        c[1] += o["self_ms"]
    seen = sum(v[1] for v in cats.values())
    cats["no op (Python)"] = [0, wall - seen]
    print(f"  {'category':28s} {'calls':>7s} {'/level':>7s} {'self ms':>8s} {'share':>6s}")
    for name, (n, ms) in sorted(cats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:28s} {n:7d} {n / lv:7.1f} {ms:8.1f} {ms / wall:6.1%}")
    inside = r["native_inside_ms"]
    if inside:
        rest = inside["loops"] - inside["blas_matmul"] - inside["direct_matmul"]
        print(
            f"  inside the native loops: BLAS matmuls {inside['blas_matmul']:.1f} ms, direct "
            f"matmuls {inside['direct_matmul']:.1f} ms, the rest (element-wise) {rest:.1f} ms"
        )
    r["categories"] = {k: {"calls": v[0], "self_ms": v[1]} for k, v in cats.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", default="sst", help="sst, synthetic, or a file of bracketed trees")
    p.add_argument("--data-dir", default=None, help="folder holding sst/ (default $TREELSTM_DATA)")
    p.add_argument("--n-trees", type=int, default=512, help="the first N trees (file order)")
    p.add_argument("--cell", default="childsum,nary")
    p.add_argument("--batch-sizes", default="25,256")
    p.add_argument("--hidden", type=int, default=150)
    p.add_argument("--emb", type=int, default=300)
    p.add_argument("--input-at", default="leaves", choices=("leaves", "all"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=14, help="op kinds listed per table")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    cells = [c.strip() for c in args.cell.split(",")]
    for c in cells:
        if c not in ("childsum", "nary"):
            p.error(f"--cell: unknown cell {c!r} (childsum or nary)")
    trees, source = load_trees(args.trees, args.data_dir)
    trees = trees[: args.n_trees]
    print(f"{source}: first {len(trees)} trees; hidden {args.hidden}, emb {args.emb}, "
          f"input at {args.input_at}, {args.threads} thread(s)")  # fmt: skip
    out = []
    for kind in cells:
        step = Step(kind, trees, args.hidden, args.emb, args.input_at)
        for B in sizes:
            r = profile_pass(step, trees, B)
            print_report(kind, r, args.top)
            out.append({"cell": kind, **r})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"source": source, "args": vars(args) | {"json": str(args.json)},
                                   "results": out}, indent=1))  # fmt: skip
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
