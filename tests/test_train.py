"""The training CLI: dry runs, a run whose loss falls, resume (after --epochs, SIGINT, SIGTERM
and SIGKILL) equal to an uninterrupted run, the binary SST protocol, and the clear errors.
(What a run folder guarantees, case by case: tests/test_no_run_lost.py and test_faults.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from treelstm import metrics
from treelstm import train as tr
from treelstm.runtime import CheckpointError, RunDirError, TrainingError, UsageError
from treelstm.train import TrainConfig

from .test_datasets import write_sick, write_sst

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sst_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_sst(d / "sst", n=75)
    return d


SMALL = dict(embeddings="none", emb_dim=16, hidden=16, threads=1, progress=False)
SMALL_ARGS = ["--embeddings", "none", "--emb-dim", "16", "--hidden", "16", "--threads", "1",
              "--no-progress"]  # fmt: skip


def sst_cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(task="sst", data_dir=str(data), out=str(out), **{**SMALL, **kw})


def quiet(*args):
    pass


def same_results(a: dict, b: dict) -> None:
    assert [r["train_loss"] for r in a["epochs"]] == [r["train_loss"] for r in b["epochs"]]
    assert [r["dev"] for r in a["epochs"]] == [r["dev"] for r in b["epochs"]]
    assert a["best_epoch"] == b["best_epoch"] and a["test"] == b["test"]


@pytest.fixture(scope="module")
def reference_run(sst_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run that the resumed runs must reproduce exactly."""
    out = tmp_path_factory.mktemp("ref")
    return tr.train(sst_cfg(sst_dir, out, epochs=3), log=quiet)


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("task", ["sst", "sick"])
def test_dry_run_cli(task, tmp_path, capsys):
    assert (
        tr.main(
            [
                task,
                "--dry-run",
                "--out",
                str(tmp_path),
                "--threads",
                "1",
                "--no-progress",
                "--data-dir",
                str(tmp_path / "nothing-here"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "dry run: generated data" in text and "test (best dev epoch" in text
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["epochs"]) == 2 and set(m["test"]) >= (
        {"accuracy"} if task == "sst" else {"pearson", "spearman", "mse"}
    )
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_two_epochs_on_200_trees_loss_falls(tmp_path):
    data = tmp_path / "data"
    write_sst(data, n=200)
    m = tr.train(sst_cfg(data, tmp_path / "run", epochs=2, workers=1), log=quiet)
    losses = [r["train_loss"] for r in m["epochs"]]
    assert losses[1] < losses[0]
    assert 0 <= m["test"]["accuracy"] <= 1 and m["config"]["cell"] == "nary"
    assert m["wall_time_s"] > 0 and len(m["epochs"]) == 2
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0
    assert state["vocab"]["itos"][0] == "<unk>" and state["task"]["labels"][0] == "very negative"


def test_sick_run_on_generated_layout(tmp_path):
    write_sick(tmp_path / "sick", n=60)
    cfg = TrainConfig(task="sick", data_dir=str(tmp_path), out=str(tmp_path / "run"),
                      epochs=2, **SMALL)  # fmt: skip
    m = tr.train(cfg, log=quiet)
    assert set(m["test"]) >= {"pearson", "spearman", "mse"} and m["test"]["n"] == 60
    assert m["config"]["output_gate"] is False and m["config"]["freeze_embeddings"] is True


def test_resume_after_more_epochs_equals_uninterrupted(sst_dir, tmp_path, reference_run):
    tr.train(sst_cfg(sst_dir, tmp_path, epochs=1), log=quiet)
    resumed = tr.train(sst_cfg(sst_dir, tmp_path, epochs=3, resume=True), log=quiet)
    same_results(resumed, reference_run)


def _start(sst_dir, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "treelstm.train", "sst", "--data-dir", str(sst_dir),
           "--out", str(out), "--epochs", "3", "--step-delay", "0.5", *SMALL_ARGS]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _epoch_done(out: Path) -> bool:
    path = out / "last.pt"
    return path.exists() and torch.load(path, weights_only=True)["epoch"] >= 1


def _signal_in_epoch_two(procs: dict, runs: dict, timeout: float = 90.0) -> None:
    """Send each process its signal 0.4 s after its epoch-1 checkpoint appears."""
    deadline = time.monotonic() + timeout
    seen: dict = {}
    pending = dict(procs)
    while pending:
        if time.monotonic() > deadline:
            pytest.fail("no epoch checkpoint in time")
        for sig, proc in list(pending.items()):
            assert proc.poll() is None, proc.stdout.read().decode()
            if sig not in seen and _epoch_done(runs[sig]):
                seen[sig] = time.monotonic()
            if sig in seen and time.monotonic() - seen[sig] >= 0.4:  # 3 steps of >= 0.5 s
                proc.send_signal(sig)
                del pending[sig]
        time.sleep(0.05)


def test_killed_runs_resume_to_the_same_metrics(sst_dir, tmp_path, reference_run):
    """SIGKILL mid-epoch resumes from the last epoch checkpoint; Ctrl-C (SIGINT) and SIGTERM
    save mid-epoch and exit cleanly (130, 143); all, resumed, end like the uninterrupted run."""
    runs = {sig: tmp_path / sig.name for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)}
    procs = {sig: _start(sst_dir, out) for sig, out in runs.items()}  # side by side: faster
    outputs = {}
    try:
        _signal_in_epoch_two(procs, runs)
        for sig, proc in procs.items():
            outputs[sig] = proc.communicate(timeout=60)[0].decode()
    finally:
        for proc in procs.values():
            proc.kill()
    for sig, out in runs.items():
        assert not (out / "metrics.json").exists()
        state = torch.load(out / "last.pt", weights_only=True)
        if sig != signal.SIGKILL:  # saved mid-epoch, clean exit with a message
            assert procs[sig].returncode == 128 + sig, outputs[sig]
            assert f"interrupted by {sig.name}: saved" in outputs[sig], outputs[sig]
            assert "Traceback" not in outputs[sig]
            assert state["epoch"] == 1 and state["step"] >= 1
        else:
            assert procs[sig].returncode == -signal.SIGKILL
            assert state["epoch"] == 1 and state["step"] == 0
        resumed = tr.train(sst_cfg(sst_dir, out, epochs=3, resume=True), log=quiet)
        same_results(resumed, reference_run)


# ----------------------------------------------------------------------------- errors


def test_corrupt_checkpoint_is_a_clear_error(sst_dir, tmp_path, capsys):
    tr.train(sst_cfg(sst_dir, tmp_path, epochs=1, subset=20), log=quiet)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"last\.pt is damaged or not a checkpoint"):
        tr.train(sst_cfg(sst_dir, tmp_path, epochs=2, subset=20, resume=True), log=quiet)
    args = ["sst", "--data-dir", str(sst_dir), "--out", str(tmp_path), "--resume", "--subset",
            "20", *SMALL_ARGS]  # fmt: skip
    assert tr.main(args) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and err.count("\n") == 1


def test_resume_with_other_settings_is_refused(sst_dir, tmp_path):
    tr.train(sst_cfg(sst_dir, tmp_path, epochs=1, subset=30), log=quiet)
    with pytest.raises(RunDirError, match="hidden: 16 -> 24"):
        tr.train(sst_cfg(sst_dir, tmp_path, subset=30, hidden=24, resume=True), log=quiet)


def test_nan_loss_stops_with_a_clear_message(sst_dir, tmp_path, monkeypatch):
    def nan_loss(self, model, batch):
        return sum(p.sum() for p in model.parameters()) * float("nan")

    monkeypatch.setattr(tr.get_task("sst").__class__, "loss", nan_loss)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, step 1.*no checkpoint"):
        tr.train(sst_cfg(sst_dir, tmp_path, epochs=1, subset=30), log=quiet)


def test_missing_data_names_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TREELSTM_DATA", raising=False)
    assert tr.main(["sst", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "trainDevTestTrees_PTB.zip" in err


def test_missing_vectors_says_how_to_proceed(sst_dir, tmp_path):
    cfg = sst_cfg(sst_dir, tmp_path, embeddings=None)
    with pytest.raises(FileNotFoundError, match="--embeddings none"):
        tr.train(cfg, log=quiet)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(sst_dir, tmp_path):
    with pytest.raises(UsageError, match="no CUDA device"):
        tr.train(sst_cfg(sst_dir, tmp_path, device="cuda"), log=quiet)


# ----------------------------------------------------------------------------- protocol, config


def test_binary_protocol_drops_neutral_and_compares_neg_with_pos():
    # scores:  neg  neu  pos        gold
    logits = torch.tensor([
        [1.0, 9.0, 0.0],  # 0: neutral score highest, neg > pos -> negative: correct
        [0.0, 9.0, 0.5],  # 2: neutral score highest, pos > neg -> positive: correct
        [5.0, 0.0, 1.0],  # 2: negative predicted: wrong
        [0.0, 5.0, 0.0],  # 1: neutral root: skipped
        [0.0, 0.0, 2.0],  # -1: unlabelled: skipped
    ])  # fmt: skip
    labels = torch.tensor([0, 2, 2, 1, -1])
    m = metrics.sentiment_metrics(logits, labels, "binary")
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    fine = metrics.sentiment_metrics(logits, labels, "fine")
    assert fine["n"] == 4 and fine["accuracy"] == pytest.approx(1 / 4)


def test_binary_run_trains_three_classes(tmp_path):
    cfg = TrainConfig(task="sst", mode="binary", dry_run=True, out=str(tmp_path), **SMALL)
    m = tr.train(cfg, log=quiet)
    model_state = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert model_state["classifier.weight"].shape[0] == 3
    assert m["test"]["n"] > 0


def test_task_defaults_follow_the_reference():
    sst = TrainConfig(task="sst").resolved()
    assert (sst.cell, sst.input_at, sst.output_gate, sst.dropout, sst.freeze_embeddings) == (
        "nary",
        "leaves",
        True,
        0.5,
        False,
    )
    sick = TrainConfig(task="sick").resolved()
    assert (sick.cell, sick.output_gate, sick.freeze_embeddings) == ("childsum", False, True)
    assert (sst.lr, sst.emb_lr, sst.weight_decay, sst.batch_size, sst.hidden) == (
        0.05,
        0.1,
        1e-4,
        25,
        150,
    )
    assert (sst.select, sick.select, sick.parses, sick.hidden) == (
        "accuracy",
        "mse",
        "dependency",
        150,
    )
    # the paper's memory per (task, model): Table 1
    sick_c = TrainConfig(task="sick", cell="nary").resolved()  # binarised constituency parses
    assert (sick_c.parses, sick_c.hidden, sick_c.input_at) == ("constituency", 142, "all")
    for task, expect in [("sst", (168, 168, 108, 108)), ("sick", (150, 150, 108, 108))]:
        got = [TrainConfig(task=task, model=m).resolved().hidden
               for m in ("lstm", "bilstm", "lstm2", "bilstm2")]  # fmt: skip
        assert tuple(got) == expect
    assert TrainConfig(task="sick", model="lstm", hidden=7).resolved().hidden == 7  # overridable
    lstm = TrainConfig(task="sst", model="lstm").resolved()
    assert (lstm.cell, lstm.input_at, lstm.output_gate, lstm.freeze_embeddings) == (
        None, None, True, False)  # fmt: skip
    with pytest.raises(UsageError, match="childsum"):
        TrainConfig(task="sick", cell="nary", parses="dependency").resolved()
    with pytest.raises(UsageError, match="--cell, --double-bias: options of a Tree-LSTM cell"):
        TrainConfig(task="sst", model="lstm", cell="nary", double_bias=True).resolved()
    with pytest.raises(UsageError, match="--parses dependency: sst comes with constituency"):
        TrainConfig(task="sst", parses="dependency").resolved()
    with pytest.raises(UsageError, match="--select mse: sst picks the best epoch by one of"):
        TrainConfig(task="sst", select="mse").resolved()


def test_parser_is_built_from_the_config():
    args = tr.build_parser().parse_args(
        ["sick", "--no-output-gate", "--batch-size", "7", "--subset", "9", "--dropout", "0.1"]
    )
    cfg = TrainConfig(**vars(args))
    assert (cfg.task, cfg.output_gate, cfg.batch_size, cfg.subset, cfg.dropout) == (
        "sick",
        False,
        7,
        9,
        0.1,
    )
    assert TrainConfig(**vars(tr.build_parser().parse_args(["sst"]))) == TrainConfig()


def test_correlations():
    x = [1.0, 2.0, 2.0, 3.0, 10.0]
    y = [2.0, 4.0, 4.0, 6.0, 20.0]
    assert metrics.pearson(x, y) == pytest.approx(1.0)
    assert metrics.spearman(x, [0.1, 0.2, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert metrics.ranks(x).tolist() == [1.0, 2.5, 2.5, 4.0, 5.0]
    assert metrics.spearman(x, [5.0, 4.0, 4.0, 3.0, 1.0]) == pytest.approx(-1.0)


REAL = os.environ.get("TREELSTM_DATA")


@pytest.mark.skipif(
    not (REAL and (Path(REAL) / "sst" / "train.txt").exists()), reason="TREELSTM_DATA not set"
)
def test_real_sst_binary_slice_end_to_end(tmp_path):
    lines = []
    cfg = TrainConfig(task="sst", mode="binary", data_dir=REAL, out=str(tmp_path), epochs=1,
                      subset=50, hidden=16, threads=1, progress=False)  # fmt: skip
    m = tr.train(cfg, log=lines.append)
    assert "glove.6B.50d" in lines[0] and "vocabulary types have a vector" in lines[0]
    assert m["test"]["n"] == 1821 and m["best_dev"]["n"] == 872  # neutral roots dropped
    assert 0.3 < m["test"]["accuracy"] < 1


def test_random_vectors_are_drawn_as_emb_init_says():
    from treelstm.encoders import random_vectors

    torch.manual_seed(0)
    uniform = random_vectors(2000, 50)
    normal = random_vectors(2000, 50, "normal")
    assert uniform.abs().max() <= 0.05 and uniform.std() == pytest.approx(0.1 / 12**0.5, rel=0.02)
    assert normal.mean().abs() < 0.01 and normal.std() == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ValueError, match="init 'xavier'"):
        random_vectors(3, 4, "xavier")
    cfg = TrainConfig(**vars(tr.build_parser().parse_args(["sst", "--emb-init", "normal"])))
    for init, std in [("uniform", 0.1 / 12**0.5), ("normal", 1.0)]:  # what the model holds
        for model in ("treelstm", "lstm"):
            cell = "nary" if model == "treelstm" else None
            c = TrainConfig(emb_init=init, model=model, emb_dim=40, cell=cell).resolved()
            emb = tr.build_model(c, 3000, None).encoder.embedding.weight
            assert emb.std().item() == pytest.approx(std, rel=0.03), (init, model)
    assert cfg.emb_init == "normal"
    with pytest.raises(SystemExit):
        tr.build_parser().parse_args(["sst", "--emb-init", "xavier"])
