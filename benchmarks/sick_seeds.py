"""Why SICK MSE moves between seed sets: every epoch's dev AND test metrics, and epoch rules.

    python -m benchmarks.sick_seeds run --data-dir D --seeds 0-19 --epochs 20 \\
        --out runs/sick-seeds --threads 1          # one treelstm.train run per seed
    python -m benchmarks.sick_seeds table --out runs/sick-seeds [--json FILE]

`run` trains each seed with `treelstm.train.train` and ``--test-every-epoch`` (the trainer
then also tests every epoch's weights and records the result beside the dev metrics, never
using it to pick an epoch) and ``--select pearson`` (the reference's rule, which the study
compares the others with), then copies the per-epoch metrics to ``OUT/seed<k>/epochs.json``.
Test evaluation draws nothing from torch's global generator (the evaluation DataLoader has its
own generator and SICK has no dropout), so the training trajectory is the plain trainer's: a
check compares the picked epoch's test metrics with its ``metrics.json``. Batches are a
function of (seed, epoch) only, so the first 10 epochs of a 20-epoch run are the 10-epoch run.

``--init reference`` draws the cell's weights as the reference code does (Torch7's nn.Linear
default) instead of the library's uniform(+-1/sqrt(H)).

`table` compares epoch-selection rules over the finished seeds: best dev Pearson r (the
reference's rule and the trainer's), best dev MSE, lowest dev KL (the training loss), the last
epoch, within 10 and 20 epochs; and the mean over seed blocks of 5 (as the paper reports).
This is a study script, not part of the library; its numbers are in docs/reproduction.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from treelstm import train as trainer
from treelstm.cells import ChildSumCell

RULES = {
    # name: (dev metric, True when larger is better)
    "dev r (trainer, reference)": ("pearson", True),
    "dev MSE": ("mse", False),
    "dev KL (training loss)": ("kl", False),
}
METRICS = ("pearson", "spearman", "mse")


def parse_seeds(text: str) -> list[int]:
    """'0-4,10' -> [0, 1, 2, 3, 4, 10]."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def run_seed(args, seed: int) -> Path:
    """Train one seed with per-epoch test metrics; skip a seed that is already done."""
    out = Path(args.out) / f"seed{seed}"
    if (out / "epochs.json").exists():
        return out
    reset = ChildSumCell.reset_parameters
    if args.init == "reference":  # the one thing patched: how the cell draws its weights
        ChildSumCell.reset_parameters = _torch7_linear_init
    try:
        cfg = trainer.TrainConfig(
            task="sick",
            data_dir=args.data_dir,
            out=str(out),
            epochs=args.epochs,
            seed=seed,
            threads=args.threads,
            progress=False,
            dry_run=args.dry_run,
            select="pearson",
            test_every_epoch=True,
            resume=True,  # an unfinished seed continues; a finished one is tested again
        )
        metrics = trainer.train(cfg, log=lambda *a, **k: None)
    finally:
        ChildSumCell.reset_parameters = reset
    epochs = [{"dev": r["dev"], "test": r["test"]} for r in metrics["epochs"]]
    best = metrics["best_epoch"]
    if epochs[best - 1]["test"] != metrics["test"]:  # the final test re-runs the same weights
        raise SystemExit(f"seed {seed}: per-epoch test of epoch {best} differs from metrics.json")
    doc = {"seed": seed, "best_epoch_by_trainer": best, "epochs": epochs}
    tmp = out / "epochs.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    tmp.replace(out / "epochs.json")
    return out


def _torch7_linear_init(cell) -> None:
    """The reference code's initialisation: Torch7's nn.Linear default, uniform(+-1/sqrt(fan
    in)) for weight and bias, so W (x, fan in 300) is narrower than U (h, fan in 150); the
    library draws every cell weight from uniform(+-1/sqrt(H))."""
    for lin in (cell.W, cell.U):
        bound = lin.in_features**-0.5
        for p in lin.parameters():
            torch.nn.init.uniform_(p, -bound, bound)
    if not cell.forget_input:
        torch.nn.init.zeros_(cell.b_f)


