"""Per-example code autobatched, beside the same code unbatched, the level executor and DyNet.

The work (the yardstick's): the first 512 SST train trees, word vectors 300-d and frozen,
hidden 150, word input at the leaves only, a 5-way cross-entropy at every node summed over
nodes and divided by the batch's tree count, forward + backward, gradients reset. Preparing a
batch (per-example tensors, or the level schedule) is inside the timed step.

  unbatched        the per-example Tree-LSTM (a recursive function over one tree, the
                   library's cell called once per node) run tree after tree
  autobatch        the same function through `dynamic.autobatch`
  level            the hand-written level executor: build_schedule + run(cell, s, x, "level")
  dynet_autobatch  DyNet 2.2 (dynet38) running the same model written per example, with its
                   autobatching on; skipped with a note when dynet is not importable

Implementations are interleaved round-robin (load hits all alike); trees/s is the median over
--reps. The unbatched row times --unbatched-trees trees (it is ~20x slower). Then the seed's
halting MNIST net written per sample: examples/s unbatched vs autobatched at batch 128.

    PYTHONPATH=. ../peers-venv/bin/python -m benchmarks.autobatch [--threads 1 2]
        [--json runs/bench/autobatch.json] [--quick]
    python -m benchmarks.autobatch --variants     # agenda / depth, fused on / off (CPU time)
    python -m benchmarks.autobatch --breakdown    # where one batch's time goes (CPU time)
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
from torch import nn

from dynamic.autobatch import autobatch
from treelstm import ChildSumCell, NaryCell, Tree, build_schedule, run

IMPLS = ("unbatched", "autobatch", "level", "dynet_autobatch")
H, D, C = 150, 300, 5


# -- data -------------------------------------------------------------------------------------
def generated_trees(n: int, seed: int = 0) -> list[Tree]:
    """Random binary trees with SST-like lengths (2..45 words), labels 0..4."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = [Tree(rng.randrange(5), f"w{rng.randrange(3000)}") for _ in range(rng.randint(2, 45))]
        while len(row) > 1:
            k = rng.randrange(len(row) - 1)
            row[k : k + 2] = [Tree(rng.randrange(5), None, row[k : k + 2])]
        out.append(row[0])
    return out


def load_trees(n: int) -> tuple[list[Tree], str]:
    """The first n SST train trees from $TREELSTM_DATA/sst/train.txt, else generated ones."""
    path = Path(os.environ.get("TREELSTM_DATA", "")) / "sst" / "train.txt"
    if os.environ.get("TREELSTM_DATA") and path.exists():
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()][:n]
        return [Tree.from_ptb(x) for x in lines], f"SST train, first {n} trees"
    return generated_trees(n), f"{n} generated trees (no $TREELSTM_DATA/sst)"


