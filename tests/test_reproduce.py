"""The reproduction harness (dry runs, the table of mean ± std beside the paper) and the two
example scripts, run with --dry-run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from treelstm import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("task", ["sst", "sick"])
def test_reproduce_dry_run_writes_the_table_and_skips_finished_runs(task, tmp_path, capsys):
    args = [task, "--dry-run", "--out", str(tmp_path), "--threads", "1", "--no-progress",
            "--data-dir", str(tmp_path / "no-data")]  # fmt: skip
    assert rp.main(args) == 0
    table = (tmp_path / f"{task}.md").read_text()
    protocols = ["sst-fine", "sst-binary"] if task == "sst" else ["sick"]
    for protocol in protocols:
        assert (tmp_path / protocol / "seed0" / "metrics.json").exists()
        assert (tmp_path / protocol / "seed1" / "metrics.json").exists()
        assert f"| {protocol} |" in table and "dry run: generated data" in table
    for number in ["51.0", "88.0"] if task == "sst" else ["0.8676", "0.8083", "0.2532"]:
        assert number in table
    capsys.readouterr()
    assert rp.main(args) == 0  # everything finished: nothing is trained again
    assert capsys.readouterr().out.count("finished earlier") == 2 * len(protocols)


def _fake_run(out: Path, protocol: str, seed: int, test: dict, wall: float = 10.0) -> None:
    d = out / protocol / f"seed{seed}"
    d.mkdir(parents=True)
    run_id = f"run{seed}"
    (d / "run.json").write_text(json.dumps({"format": "treelstm-run", "run_id": run_id}))
    m = {"run_id": run_id, "complete": True, "config": {"seed": seed, "epochs": 10},
         "test": test, "wall_time_s": wall, "best_epoch": 3}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(m))


def test_summary_mean_and_sample_std(tmp_path):
    for seed, acc in enumerate([0.50, 0.52, 0.51]):
        _fake_run(tmp_path, "sst-fine", seed, {"accuracy": acc})
    (tmp_path / "sst-fine" / "seed9").mkdir()  # unfinished: no metrics.json, ignored
    _fake_run(tmp_path, "sst-fine", 7, {"accuracy": 0.9})  # another run's metrics: ignored
    (tmp_path / "sst-fine" / "seed7" / "run.json").write_text(
        json.dumps({"format": "treelstm-run", "run_id": "someone-else"})
    )
    s = rp.summarize(tmp_path, "sst")
    got = s["sst-fine"]["metrics"]["accuracy"]
    assert got["mean"] == pytest.approx(51.0) and got["std"] == pytest.approx(1.0)
    assert s["sst-fine"]["seeds"] == [0, 1, 2] and "sst-binary" not in s
    table = rp.format_table(s)
    assert "| sst-fine | accuracy (%) | 51.0 | 51.0 ± 1.0 | 3 | ≥ 50.0 | yes |" in table


def test_sick_table_checks_both_targets(tmp_path):
    _fake_run(tmp_path, "sick", 0, {"pearson": 0.87, "spearman": 0.81, "mse": 0.27})
    table = rp.format_table(rp.summarize(tmp_path, "sick"))
    assert "| sick | Pearson r | 0.8676 | 0.8700 ± 0.0000 | 1 | ≥ 0.8650 | yes |" in table
    assert "| sick | MSE | 0.2532 | 0.2700 ± 0.0000 | 1 | ≤ 0.2600 | no |" in table
    assert "| sick | Spearman ρ | 0.8083 |" in table


def test_reproduce_refuses_unknown_modes(tmp_path):
    with pytest.raises(ValueError, match="--modes"):
        rp.reproduce(rp.ReproduceConfig(task="sst", modes="coarse", out=str(tmp_path)))


@pytest.mark.parametrize("script", ["sst_sentiment.py", "sick_relatedness.py"])
def test_example_dry_run(script, capsys):
    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "examples" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry-run"])
    out = capsys.readouterr().out
    assert "dry run" in out and "epoch 2" in out and "dev" in out


def test_changed_settings_are_not_reported_as_finished(tmp_path, capsys):
    """Issue 11, case 1: a finished run counts as done only for the settings it was made with.
    More --epochs extends it (resumed, not repeated); another --hidden stops with an error
    naming the run folder and the setting, instead of "finished earlier"."""
    args = ["sick", "--dry-run", "--out", str(tmp_path), "--threads", "1", "--no-progress",
            "--start-seed", "0", "--seeds", "1", "--epochs", "1"]  # fmt: skip
    assert rp.main(args) == 0
    first = json.loads((tmp_path / "sick" / "seed0" / "metrics.json").read_text())
    assert len(first["epochs"]) == 1
    capsys.readouterr()
    assert rp.main([*args[:-1], "2"]) == 0
    out = capsys.readouterr().out
    assert "finished earlier" not in out and "resumed from" in out
    second = json.loads((tmp_path / "sick" / "seed0" / "metrics.json").read_text())
    assert len(second["epochs"]) == 2 and second["epochs"][0] == first["epochs"][0]
    assert rp.main([*args[:-1], "2", "--hidden", "8"]) == 1
    captured = capsys.readouterr()
    assert "finished earlier" not in captured.out
    assert "seed0 holds a run with other settings (hidden: 16 -> 8)" in captured.err
