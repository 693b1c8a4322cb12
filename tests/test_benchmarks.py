"""benchmarks.batching end to end on a tiny input: every strategy timed, checked and written."""

import json

import pytest

from benchmarks import batching
from treelstm.formats import write_ptb


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


def test_dynet_peer_skipped_with_a_note_when_not_importable(
    tree_file, tmp_path, capsys, monkeypatch
):
    """--peers dynet without dynet: one note on stderr, the other rows as usual, exit 0."""
    monkeypatch.setattr(batching.dynet_peer, "available", lambda: False)
    out = tmp_path / "bench.json"
    code = batching.main([
        "--trees", str(tree_file), "--cell", "childsum", "--batch-sizes", "4", "--hidden", "8",
        "--emb", "6", "--reps", "1", "--threads", "1", "--strategies", "level,oracle",
        "--peers", "dynet", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    assert "peer dynet: `import dynet` fails here" in capsys.readouterr().err
    rows = json.loads(out.read_text())["results"]
    assert [r["strategy"] for r in rows] == ["level", "oracle"]
    assert all(r["ratio_vs_dynet"] is None for r in rows)


@pytest.mark.parametrize("kind", ["childsum", "nary"])
def test_oracle_is_the_same_node_evaluations_without_dependencies(kind):
    """The oracle's schedule has two levels; each internal node is evaluated once, on its leaf
    children only (the others cut), and the fused kernel computes exactly that."""
    torch = pytest.importorskip("torch")
    from treelstm.executor import run
    from treelstm.schedule import build_schedule

    trees = batching.synthetic_trees(5, seed=4)
    bench = batching.Bench(kind, trees, hidden=4, emb=3, input_at="all")
    s = bench.schedule(trees)
    cut = batching.oracle_schedule(s)
    n0, N = s.num_leaves, s.num_nodes
    assert cut.level_bounds == (0, n0, N) and cut.num_leaves == n0
    assert bool((cut.children < n0).all()) and bool((cut.parent[n0:] == -1).all())
    assert torch.equal(cut.parent[:n0], s.parent[:n0])
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h, _ = run(bench.cell, cut, x, "level")
        h_leaf, c_leaf = run(bench.cell, build_schedule(trees, bench.vocab), x, "level")
        ch = cut.children[n0:]
        K = bench.n_ary or ch.shape[1]
        if ch.shape[1] < K:
            ch = torch.cat([ch, ch.new_full((N - n0, K - ch.shape[1]), -1)], dim=1)
        idx = ch.clamp(min=0)
        mask = ch >= 0
        zero = torch.zeros(())
        child_h = torch.where(mask[..., None], h_leaf[idx], zero)
        child_c = torch.where(mask[..., None], c_leaf[idx], zero)
        want, _ = bench.cell(x[n0:], child_h, child_c, mask)
    torch.testing.assert_close(h[:n0], h_leaf[:n0])
    torch.testing.assert_close(h[n0:], want, rtol=1e-5, atol=1e-6)


def test_wide_trees_are_wide_and_parse(tmp_path):
    """The generated treebank-like file parses; fan-out reaches the cap and never exceeds it."""
    from benchmarks import wide_trees
    from treelstm.formats import read_ptb

    out = tmp_path / "wide.txt"
    assert wide_trees.main([str(out), "--n", "60", "--max-children", "12"]) == 0
    trees = read_ptb(out, label_type=str)
    assert len(trees) == 60
    fan = [len(n.children) for t in trees for n in t.postorder()]
    assert max(fan) == 12 and fan.count(1) > 0  # flat nodes and unary links both occur


def test_profile_levels_writes_op_table(tree_file, tmp_path, capsys):
    """The profile tool prints per-op and per-category tables and writes them as JSON."""
    from benchmarks import profile_levels

    out = tmp_path / "prof.json"
    code = profile_levels.main([
        "--trees", str(tree_file), "--cell", "childsum", "--batch-sizes", "4", "--hidden", "8",
        "--emb", "6", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["level_steps"] > 0 and r["compute_calls_per_level_step"] > 0
    assert any(o["op"] == "aten::mm" for o in r["ops"]) and "matmul" in r["categories"]
    assert "per level step" in capsys.readouterr().out