# -- the model, written per example -----------------------------------------------------------
class TreeModel(nn.Module):
    """Frozen word vectors, a library cell (input at leaves), a 5-way head at every node."""

    def __init__(self, cell_kind: str, vocab: dict, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.emb = nn.Embedding(len(vocab), D).requires_grad_(False)
        if cell_kind == "childsum":
            self.cell = ChildSumCell(D, H, input_at="leaves")
            self.leaf_pad = torch.zeros(1, 0, H)
            self.leaf_mask = torch.zeros(1, 0, dtype=torch.bool)
        else:
            self.cell = NaryCell(D, H, n_ary=2, input_at="leaves")
            self.leaf_pad = torch.zeros(1, 2, H)
            self.leaf_mask = torch.zeros(1, 2, dtype=torch.bool)
        self.head = nn.Linear(H, C)
        self.no_x = torch.zeros(1, D)
        self.full = {k: torch.ones(1, k, dtype=torch.bool) for k in range(1, 8)}

    def prepare(self, tree: Tree):
        """One example: the tree, its leaves' word ids and every node's label (post-order),
        read from the tree's cached post-order arrays (as build_schedule does)."""
        flat = tree.flat()
        ids = torch.tensor([self.vocab[w] for w in flat.words if w is not None])
        return tree, ids, torch.tensor(flat.labels)

    def tree_loss(self, example) -> torch.Tensor:
        """The per-example code: a recursion over the tree, one cell call per node."""
        tree, ids, labels = example
        x = self.emb(ids)
        leaf = iter(range(len(ids)))
        states = []

        def node(t):
            if t.children:
                kids = [node(k) for k in t.children]
                ch = torch.stack([h for h, _ in kids], 1)
                cc = torch.stack([c for _, c in kids], 1)
                h, c = self.cell(self.no_x, ch, cc, self.full[len(kids)])
            else:
                j = next(leaf)
                h, c = self.cell(x[j : j + 1], self.leaf_pad, self.leaf_pad, self.leaf_mask)
            states.append(h)
            return h, c

        node(tree)
        return F.cross_entropy(self.head(torch.cat(states)), labels, reduction="sum")

    def level_loss(self, trees: list[Tree]) -> torch.Tensor:
        """The same loss through the hand-written level executor."""
        s = build_schedule(trees, self.vocab, n_ary=None if self.leaf_mask.shape[1] == 0 else 2)
        h, _ = run(self.cell, s, self.emb(s.tokens.clamp(min=0)), "level")
        return F.cross_entropy(self.head(h), s.labels, reduction="sum")


class DyNetTreeModel:
    """The same model in DyNet 2.2, written per example; autobatching on."""

    def __init__(self, cell_kind: str, vocab: dict, dy) -> None:
        self.dy, self.vocab, self.binary = dy, vocab, cell_kind != "childsum"
        pc = self.pc = dy.ParameterCollection()
        k = 2 if self.binary else 1
        self.E = pc.add_lookup_parameters((len(vocab), D))
        self.W = pc.add_parameters((3 * H, D))  # i, o, u from the word (leaves)
        self.b = pc.add_parameters(3 * H)
        self.U = pc.add_parameters((3 * H, k * H))  # i, o, u from the children
        self.Uf = pc.add_parameters((k * H, k * H))  # one forget gate per child slot
        self.bf = pc.add_parameters(k * H)
        self.Wo = pc.add_parameters((C, H))
        self.bo = pc.add_parameters(C)

    def _state(self, iou, fc):
        dy = self.dy
        i = dy.logistic(dy.pick_range(iou, 0, H))
        o = dy.logistic(dy.pick_range(iou, H, 2 * H))
        u = dy.tanh(dy.pick_range(iou, 2 * H, 3 * H))
        c = dy.cmult(i, u) if fc is None else dy.cmult(i, u) + fc
        return dy.cmult(o, dy.tanh(c)), c

    def _node(self, t, losses):
        dy = self.dy
        if not t.children:
            x = dy.lookup(self.E, self.vocab[t.word], update=False)
            h, c = self._state(dy.affine_transform([self.b, self.W, x]), None)
        else:
            kids = [self._node(k, losses) for k in t.children]
            if self.binary:
                hh = dy.concatenate([kids[0][0], kids[1][0]])
                f = dy.logistic(dy.affine_transform([self.bf, self.Uf, hh]))
                fc = dy.cmult(dy.pick_range(f, 0, H), kids[0][1])
                fc = fc + dy.cmult(dy.pick_range(f, H, 2 * H), kids[1][1])
            else:
                hh = dy.esum([h for h, _ in kids])
                fc = dy.esum(
                    [
                        dy.cmult(dy.logistic(dy.affine_transform([self.bf, self.Uf, h])), c)
                        for h, c in kids
                    ]
                )
            h, c = self._state(dy.affine_transform([self.b, self.U, hh]), fc)
        losses.append(dy.pickneglogsoftmax(dy.affine_transform([self.bo, self.Wo, h]), t.label))
        return h, c

    def step(self, trees: list[Tree]) -> None:
        dy = self.dy
        dy.renew_cg(autobatching=True)
        losses: list = []
        for t in trees:
            self._node(t, losses)
        loss = dy.esum(losses) * (1.0 / len(trees))
        loss.forward()
        loss.backward()


# -- timing ------------------------------------------------------------------------------------
def _steps(model: TreeModel, params: list, dynet_model):
    """impl -> one timed step over a batch of trees."""
    batched = autobatch(model.tree_loss)

    def reset():
        for p in params:
            p.grad = None

    def unbatched(trees):
        reset()
        loss = sum(model.tree_loss(model.prepare(t)) for t in trees) / len(trees)
        loss.backward()

    def autobatched(trees):
        reset()
        loss = torch.stack(batched.map([model.prepare(t) for t in trees])).sum() / len(trees)
        loss.backward()

    def level(trees):
        reset()
        (model.level_loss(trees) / len(trees)).backward()

    steps = {"unbatched": unbatched, "autobatch": autobatched, "level": level}
    if dynet_model is not None:
        steps["dynet_autobatch"] = dynet_model.step
    return steps


def time_trees(trees, cell_kind, batch_size, reps, unbatched_trees, dy) -> dict:
    """impl -> median trees/s over `reps` interleaved passes (one warm-up pass each)."""
    vocab = {w: i for i, w in enumerate(sorted({w for t in trees for w in t.words()}))}
    model = TreeModel(cell_kind, vocab)
    params = [*model.cell.parameters(), *model.head.parameters()]
    steps = _steps(model, params, DyNetTreeModel(cell_kind, vocab, dy) if dy else None)
    batches = [trees[i : i + batch_size] for i in range(0, len(trees), batch_size)]
    few = trees[:unbatched_trees]
    few_batches = [few[i : i + batch_size] for i in range(0, len(few), batch_size)]
    speeds: dict = {k: [] for k in steps}
    for rep in range(reps + 1):
        for impl, step in steps.items():
            work = few_batches if impl == "unbatched" else batches
            t0 = time.perf_counter()
            for b in work:
                step(b)
            dt = time.perf_counter() - t0
            if rep > 0:  # the first pass warms up (and lets autobatch learn its signatures)
                speeds[impl].append(sum(len(b) for b in work) / dt)
    return {k: statistics.median(v) for k, v in speeds.items()}


def halting_speeds(batch_size: int, reps: int, data_dir: str | None) -> tuple[dict, str]:
    """examples/s of the per-sample halting net (forward + backward), unbatched vs autobatched,
    and the library's hand-batched HaltingNet for reference."""
    from dynamic.nets import HaltingNet

    torch.manual_seed(0)
    net = HaltingNet(threshold=10.0, max_steps=3)
    x, where = _mnist_batch(batch_size, data_dir)
    y = torch.randint(0, 10, (batch_size,), generator=torch.Generator().manual_seed(0))

    def sample(example):
        xi, yi = example
        h = F.relu(net.input_layer(xi))
        steps = 0
        while steps < net.max_steps and h.norm() < net.threshold:
            h = F.relu(net.hidden_layer(h))
            steps += 1
        return F.nll_loss(F.log_softmax(net.output_layer(h), dim=-1), yi)

    batched = autobatch(sample)
    examples = list(zip(x, y, strict=True))

    def step(fn):
        net.zero_grad(set_to_none=True)
        fn().backward()

    runs = {
        "unbatched": lambda: torch.stack([sample(e) for e in examples]).mean(),
        "autobatch": lambda: torch.stack(batched.map(examples)).mean(),
        "hand_batched": lambda: F.nll_loss(net(x), y),
    }
    speeds: dict = {k: [] for k in runs}
    for rep in range(reps + 1):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            step(fn)
            if rep:
                speeds[k].append(batch_size / (time.perf_counter() - t0))
    with torch.no_grad():
        _, n_steps = net(x, return_steps=True)
    hist = torch.bincount(n_steps, minlength=net.max_steps + 1).tolist()
    return {
        k: statistics.median(v) for k, v in speeds.items()
    }, f"{where}; halting steps 0..{net.max_steps}: {hist}"


def _mnist_batch(n: int, data_dir: str | None):
    root = data_dir or os.environ.get("TREELSTM_DATA")
    if root and (Path(root) / "MNIST" / "raw").exists():
        from torchvision.datasets import MNIST

        ds = MNIST(root, train=False, download=False)
        x = ds.data[:n].float().div(255).sub(0.1307).div(0.3081).reshape(n, -1)
        return x, f"MNIST test images 0..{n - 1}"
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 784, generator=g), "random images (no MNIST found)"


