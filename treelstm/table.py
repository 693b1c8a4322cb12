"""The reproduction table: the finished runs under a folder, summarised per row and protocol
(mean ± sample std over seeds) beside the paper's numbers, as markdown and as JSON.

    summarize(out, "sick") -> dict        (what OUT/sick.json holds)
    format_table(summary) -> str          (what OUT/sick.md holds)

A run counts when it finished (`treelstm.train`'s ``metrics.json`` of the folder's own run);
runs are found at ``OUT/<protocol>/<row>/seed<k>/``. Differences are given in units of the
paper's std: (ours - paper) / paper std, so +1.0 is one paper std above the paper's mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .paper import AT_MOST, METRICS, ORDERINGS, PROTOCOLS, WITHIN, Row, rows_of, train_command
from .runtime import RunError, read_json, read_run_file
from .train import TrainConfig

__all__ = ["format_table", "mean_std", "summarize"]

_PERCENT = {"accuracy"}  # shown in percent, as in the paper
_NAMES = {"accuracy": "accuracy (%)", "pearson": "Pearson r", "spearman": "Spearman ρ",
          "mse": "MSE"}  # fmt: skip
_PROTOCOL_NAMES = {"sst-fine": "fine-grained", "sst-binary": "binary", "sick": ""}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value, as it is unknown)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def _finished_runs(folder: Path) -> list[tuple[Path, dict]]:
    """(seed folder, metrics) of every finished run under ``folder``/seed*."""
    out = []
    for run_dir in sorted(folder.glob("seed*"), key=_seed_number):
        try:
            run = read_run_file(run_dir)
            m = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else None
        except (OSError, ValueError, RunError):
            continue
        if run and isinstance(m, dict) and m.get("complete") and m.get("run_id") == run["run_id"]:
            out.append((run_dir, m))
    return out


def _seed_number(path: Path) -> int:
    digits = path.name[4:]
    return int(digits) if digits.isdigit() else -1


def _cell(row: Row, protocol: str, runs: list[tuple[Path, dict]], expected: int) -> dict:
    """One row and protocol: the paper's numbers, ours, the differences and the targets."""
    entry: dict[str, Any] = {"runs": len(runs), "expected": expected, "metrics": {}}
    if runs:
        ms = [m for _, m in runs]
        entry.update(
            seeds=[m["config"]["seed"] for m in ms],
            epochs=sorted({m["config"]["epochs"] for m in ms}),
            subset=sorted({m["config"].get("subset") or 0 for m in ms}),
            dry_run=any(m["config"].get("dry_run") for m in ms),
            hidden=sorted({m["config"]["hidden"] for m in ms}),
            parameters=ms[0].get("parameters"),
            best_epoch=[m["best_epoch"] for m in ms],
            select=ms[0].get("select"),
            wall_time_s=[m["wall_time_s"] for m in ms],
            finished_at=[p.joinpath("metrics.json").stat().st_mtime for p, _ in runs],
        )
    for metric in METRICS[protocol]:
        entry["metrics"][metric] = _metric(row, protocol, metric, [m for _, m in runs])
    return entry


def _metric(row: Row, protocol: str, metric: str, runs: list[dict]) -> dict:
    scale = 100.0 if metric in _PERCENT else 1.0
    paper_mean, paper_std = row.paper[protocol][metric]
    out: dict[str, Any] = {"paper": [paper_mean, paper_std], "target": row.targets.get(metric)}
    if not runs:
        return out
    values = [scale * m["test"][metric] for m in runs]
    mean, std = mean_std(values)
    delta = (mean - paper_mean) / paper_std
    out.update(values=values, mean=mean, std=std, delta_std=delta)
    if out["target"] == WITHIN:
        out["met"] = abs(delta) <= 2.0
    elif out["target"] == AT_MOST:
        out["met"] = delta <= 2.0
    return out


def summarize(out, task: str, expected: int = 5) -> dict:
    """Every row of ``task``'s table with its finished runs under ``out`` (any seeds), the
    orderings the paper reports, and the runs' wall times. ``expected``: the runs per row and
    protocol asked for (a row with fewer is marked partial)."""
    out = Path(out)
    rows = []
    for row in rows_of(task):
        protocols = {}
        for protocol in PROTOCOLS[task]:
            runs = [] if row.cannot_run else _finished_runs(out / protocol / row.key)
            protocols[protocol] = _cell(row, protocol, runs, expected)
        rows.append({"key": row.key, "model": row.model, "settings": row.settings,
                     "note": row.note, "cannot_run": row.cannot_run,
                     "commands": {p: train_command(task, p, row) for p in PROTOCOLS[task]},
                     "protocols": protocols})  # fmt: skip
    summary = {"task": task, "folder": str(out), "rows": rows}
    summary["orderings"] = _orderings(task, rows)
    summary["wall"] = _wall(rows)
    return summary


