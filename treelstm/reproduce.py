"""Reproduce the tables of Tai, Socher & Manning (2015): every model row over several seeds,
one markdown table (and JSON) of mean ± std beside the paper's numbers.

    python -m treelstm.reproduce table sst --seeds 5 --data-dir D --out runs/tables --threads 1
    python -m treelstm.reproduce table sick --seeds 5 --data-dir D --out runs/tables --threads 1
    python -m treelstm.reproduce table sst --dry-run --out /tmp/t     # generated data, seconds
    python -m treelstm.reproduce table sick --rows dependency,lstm --start-seed 5 --seeds 5

(``python -m treelstm.reproduce sst ...``, without ``table``, is the same command.)

The rows are `treelstm.paper.ROWS`: each a `treelstm.train` run per protocol (SST: fine and
binary) and seed in ``OUT/<protocol>/<row>/seed<k>/``. A run that finished with the settings
asked for is not repeated, any other is resumed, a run folder another process holds (its lock)
is skipped, so the command can be stopped and restarted, and two or more copies of the same
command share the work between them (or split it by ``--rows``, ``--modes``, ``--start-seed``).
More ``--epochs`` than a finished run had extends it; other changed settings stop with an error
naming the run folder, never counting the old run. Rows that cannot run here are listed with
the reason. The table is made from every finished run of the seeds asked for and written to
``OUT/<task>.md`` and ``OUT/<task>.json`` after every run, so it is always the state of things.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .paper import METRICS as PAPER_METRICS
from .paper import PROTOCOLS, ROWS, Row, rows_of
from .runtime import (
    RunDirLocked,
    RunError,
    TrainingError,
    add_config_arguments,
    cli_main,
    config_defaults,
    config_diff,
    read_json,
    read_run_file,
)
from .runtime.files import atomic_write_bytes, write_json
from .table import format_table, summarize
from .train import METRICS, TrainConfig, train

__all__ = ["Job", "ReproduceConfig", "main", "plan", "reproduce"]


@dataclass
class ReproduceConfig:
    task: str = "sst"  # "sst" (fine-grained and binary protocols) or "sick"
    seeds: int = 5  # runs per row and protocol (the paper reports the mean of 5)
    start_seed: int = 0  # seeds are start_seed .. start_seed + seeds - 1
    rows: str | None = None  # rows to run, comma-separated (default: every row that can run)
    modes: str = "fine,binary"  # SST protocols to run (comma-separated)
    data_dir: str | None = None  # data folder; else $TREELSTM_DATA; else download (SST)
    out: str = "runs/tables"  # one folder per protocol, row and seed; the tables beside them
    epochs: int = 10  # epochs per run (the reference trains 10, keeps the best on dev)
    embeddings: str | None = None  # GloVe-format vectors; default: found beside the data
    subset: int | None = None  # train on the first N training examples only (quick looks)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch threads per run (1 when several copies share a CPU); 0: default
    table_only: bool = False  # run nothing: tabulate the finished runs under --out
    dry_run: bool = False  # generated data, tiny models, at most 2 seeds x 2 epochs: no data
    progress: bool = True  # tqdm progress bars within a run

    CHOICES = {"task": ("sst", "sick")}


@dataclass(frozen=True)
class Job:
    """One run of the table: a row, a protocol and a seed, in its folder."""

    row: Row
    protocol: str
    seed: int
    folder: Path
    config: TrainConfig

    def name(self) -> str:
        return f"{self.protocol} {self.row.key} seed {self.seed}"


# ------------------------------------------------------------------------------- the runs


def _protocols(cfg: ReproduceConfig) -> list[str]:
    if cfg.task == "sick":
        return list(PROTOCOLS["sick"])
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("fine", "binary")]
    if bad or not modes:
        raise ValueError(f"--modes takes 'fine' and/or 'binary', got {cfg.modes!r}")
    return [f"sst-{m}" for m in modes]


def _seeds(cfg: ReproduceConfig) -> range:
    n = min(cfg.seeds, 2) if cfg.dry_run else cfg.seeds
    if n < 1:
        raise ValueError(f"--seeds must be at least 1, got {cfg.seeds}")
    return range(cfg.start_seed, cfg.start_seed + n)


def _run_config(cfg: ReproduceConfig, job_row: Row, protocol: str, seed: int, folder: Path):
    base = dict(
        task=cfg.task,
        mode=protocol.split("-", 1)[1] if cfg.task == "sst" else "fine",
        data_dir=cfg.data_dir,
        out=str(folder),
        epochs=cfg.epochs,
        embeddings=cfg.embeddings,
        subset=cfg.subset,
        seed=seed,
        device=cfg.device,
        threads=cfg.threads,
        resume=True,
        dry_run=cfg.dry_run,
        progress=cfg.progress,
    )
    return TrainConfig(**{**base, **job_row.settings})


def plan(cfg: ReproduceConfig) -> list[Job]:
    """Every run of the table that can run here, seed by seed (seed 0 of every row first, so
    that a table stopped early has every row), then row by row, then protocol."""
    if cfg.task not in ROWS:
        raise ValueError(f"task must be 'sst' or 'sick', got {cfg.task!r}")
    rows = [r for r in rows_of(cfg.task, cfg.rows) if r.cannot_run is None]
    out = Path(cfg.out)
    jobs = []
    for seed in _seeds(cfg):
        for row in rows:
            for protocol in _protocols(cfg):
                folder = out / protocol / row.key / f"seed{seed}"
                jobs.append(Job(row, protocol, seed, folder,
                                _run_config(cfg, row, protocol, seed, folder)))  # fmt: skip
    return jobs


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
        if config_diff(
            m.get("config", {}), dataclasses.asdict(expected), same, config_defaults(TrainConfig)
        ):
            return None
    return m


@dataclass
class Tally:
    """What this command did, for its progress lines and the JSON."""

    started: float
    trained: int = 0
    earlier: int = 0
    elsewhere: list[str] = dataclasses.field(default_factory=list)  # held by another process
    failed: list[str] = dataclasses.field(default_factory=list)  # diverged / non-finite


def _one(job: Job, k: int, n: int, tally: Tally, log) -> None:
    """Run (or skip) one job, with a progress line before and after."""
    head = f"[{k}/{n}] {job.name()}"
    if _finished(job.folder, job.config.resolved()):
        tally.earlier += 1
        log(f"{head}: finished earlier ({job.folder}/{METRICS})")
        return
    log(f"{head} -> {job.folder}")
    t0 = time.perf_counter()
    try:
        m = train(job.config, log=log)
    except RunDirLocked as e:
        tally.elsewhere.append(job.name())
        log(f"{head}: skipped, another process holds it ({e})")
        return
    except TrainingError as e:  # this run's own failure; the others can still run
        tally.failed.append(f"{job.name()}: {e}")
        log(f"{head}: FAILED ({e}); going on with the next run")
        return
    tally.trained += 1
    done = time.perf_counter() - t0
    shown = ", ".join(f"{key} {m['test'][key]:.4f}" for key in PAPER_METRICS[job.protocol])
    log(
        f"{head}: done in {done:.0f} s (test {shown}; best epoch {m['best_epoch']}); "
        f"{tally.trained} trained by this command in {time.perf_counter() - tally.started:.0f} s"
    )


def reproduce(cfg: ReproduceConfig, log=print) -> dict:
    """Run the missing runs of the table, then write it; returns the summary (`table.summarize`).
    The table is rewritten after every run. Raises TrainingError at the end when a run failed
    (the others ran)."""
    jobs = plan(cfg)
    out = Path(cfg.out)
    tally = Tally(time.perf_counter())
    if not cfg.table_only:
        for k, job in enumerate(jobs, 1):
            _one(job, k, len(jobs), tally, log)
            _write(cfg, out, tally, log=None)
    summary = _write(cfg, out, tally, log=log)
    if tally.failed:
        raise TrainingError(f"{len(tally.failed)} run(s) failed: {'; '.join(tally.failed)}")
    return summary


def _write(cfg: ReproduceConfig, out: Path, tally: Tally, log) -> dict:
    """The table of every finished run of the seeds asked for: OUT/<task>.md and .json."""
    seeds = list(_seeds(cfg))
    summary = summarize(out, cfg.task, expected=len(seeds))
    summary["command"] = {
        "pid": os.getpid(),
        "seconds": time.perf_counter() - tally.started,
        "trained": tally.trained,
        "finished_earlier": tally.earlier,
        "skipped_held_elsewhere": tally.elsewhere,
        "failed": tally.failed,
    }
    table = format_table(summary)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{cfg.task}.md", table.encode("utf-8"))
    write_json(out / f"{cfg.task}.json", summary)
    if log is not None:
        log(table)
        log(f"wrote {out / (cfg.task + '.md')} and {out / (cfg.task + '.json')}")
    return summary


# ------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m treelstm.reproduce table",
        description="Run every model row of Tai et al. (2015)'s SST or SICK table over several "
        "seeds and write one table of mean ± std beside the paper's numbers.",
    )
    p.add_argument("task", choices=["sst", "sick"])
    add_config_arguments(p, ReproduceConfig, skip=("task",))
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 1 error, 130/143 stopped)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:  # "table sst" and "sst" are the same command
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    cfg = ReproduceConfig(**vars(args))
    t0 = time.perf_counter()
    code = cli_main(lambda: reproduce(cfg))
    if code == 0:
        print(f"reproduce table {cfg.task}: {time.perf_counter() - t0:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