# -- the engine's own options, and where the time goes (CPU time: robust to other jobs) --------
def variants(trees, batch_size: int, reps: int) -> list[dict]:
    """trees/s of autobatch with each policy, fused dispatch on and off, interleaved."""
    vocab = {w: i for i, w in enumerate(sorted({w for t in trees for w in t.words()}))}
    out = []
    for cell in ("childsum", "binary"):
        model = TreeModel(cell, vocab)
        params = [*model.cell.parameters(), *model.head.parameters()]
        runs = {
            (policy, fused): autobatch(model.tree_loss, policy=policy, fused=fused)
            for policy in ("agenda", "depth")
            for fused in (True, False)
        }
        batches = [trees[i : i + batch_size] for i in range(0, len(trees), batch_size)]
        best: dict = {}
        for rep in range(reps + 1):
            for key, f in runs.items():
                t0 = time.process_time()
                for b in batches:
                    for p in params:
                        p.grad = None
                    (torch.stack(f.map([model.prepare(t) for t in b])).sum() / len(b)).backward()
                if rep:
                    best[key] = min(best.get(key, float("inf")), time.process_time() - t0)
        for (policy, fused), sec in best.items():
            out.append(
                {
                    "cell": cell,
                    "policy": policy,
                    "fused": fused,
                    "trees_per_cpu_s": len(trees) / sec,
                }
            )
    return out