def _orderings(task: str, rows: list[dict]) -> list[dict]:
    """Whether each comparison of the paper holds on the means (None: a row has no runs)."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for o in ORDERINGS[task]:
        means = {k: by_key[k]["protocols"][o.protocol]["metrics"][o.metric].get("mean")
                 for k in (o.first, *o.others)}  # fmt: skip
        known = all(v is not None for v in means.values())
        holds = known and all(means[o.first] > means[k] for k in o.others)
        out.append({"text": o.text, "protocol": o.protocol, "metric": o.metric,
                    "means": means, "holds": holds if known else None})  # fmt: skip
    return out


def _wall(rows: list[dict]) -> dict:
    """The runs' wall times: their sum (one core's work), and the span from the first run's
    start to the last run's end as their files show it (several processes overlap)."""
    walls, spans = [], []
    for r in rows:
        for cell in r["protocols"].values():
            for w, end in zip(cell.get("wall_time_s", []), cell.get("finished_at", []),
                              strict=True):  # fmt: skip
                walls.append(w)
                spans.append((end - w, end))
    if not walls:
        return {"runs": 0}
    return {"runs": len(walls), "sum_s": sum(walls),
            "span_s": max(e for _, e in spans) - min(s for s, _ in spans),
            "per_run_s": [min(walls), sorted(walls)[len(walls) // 2], max(walls)]}  # fmt: skip


# ------------------------------------------------------------------------------- markdown


def _fmt(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.1f}" if metric in _PERCENT else f"{v:.4f}"


def _ours(metric: str, m: dict, cell: dict, row: dict) -> str:
    if row["cannot_run"]:
        return "not run here (see below)"
    if "mean" not in m:
        return "(pending: runs not yet made)"
    return f"{_fmt(metric, m['mean'])} ± {_fmt(metric, m['std'])}"


def _met(m: dict) -> str:
    if "met" not in m:
        return ""
    return "yes" if m["met"] else "**no**"


def _line(task: str, row: dict, protocol: str, metric: str) -> str:
    cell = row["protocols"][protocol]
    m = cell["metrics"][metric]
    d = "/".join(str(h) for h in cell.get("hidden", [])) or _default_d(task, row)
    theta = f"{cell['parameters']['composition']:,}" if cell.get("parameters") else "—"
    name = " ".join(x for x in (_PROTOCOL_NAMES[protocol], _NAMES[metric]) if x)
    paper = f"{_fmt(metric, m['paper'][0])} ± {_fmt(metric, m['paper'][1])}"
    runs = "" if row["cannot_run"] else f"{cell['runs']}" + (
        f" of {cell['expected']}" if cell["runs"] < cell["expected"] else "")  # fmt: skip
    delta = f"{m['delta_std']:+.1f}" if "delta_std" in m else ""
    cells = [row["model"], d, theta, name, paper, _ours(metric, m, cell, row), runs, delta,
             m["target"] or "", _met(m)]  # fmt: skip
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _default_d(task: str, row: dict) -> str:
    """The memory size a row runs with (its own, or the trainer's default: the paper's)."""
    try:
        return str(TrainConfig(task=task, **row["settings"]).resolved().hidden)
    except (RunError, ValueError):
        return "—"


def format_table(summary: dict) -> str:
    """The markdown table of a `summarize` result, then the paper's comparisons, the wall
    times and each row's command line."""
    task = summary["task"]
    title = {"sst": "SST (Table 2: test accuracy)", "sick": "SICK (Table 3: test)"}[task]
    lines = [f"## Tai, Socher & Manning (2015), {title}: the paper and this library", ""]
    if any(c.get("dry_run") for r in summary["rows"] for c in r["protocols"].values()):
        lines += ["**Dry run: generated data and tiny models; these numbers mean nothing.**", ""]
    lines += [
        "| Model | d | \\|θ\\| | Metric | Paper | Ours (mean ± std) | Runs | Δ (paper std) "
        "| Target | Met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        for protocol in row["protocols"]:
            lines += [_line(task, row, protocol, metric) for metric in METRICS[protocol]]
    lines += ["", *_notes(summary)]
    return "\n".join(lines) + "\n"


def _notes(summary: dict) -> list[str]:
    out = ["Paper: mean ± std of 5 runs. Ours: mean ± sample std over the runs (seeds) listed. "
           "Δ = (ours − paper) / paper std. |θ|: the composition function's parameters (the "
           "cell or the LSTM; Table 1's count), with the input size used here. Tree-LSTM rows "
           "run on the level executor; sequence rows on nn.LSTM (SST) or the packed LSTM "
           "without output gate (SICK).", ""]  # fmt: skip
    for o in summary["orderings"]:
        shown = ", ".join(f"{k} {_fmt(o['metric'], v)}" for k, v in o["means"].items())
        verdict = {True: "yes", False: "**no**", None: "(pending: runs not yet made)"}[o["holds"]]
        out.append(f"- {o['text']}: {verdict} ({shown})")
    wall = summary["wall"]
    if wall["runs"]:
        lo, mid, hi = wall["per_run_s"]
        out.append(
            f"- Wall time: {wall['runs']} runs, {_duration(wall['sum_s'])} of runs in all "
            f"(per run {lo:.0f} / {mid:.0f} / {hi:.0f} s min / median / max); "
            f"{_duration(wall['span_s'])} from the first run's start to the last run's end."
        )
    out += ["", "Per row (the `treelstm.train` command; each run adds --out, --seed, "
            "--data-dir):", ""]  # fmt: skip
    for row in summary["rows"]:
        out.extend(_row_notes(row))
    return out


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _row_notes(row: dict) -> list[str]:
    if row["cannot_run"]:
        return [f"- {row['model']}: not run ({row['cannot_run']})"]
    lines = []
    for protocol, cell in row["protocols"].items():
        extra = []
        if cell["runs"]:
            walls = cell["wall_time_s"]
            extra.append(f"seeds {cell['seeds']}, best epochs {cell['best_epoch']}, epochs "
                         f"{cell['epochs']}, {sum(walls) / len(walls):.0f} s per run")  # fmt: skip
            if cell["dry_run"]:
                extra.append("dry run: generated data")
            if any(cell["subset"]):
                extra.append(f"subset {cell['subset']}")
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"- {row['model']}, {protocol}{note}: `{row['commands'][protocol]}`"
                     + (f"; {'; '.join(extra)}" if extra else ""))  # fmt: skip
    return lines
