"""Every autobatch example and the benchmark run end to end (--dry-run / --quick), offline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_sst_example_autobatch_matches_the_level_executor(capsys):
    out = _example("autobatch_sst").main(["--dry-run"])
    assert set(out) == {"autobatch", "level"}
    assert out["autobatch"] == pytest.approx(out["level"], abs=1e-9)  # the same function
    printed = capsys.readouterr().out.splitlines()
    losses = [line.split("train loss ")[1] for line in printed if "train loss" in line]
    assert losses[: len(losses) // 2] == losses[len(losses) // 2 :]  # epoch losses agree


def test_mnist_example_trains_all_three_nets(capsys):
    out = _example("autobatch_mnist").main(["--dry-run"])
    assert set(out) == {"halting", "depth", "branch"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert "halting steps" in capsys.readouterr().out


def test_topdown_example_runs_both_models():
    out = _example("autobatch_topdown").main(["--dry-run"])
    assert set(out) == {"bidirectional", "bottom-up only"}


def test_lstm_example_runs():
    assert 0.0 <= _example("autobatch_lstm").main(["--dry-run"]) <= 1.0


def test_benchmark_quick_writes_the_records(tmp_path, monkeypatch, capsys):
    from benchmarks import autobatch as bench

    monkeypatch.delenv("TREELSTM_DATA", raising=False)
    out = tmp_path / "ab.json"
    bench.main([
        "--quick", "--threads", "1", "--no-dynet", "--n-trees", "8", "--cells", "childsum",
        "--unbatched-trees", "4", "--mnist-batch", "4", "--json", str(out),
    ])  # fmt: skip
    records = json.loads(out.read_text())
    trees = [r for r in records if r["cell"] != "mnist_halting"]
    assert {r["impl"] for r in trees} == {"unbatched", "autobatch", "level"}
    assert all(r["trees_per_s"] > 0 and r["threads"] == 1 and r["batch_size"] == 25 for r in trees)
    mnist = [r for r in records if r["cell"] == "mnist_halting"]
    assert {r["impl"] for r in mnist} >= {"unbatched", "autobatch"}
    assert "× level" in capsys.readouterr().out


def test_benchmark_variants_and_breakdown(monkeypatch, capsys):
    from benchmarks import autobatch as bench

    monkeypatch.delenv("TREELSTM_DATA", raising=False)
    small = ["--n-trees", "6", "--reps", "1", "--batch-sizes", "3"]
    recs = bench.main(["--variants", *small])
    assert {(r["cell"], r["policy"], r["fused"]) for r in recs} == {
        (c, p, f)
        for c in ("childsum", "binary")
        for p in ("agenda", "depth")
        for f in (True, False)
    }
    assert all(r["trees_per_cpu_s"] > 0 for r in recs)
    recs = bench.main(["--breakdown", "--cells", "childsum", *small])
    assert recs[0]["forward"] > 0 and recs[0]["level forward + backward"] > 0
    assert "fused level call (wall)" in capsys.readouterr().out


@pytest.mark.parametrize("cell", ["childsum", "binary"])
def test_benchmark_rows_compute_the_same_loss(cell):
    """unbatched, autobatch and level time the same function (DyNet has its own weights)."""
    import torch

    from benchmarks import autobatch as bench
    from dynamic.autobatch import autobatch

    trees = bench.generated_trees(6, seed=4)
    vocab = {w: i for i, w in enumerate(sorted({w for t in trees for w in t.words()}))}
    model = bench.TreeModel(cell, vocab)
    batched = torch.stack(autobatch(model.tree_loss).map([model.prepare(t) for t in trees])).sum()
    alone = sum(model.tree_loss(model.prepare(t)) for t in trees)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.level_loss(trees), alone, rtol=1e-5, atol=1e-4)