def breakdown(trees, cell_kind: str, batch_size: int, reps: int) -> dict:
    """Best-of-reps CPU ms of one batch: autobatch's phases beside the level executor's
    (prepare, forward and backward are CPU time of the map as users run it, without the
    profile; the parts of forward come from a second, profiled map and are wall time)."""
    vocab = {w: i for i, w in enumerate(sorted({w for t in trees for w in t.words()}))}
    model = TreeModel(cell_kind, vocab)
    f = autobatch(model.tree_loss)
    profiled = autobatch(model.tree_loss, profile=True)
    batch = trees[:batch_size]
    best: dict = {}

    def keep(key, sec):
        best[key] = min(best.get(key, float("inf")), sec * 1e3)

    for rep in range(reps + 2):
        t0 = time.process_time()
        examples = [model.prepare(t) for t in batch]
        t1 = time.process_time()
        out = f.map(examples)
        t2 = time.process_time()
        torch.stack(out).sum().backward()
        t3 = time.process_time()
        model.level_loss(batch).backward()
        t4 = time.process_time()
        profiled.map(examples)
        if rep < 2:  # warm-up: the first runs learn each signature's outputs
            continue
        prof = profiled.profile
        fused = sum(s.seconds for s in prof.signatures.values() if "fused" in s.name)
        # The profile's own timers are wall clocks (what a user profiling wants): marked.
        for key, sec in (("prepare", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                         ("record (wall, profiled)", prof.record_s),
                         ("fused level call (wall)", fused),
                         ("other batched calls (wall)", prof.kernel_s - fused),
                         ("level forward + backward", t4 - t3)):  # fmt: skip
            keep(key, sec)
    best["nodes"] = sum(t.size for t in batch)
    return best


# -- report ------------------------------------------------------------------------------------
def table(records: list[dict]) -> str:
    lines = [
        "| threads | cell | B | impl | trees/s | × dynet_autobatch | × level |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in records:
        if r["cell"] == "mnist_halting":
            continue
        ref = {x["impl"]: x["trees_per_s"] for x in records if _same_config(x, r)}
        dy = ref.get("dynet_autobatch")
        ratio_dy = f"{r['trees_per_s'] / dy:.2f}" if dy else "–"
        lines.append(
            f"| {r['threads']} | {r['cell']} | {r['batch_size']} | {r['impl']} | "
            f"{r['trees_per_s']:,.0f} | {ratio_dy} | {r['trees_per_s'] / ref['level']:.2f} |"
        )
    mn = [r for r in records if r["cell"] == "mnist_halting"]
    if mn:
        lines += [
            "",
            "| threads | MNIST halting net, B | impl | examples/s | × unbatched |",
            "|---:|---:|---|---:|---:|",
        ]
        for r in mn:
            base = next(x for x in mn if x["impl"] == "unbatched" and x["threads"] == r["threads"])
            speed = r["examples_per_s"]
            lines.append(
                f"| {r['threads']} | {r['batch_size']} | {r['impl']} | {speed:,.0f} | "
                f"{speed / base['examples_per_s']:.1f} |"
            )
    return "\n".join(lines)


def _extras(a) -> list[dict]:
    """--variants / --breakdown: one torch thread, printed (and written with --json)."""
    torch.set_num_threads(1)
    trees, source = load_trees(a.n_trees)
    bs = a.batch_sizes[0]
    print(f"{source}; B={bs}; CPU time, best of {a.reps}", flush=True)
    if a.variants:
        records = variants(trees, bs, a.reps)
        for r in records:
            name = f"{r['policy']}{'' if r['fused'] else ', fused off'}"
            print(f"{r['cell']:>8}  {name:<18} {r['trees_per_cpu_s']:,.0f} trees per CPU second")
    else:
        records = []
        for cell in a.cells:
            ms = breakdown(trees, cell, bs, a.reps)
            records.append({"cell": cell, "batch_size": bs, **ms})
            print(f"{cell}: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()) + " (ms)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_suffix(a.json.suffix + ".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(a.json)
    return records


def _same_config(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("cell", "batch_size", "threads"))


def _import_dynet():
    try:
        import dynet  # noqa: F401  (dynet38)
    except ImportError as e:
        return None, f"dynet_autobatch skipped: dynet is not importable here ({e})"
    import dynet as dy

    return dy, "dynet_autobatch: DyNet 2.2 (dynet38), one thread whatever --threads says"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument("--n-trees", type=int, default=512)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[25, 256])
    p.add_argument(
        "--cells", nargs="+", choices=("childsum", "binary"), default=["childsum", "binary"]
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--unbatched-trees", type=int, default=64, help="trees timed for 'unbatched'")
    p.add_argument("--mnist-batch", type=int, default=128)
    p.add_argument("--data-dir", default=None, help="folder with MNIST/raw (else $TREELSTM_DATA)")
    p.add_argument("--no-dynet", action="store_true", help="leave DyNet out even if installed")
    p.add_argument("--quick", action="store_true", help="128 trees, B=25, one rep (a smoke run)")
    p.add_argument("--variants", action="store_true", help="policies x fused, then stop")
    p.add_argument("--breakdown", action="store_true", help="one batch's CPU time, then stop")
    a = p.parse_args(argv)
    if a.variants or a.breakdown:
        return _extras(a)
    if a.quick:
        a.n_trees, a.batch_sizes, a.reps, a.unbatched_trees, a.mnist_batch = 128, [25], 1, 25, 32
    dy, note = (None, "dynet_autobatch left out (--no-dynet)") if a.no_dynet else _import_dynet()
    trees, source = load_trees(a.n_trees)
    print(f"{source}; {sum(t.size for t in trees)} nodes; {note}", flush=True)
    records = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for cell in a.cells:
            for bs in a.batch_sizes:
                speeds = time_trees(trees, cell, bs, a.reps, a.unbatched_trees, dy)
                for impl in IMPLS:
                    if impl in speeds:
                        records.append(
                            {
                                "impl": impl,
                                "cell": cell,
                                "batch_size": bs,
                                "threads": threads,
                                "trees_per_s": speeds[impl],
                            }
                        )
                print(
                    f"threads {threads} {cell} B={bs}: "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in speeds.items()),
                    flush=True,
                )
        speeds, where = halting_speeds(a.mnist_batch, max(a.reps, 3) * 3, a.data_dir)
        print(
            f"MNIST halting net ({where}), threads {threads}: "
            + ", ".join(f"{k} {v:,.0f}/s" for k, v in speeds.items()),
            flush=True,
        )
        for impl, v in speeds.items():
            records.append(
                {
                    "impl": impl,
                    "cell": "mnist_halting",
                    "batch_size": a.mnist_batch,
                    "threads": threads,
                    "trees_per_s": None,
                    "examples_per_s": v,
                }
            )
    print()
    print(table(records))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_suffix(a.json.suffix + ".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(a.json)  # atomic: a reader never sees half a file
    return records


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
