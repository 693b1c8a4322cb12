"""Reproduce the tables of Tai, Socher & Manning (2015): several seeds, mean ± std beside the
paper's numbers.

    python -m treelstm.reproduce sst --seeds 5 --data-dir D --out runs/repro    # fine + binary
    python -m treelstm.reproduce sick --seeds 5 --data-dir D --out runs/repro
    python -m treelstm.reproduce sst --dry-run --out /tmp/r                      # seconds, offline

Each run is ``treelstm.train`` in ``OUT/<protocol>/seed<k>/``. A run that finished with the
settings asked for (its ``metrics.json`` belongs to the run in the folder and was written with
the same settings, ``--epochs`` included) is not repeated; any other is resumed, so the command
can be stopped and restarted, or several copies started on different ``--start-seed``. More
``--epochs`` than a finished run had extends it; other changed settings (``--hidden``...) stop
with an error naming the folder, never reporting the old run as done. The table is made from
every finished run found under ``OUT/<protocol>/`` and written to ``OUT/<task>.md`` (and
``.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .runtime import RunError, add_config_arguments, cli_main, config_diff, read_json, read_run_file
from .runtime.files import atomic_write_bytes, write_json
from .train import METRICS, TrainConfig, train

__all__ = ["PAPER", "TARGETS", "ReproduceConfig", "reproduce", "summarize", "main"]

#: Tai et al. 2015, Tables 2 and 3 (Constituency Tree-LSTM; Dependency Tree-LSTM on SICK).
PAPER = {
    "sst-fine": {"accuracy": 51.0},
    "sst-binary": {"accuracy": 88.0},
    "sick": {"pearson": 0.8676, "spearman": 0.8083, "mse": 0.2532},
}
#: What this library aims for on the mean of 5 seeds: (metric, "min" or "max", bound).
TARGETS = {
    "sst-fine": [("accuracy", "min", 50.0)],
    "sst-binary": [("accuracy", "min", 87.0)],
    "sick": [("pearson", "min", 0.865), ("mse", "max", 0.26)],
}
_PERCENT = {"accuracy"}  # shown in percent, as in the paper


@dataclass
class ReproduceConfig:
    task: str = "sst"  # "sst" (fine-grained and binary protocols) or "sick"
    seeds: int = 5  # runs per protocol (the paper reports the mean of 5)
    start_seed: int = 0  # seeds are start_seed .. start_seed + seeds - 1
    modes: str = "fine,binary"  # SST protocols to run (comma-separated)
    data_dir: str | None = None  # data folder; else $TREELSTM_DATA; else download (SST)
    out: str = "runs/reproduce"  # one folder per protocol and seed, tables beside them
    epochs: int = 10  # epochs per run (the reference trains 10, keeps the best on dev)
    embeddings: str | None = None  # GloVe-format vectors; default: found beside the data
    hidden: int = 150  # Tree-LSTM memory size
    subset: int | None = None  # train on the first N training examples only (quick looks)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch threads per run (1 when several copies share a CPU); 0: default
    table_only: bool = False  # run nothing: tabulate the finished runs under --out
    dry_run: bool = False  # generated data, tiny models, 2 seeds x 2 epochs: no data needed
    progress: bool = True  # tqdm progress bars


def _protocols(cfg: ReproduceConfig) -> list[str]:
    if cfg.task == "sick":
        return ["sick"]
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("fine", "binary")]
    if bad or not modes:
        raise ValueError(f"--modes takes 'fine' and/or 'binary', got {cfg.modes!r}")
    return [f"sst-{m}" for m in modes]


def _finished(run_dir: Path, expected: TrainConfig | None = None) -> dict | None:
    """The metrics of the finished run in ``run_dir``, or None.

    Finished: ``metrics.json`` is complete and carries the run id of the folder's run.json (a
    metrics file of another run, or of an older version without run ids, does not count).
    With ``expected`` (a resolved config), the run must also have been made with its settings,
    ``--epochs`` included (the rest of `TrainConfig.RESUMABLE` may differ).
    """
    path = run_dir / METRICS
    if not path.exists():
        return None
    try:
        run = read_run_file(run_dir)
        m = read_json(path)
    except (OSError, ValueError, RunError):
        return None
    if not (run and isinstance(m, dict) and m.get("complete") and "test" in m):
        return None
    if m.get("run_id") != run["run_id"]:
        return None
    if expected is not None:
        same = TrainConfig.RESUMABLE - {"epochs"}
        if config_diff(m.get("config", {}), dataclasses.asdict(expected), same):
            return None
    return m


def _run_config(cfg: ReproduceConfig, protocol: str, seed: int, run_dir: Path) -> TrainConfig:
    return TrainConfig(
        task=cfg.task,
        mode=protocol.split("-")[1] if cfg.task == "sst" else "fine",
        data_dir=cfg.data_dir,
        out=str(run_dir),
        epochs=cfg.epochs,
        embeddings=cfg.embeddings,
        hidden=cfg.hidden,
        subset=cfg.subset,
        seed=seed,
        device=cfg.device,
        threads=cfg.threads,
        resume=True,
        dry_run=cfg.dry_run,
        progress=cfg.progress,
    )


def reproduce(cfg: ReproduceConfig, log=print) -> dict:
    """Run the missing seeds of every protocol, then tabulate; returns the summary."""
    if cfg.task not in ("sst", "sick"):
        raise ValueError(f"task must be 'sst' or 'sick', got {cfg.task!r}")
    out = Path(cfg.out)
    seeds = range(cfg.start_seed, cfg.start_seed + (2 if cfg.dry_run else cfg.seeds))
    if not cfg.table_only:
        for protocol in _protocols(cfg):
            for seed in seeds:
                run_dir = out / protocol / f"seed{seed}"
                run_cfg = _run_config(cfg, protocol, seed, run_dir)
                if _finished(run_dir, run_cfg.resolved()):
                    log(f"{protocol} seed {seed}: finished earlier ({run_dir}/metrics.json)")
                    continue
                log(f"{protocol} seed {seed} -> {run_dir}")
                train(run_cfg, log=log)
    summary = summarize(out, cfg.task)
    table = format_table(summary, cfg)
    atomic_write_bytes(out / f"{cfg.task}.md", table.encode("utf-8"))
    write_json(out / f"{cfg.task}.json", summary)
    log(table)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(out, task: str) -> dict:
    """Per protocol: the finished runs' test metrics, their mean and (sample) std."""
    out = Path(out)
    summary = {}
    for protocol in PAPER:
        if not protocol.startswith(task):
            continue
        runs = []
        for run_dir in sorted((out / protocol).glob("seed*")):
            m = _finished(run_dir)
            if m is not None:
                runs.append(m)
        if not runs:
            continue
        entry = {
            "seeds": [r["config"]["seed"] for r in runs],
            "epochs": sorted({r["config"]["epochs"] for r in runs}),
            "dry_run": any(r["config"].get("dry_run") for r in runs),
            "subset": sorted({r["config"].get("subset") or 0 for r in runs}),
            "wall_time_s": [r["wall_time_s"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
            "metrics": {},
        }
        for metric in PAPER[protocol]:
            scale = 100.0 if metric in _PERCENT else 1.0
            values = [scale * r["test"][metric] for r in runs]
            mean, std = _mean_std(values)
            entry["metrics"][metric] = {"values": values, "mean": mean, "std": std}
        summary[protocol] = entry
    return summary


def _fmt(metric: str, v: float) -> str:
    return f"{v:.1f}" if metric in _PERCENT else f"{v:.4f}"


def format_table(summary: dict, cfg: ReproduceConfig | None = None) -> str:
    """Markdown: protocol, metric, paper, ours (mean ± std over n seeds), target, met."""
    lines = [
        "| Protocol | Metric | Paper | Ours (mean ± std) | Runs | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol, entry in summary.items():
        targets = {m: (kind, bound) for m, kind, bound in TARGETS[protocol]}
        for metric, got in entry["metrics"].items():
            paper = PAPER[protocol][metric]
            t = targets.get(metric)
            if t is None:
                target, met = "", ""
            else:
                kind, bound = t
                target = ("≥ " if kind == "min" else "≤ ") + _fmt(metric, bound)
                ok = got["mean"] >= bound if kind == "min" else got["mean"] <= bound
                met = "yes" if ok else "no"
            name = {"accuracy": "accuracy (%)", "pearson": "Pearson r",
                    "spearman": "Spearman ρ", "mse": "MSE"}[metric]  # fmt: skip
            lines.append(
                f"| {protocol} | {name} | {_fmt(metric, paper)} | "
                f"{_fmt(metric, got['mean'])} ± {_fmt(metric, got['std'])} | "
                f"{len(got['values'])} | {target} | {met} |"
            )
    lines.append("")
    for protocol, entry in summary.items():
        walls = entry["wall_time_s"]
        per_seed = ", ".join(
            f"{s}: " + "/".join(_fmt(m, entry["metrics"][m]["values"][i]) for m in entry["metrics"])
            for i, s in enumerate(entry["seeds"])
        )
        note = " (dry run: generated data)" if entry["dry_run"] else ""
        sub = [s for s in entry["subset"] if s]
        if sub:
            note += f" (subset {sub})"
        lines.append(
            f"- {protocol}{note}: epochs {entry['epochs']}, best dev epoch per seed "
            f"{entry['best_epoch']}, wall time per run {sum(walls) / len(walls):.0f} s "
            f"(total {sum(walls):.0f} s); per seed {per_seed}"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m treelstm.reproduce",
        description="Run Tai et al. (2015)'s SST or SICK protocol over several seeds and "
        "tabulate mean ± std beside the paper.",
    )
    p.add_argument("task", choices=["sst", "sick"])
    add_config_arguments(p, ReproduceConfig, skip=("task",))
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 1 error, 130/143 stopped)."""
    args = build_parser().parse_args(argv)
    cfg = ReproduceConfig(**vars(args))
    t0 = time.perf_counter()
    code = cli_main(lambda: reproduce(cfg))
    if code == 0:
        print(f"reproduce {cfg.task}: {time.perf_counter() - t0:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