def pick(epochs: list[dict], rule: str | None, budget: int) -> dict:
    """The test metrics of the epoch a rule picks among the first `budget` epochs (first of
    equals, as the trainer's strict '>' keeps the earliest best)."""
    window = epochs[:budget]
    if rule is None:
        return window[-1]["test"]
    key, larger = RULES[rule]
    best = window[0]
    for e in window[1:]:
        if (e["dev"][key] > best["dev"][key]) if larger else (e["dev"][key] < best["dev"][key]):
            best = e
    return best["test"]


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def table(args) -> int:
    runs = sorted(Path(args.out).glob("seed*/epochs.json"))
    docs = sorted((json.loads(p.read_text()) for p in runs), key=lambda d: d["seed"])
    if not docs:
        print(f"error: no finished seeds under {args.out}", file=sys.stderr)
        return 1
    n_ep = min(len(d["epochs"]) for d in docs)
    print(f"{len(docs)} seeds: {[d['seed'] for d in docs]}; {n_ep} epochs each\n")
    print("| rule | epochs | r | ρ | MSE |\n|---|---|---|---|---|")
    out: dict = {"seeds": [d["seed"] for d in docs], "rules": {}}
    for budget in sorted({min(10, n_ep), n_ep}):
        for rule in [*RULES, None]:
            picked = [pick(d["epochs"], rule, budget) for d in docs]
            cells = [_mean_std([p[m] for p in picked]) for m in METRICS]
            name = rule or "last epoch"
            print(f"| {name} | {budget} | " + " | ".join(cells) + " |")
            out["rules"][f"{name} @ {budget}"] = picked
    _paired(docs, n_ep)
    _blocks(docs, n_ep)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _neg(x: float) -> bool:
    return x < 0


def _zero(x: float) -> bool:
    return x == 0


def _pos(x: float) -> bool:
    return x > 0


def _paired(docs: list[dict], n_ep: int) -> None:
    """Each rule against the trainer's rule on the same seeds: the mean and standard error of
    the per-seed difference in test MSE and r, and on how many seeds MSE went down."""
    base = [pick(d["epochs"], next(iter(RULES)), 10) for d in docs]
    n = len(docs)
    print(f"\nPaired with the trainer's rule at 10 epochs ({n} seeds; mean ± standard error):\n")
    print("| rule | epochs | Δ MSE | Δ r | seeds: MSE lower/same/higher |\n|---|---|---|---|---|")
    for budget in sorted({min(10, n_ep), n_ep}):
        for rule in [*RULES, None]:
            picked = [pick(d["epochs"], rule, budget) for d in docs]
            dm = [p["mse"] - b["mse"] for p, b in zip(picked, base, strict=True)]
            dr = [p["pearson"] - b["pearson"] for p, b in zip(picked, base, strict=True)]
            se = [statistics.stdev(x) / n**0.5 if n > 1 else float("nan") for x in (dm, dr)]
            counts = "/".join(str(sum(f(x) for x in dm)) for f in (_neg, _zero, _pos))
            print(
                f"| {rule or 'last epoch'} | {budget} | {statistics.fmean(dm):+.4f} ± {se[0]:.4f} "
                f"| {statistics.fmean(dr):+.4f} ± {se[1]:.4f} | {counts} |"
            )


def _blocks(docs: list[dict], n_ep: int) -> None:
    """Test MSE (and r) averaged over blocks of 5 consecutive seeds, as the paper averages 5
    runs: how far apart two 5-seed means fall by chance."""
    blocks = [docs[i : i + 5] for i in range(0, len(docs) - 4, 5)]
    if len(blocks) < 2:
        return
    names = [f"seeds {b[0]['seed']}-{b[-1]['seed']}" for b in blocks]
    print("\nMeans of 5 seeds, test MSE / r:\n")
    print("| rule | epochs | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for budget in sorted({min(10, n_ep), n_ep}):
        for rule in [*RULES, None]:
            cells = []
            for block in blocks:
                picked = [pick(d["epochs"], rule, budget) for d in block]
                mse = statistics.fmean(p["mse"] for p in picked)
                r = statistics.fmean(p["pearson"] for p in picked)
                cells.append(f"{mse:.4f} / {r:.4f}")
            print(f"| {rule or 'last epoch'} | {budget} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sick_seeds", description=__doc__)
    p.add_argument("command", choices=["run", "table"])
    p.add_argument("--out", default="runs/sick-seeds")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0-4,10-14")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="table: also write the picked metrics here")
    p.add_argument(
        "--init",
        choices=["library", "reference"],
        default="library",
        help="cell initialisation: the library's, or the reference code's (Torch7 Linear)",
    )
    p.add_argument("--dry-run", action="store_true", help="generated data, tiny model")
    args = p.parse_args(argv)
    if args.command == "table":
        return table(args)
    for seed in parse_seeds(args.seeds):
        print(f"seed {seed}: {run_seed(args, seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
