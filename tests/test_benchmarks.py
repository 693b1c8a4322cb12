"""benchmarks.batching end to end on a tiny input: every strategy timed, checked and written."""

import json

import pytest

from benchmarks import batching
from treelstm.tree import write_ptb


@pytest.fixture
def tree_file(tmp_path):
    path = tmp_path / "trees.txt"
    write_ptb(path, batching.synthetic_trees(12, seed=3))
    return path


def test_every_strategy_is_timed_checked_and_written(tree_file, tmp_path, capsys):
    """One row per cell x batch size x strategy with positive speeds; the strategies agree."""
    out = tmp_path / "bench.json"
    code = batching.main([
        "--trees", str(tree_file), "--batch-sizes", "1,4", "--hidden", "8", "--emb", "6",
        "--reps", "1", "--threads", "1", "--check", "--json", str(out),
        "--plot", str(tmp_path / "bench.png"),
    ])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu"
    rows = data["results"]
    got = {(r["cell"], r["batch_size"], r["strategy"]) for r in rows}
    assert got == {
        (c, b, s) for c in ("childsum", "nary") for b in (1, 4) for s in batching.STRATEGIES
    }
    assert all(r["trees_per_s"] > 0 and 0 < r["schedule_share"] < 1 for r in rows)
    for r in rows:
        if r["strategy"] == "recursive":
            assert r["ratio_vs_recursive"] == pytest.approx(1.0)
    assert (tmp_path / "bench.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "max |diff| vs recursive" in printed and "x oracle" in printed


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "--device: expected cpu, cuda"), ("meta", "--device: expected cpu, cuda")],
)
def test_a_bad_device_is_a_usage_error(tree_file, device, message, capsys):
    """--device names the problem instead of failing deep inside torch."""
    with pytest.raises(SystemExit) as e:
        batching.main(["--trees", str(tree_file), "--device", device])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_usage_error(tree_file, capsys, monkeypatch):
    """Asking for CUDA where torch sees none says so (forced here, so it runs on GPU hosts too)."""
    monkeypatch.setattr(batching.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        batching.main(["--trees", str(tree_file), "--device", "cuda"])
    assert "torch sees no CUDA device" in capsys.readouterr().err
