"""Using a trained run (issue 13): a model trained for one epoch, loaded in a fresh process
without its data folder, predicts what the training process predicted (the dev numbers to the
last digit, every node's class); the library API; ``--format ptb`` read back by read_ptb; and
the one-line file:line errors of malformed input and unusable checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import treelstm
from treelstm import Tree, binarize, read_ptb
from treelstm import predict as cli
from treelstm import train as tr
from treelstm.inference import read_pairs
from treelstm.runtime import CheckpointError, save_checkpoint
from treelstm.schedule import build_schedule
from treelstm.train import TrainConfig

from .test_datasets import write_sick, write_sst

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
SMALL = dict(embeddings="none", emb_dim=16, hidden=16, threads=1, progress=False, epochs=1)

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*args):
    pass


def _train(tmp: Path, task: str, mode: str = "fine", **kw) -> tuple[Path, Path, TrainConfig]:
    """One epoch on generated files in tmp/data; returns (run folder, data folder, config)."""
    data = tmp / "data"
    if task == "sst":
        write_sst(data / "sst", n=40)
    else:
        write_sick(data / "sick", n=16)
    cfg = TrainConfig(
        task=task, mode=mode, data_dir=str(data), out=str(tmp / "run"), subset=30, **{**SMALL, **kw}
    )
    tr.train(cfg, log=quiet)
    return tmp / "run", data, cfg


def _in_training_process(cfg: TrainConfig, run: Path) -> tuple[dict, list[list[int]]]:
    """What the training code itself gives for the dev split with best.pt's weights: its
    metrics (train.evaluate) and, for SST, every node's argmax in each tree's post-order."""
    cfg = cfg.resolved()
    data = tr.load_data(cfg)
    model = tr.build_model(cfg, len(data.vocab), data.vectors)
    model.load_state_dict(torch.load(run / "best.pt", weights_only=True)["model"])
    metrics = tr.evaluate(cfg, model, data.dev, data.vocab, torch.device("cpu"))
    if cfg.task != "sst":
        return metrics, []
    model.eval()
    with torch.no_grad():
        batch = build_schedule(data.dev, data.vocab, n_ary=2)
        classes = [part.argmax(1).tolist() for part in batch.split(model(batch))]
    return metrics, classes


def _fresh_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """python -m treelstm.predict in a new interpreter, with no TREELSTM_DATA, on one thread
    as the training ran (float sums in another order would differ in the last bits)."""
    env = {k: v for k, v in os.environ.items() if k != "TREELSTM_DATA"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "treelstm.predict", *args, "--threads", "1"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------- the whole trip


@pytest.mark.parametrize("mode", ["fine", "binary"])
def test_sst_fresh_process_without_data_predicts_what_training_did(tmp_path, mode):
    run, data, cfg = _train(tmp_path, "sst", mode, lower=True)
    best = torch.load(run / "best.pt", weights_only=True)
    metrics, classes = _in_training_process(cfg, run)
    assert metrics == best["dev"]  # the trainer's own code, re-run: the reference numbers
    dev = tmp_path / "dev.txt"
    shutil.copy(data / "sst" / "dev.txt", dev)
    shutil.rmtree(data)  # nothing of the data is left but the copied input
    r = _fresh_process(
        [str(run), "--file", str(dev), "--format", "json", "--output", str(tmp_path / "p.json")],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["scores"] == best["dev"]  # accuracy and node accuracy, to the last digit
    preds = doc["predictions"]
    kept = [p for p in preds if mode == "fine" or p["gold"] != 2]  # binary: as load_sst keeps
    assert len(kept) == len(classes)
    for p, want in zip(kept, classes, strict=True):
        got = [n["class"] for n in p["nodes"]]
        if mode == "fine":
            assert got == want
        else:  # argmax inside; the negative-vs-positive rule at the root
            assert got[:-1] == want[:-1] and got[-1] in (0, 2)
    gold = [p["gold"] if mode == "fine" else 0 if p["gold"] < 2 else 2 for p in kept]
    right = sum(p["class"] == g for p, g in zip(kept, gold, strict=True))
    assert right / len(kept) == best["dev"]["accuracy"]
    assert "against the input's labels: accuracy" in r.stderr and "Traceback" not in r.stderr


def test_sick_fresh_process_without_data_predicts_what_training_did(tmp_path):
    run, data, cfg = _train(tmp_path, "sick")
    best = torch.load(run / "best.pt", weights_only=True)
    metrics, _ = _in_training_process(cfg, run)
    assert metrics["pearson"] == best["dev"]["pearson"]
    pairs = tmp_path / "pairs"
    shutil.copytree(data / "sick" / "dev", pairs)
    shutil.rmtree(data)
    r = _fresh_process([str(run / "best.pt"), "--file", str(pairs), "--format", "json"], tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("pearson", "spearman", "mse", "n"):
        assert doc["scores"][key] == best["dev"][key], key
    assert all(1 <= p["score"] <= 5 and len(p["probs"]) == 5 for p in doc["predictions"])


# ------------------------------------------------------------------------- the library


@pytest.fixture(scope="module")
def sst_run(tmp_path_factory):
    run, _, _ = _train(tmp_path_factory.mktemp("sst"), "sst", lower=True)
    return run


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    run, _, _ = _train(tmp_path_factory.mktemp("binary"), "sst", "binary")
    return run


def test_load_model_gives_an_eval_model_predicting_every_node(sst_run):
    model = treelstm.load_model(sst_run)
    assert not model.training and model.labels[0] == "very negative"
    trees = [Tree.from_ptb("(3 (2 a) (3 (3 good) (2 film)))"), "(1 (2 not) (3 fun))"]
    rng = torch.get_rng_state()
    preds = model.predict(trees)
    assert torch.equal(rng, torch.get_rng_state())  # predicting (and loading) draws nothing
    for p, t in zip(preds, [trees[0], Tree.from_ptb(trees[1])], strict=True):
        assert p.tree == t and p.classes.shape == (t.size,) and p.probs.shape == (t.size, 5)
        assert torch.allclose(p.probs.sum(1), torch.ones(t.size))
        assert torch.equal(p.classes, p.logits.argmax(1)) and p.root == int(p.classes[-1])
        assert p.root_label == model.labels[p.root] and len(p.labels()) == t.size
    # one at a time or together: the same classes
    alone = model.predict([trees[0]], batch_size=1)[0]
    assert torch.equal(alone.classes, preds[0].classes)


def test_the_readme_block_runs(sst_run):
    """The README's load_model block (a ```py fence: it needs a trained run, which the
    README's own python-block test does not have) runs against this one."""
    text = (ROOT / "README.md").read_text()
    [code] = [b for b in re.findall(r"```py\n(.*?)```", text, re.S) if "load_model" in b]
    scope: dict = {}
    exec(compile(code.replace("runs/sst-fine", str(sst_run)), "README.md", "exec"), scope)
    p = scope["p"]
    assert p.root_label in NAMES and p.probs.shape == (5, 5) and len(p.labels()) == 5


def test_the_checkpoint_carries_the_lookup_rules(sst_run):
    """The vocabulary's rules came with the run: lowercasing, PTB escapes, <unk>."""
    model = treelstm.load_model(sst_run / "best.pt")
    assert model.vocab.lower and "-LRB-" in model.vocab and model.vocab("-LRB-") != 0
    assert model.vocab("(") == model.vocab("-LRB-")  # stored plain, looked up escaped
    upper, lower = model.predict(["(3 (2 GOOD) (2 FILM))", "(3 (2 good) (2 film))"])
    assert torch.equal(upper.logits, lower.logits)
    assert model.unknown_words(["(2 (2 zzyzx) (2 good))"]) == ["zzyzx"]
    [unk] = model.predict(["(2 zzyzx)"])
    [unk2] = model.predict(["(2 <unk>)"])
    assert torch.equal(unk.logits, unk2.logits)


def test_binary_root_rule(binary_run):
    model = treelstm.load_model(binary_run)
    assert model.labels == ("negative", "neutral", "positive")
    trees = [t for t in read_ptb(binary_run.parent / "data" / "sst" / "test.txt")]
    for p in model.predict(trees):
        root = p.logits[-1]
        assert p.root == (0 if root[0] > root[2] else 2)  # never neutral
        assert torch.equal(p.classes[:-1], p.logits[:-1].argmax(1))


def test_to_tree_reads_back_with_the_predicted_labels(sst_run, tmp_path, capsys):
    trees = read_ptb(sst_run.parent / "data" / "sst" / "test.txt")
    assert (
        cli.main(
            [
                str(sst_run),
                "--file",
                str(sst_run.parent / "data" / "sst" / "test.txt"),
                "--format",
                "ptb",
                "--output",
                str(tmp_path / "p.txt"),
            ]
        )
        == 0
    )
    back = read_ptb(tmp_path / "p.txt")
    preds = treelstm.load_model(sst_run).predict(trees)
    assert len(back) == len(trees)
    for t, b, p in zip(trees, back, preds, strict=True):
        assert b.words() == t.words() and b.size == t.size and b.height == t.height
        assert [n.label for n in b.postorder()] == p.classes.tolist()
    # predicting the written trees again gives the same (labels are never read to predict)
    assert (
        cli.main([str(sst_run), "--file", str(tmp_path / "p.txt"), "--format", "ptb", "--quiet"])
        == 0
    )
    assert capsys.readouterr().out == (tmp_path / "p.txt").read_text()


def test_text_and_json_outputs(sst_run, capsys):
    assert cli.main([str(sst_run), "(3 (2 a) (3 (3 good) (2 -LRB-)))", "(1 (2 not) (3 fun))"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("argument 1\t") and lines[0].endswith("good (")
    assert "predicted 2 trees (8 nodes)" in err and "against the input's labels" in err
    assert (
        cli.main(
            [
                str(sst_run),
                "(S (NP (DT a) (NN film)) (VP (VBZ works)))",
                "--format",
                "json",
                "--quiet",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["scores"] is None  # Penn Treebank labels are not gold sentiment labels
    [p] = doc["predictions"]
    assert [n["word"] for n in p["nodes"]] == ["a", "film", None, "works", None, None]
    assert [n["parent"] for n in p["nodes"]] == [2, 2, 5, 4, 5, -1]
    assert p["nodes"][-1]["gold"] == "S" and p["sentence"] == "a film works"


def test_binarize_option(sst_run, capsys):
    wide = "(3 (2 a) (3 good) (2 film))"
    assert cli.main([str(sst_run), wide]) == 1
    assert "argument 1: a node with 3 children" in capsys.readouterr().err
    assert cli.main([str(sst_run), wide, "--binarize", "--format", "ptb", "--quiet"]) == 0
    back = Tree.from_ptb(capsys.readouterr().out)
    assert back.words() == ["a", "good", "film"] and back.size == binarize(Tree.from_ptb(wide)).size


# ------------------------------------------------------------------------- errors


def _one_line_error(capsys, argv, *needles) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_malformed_trees_name_file_and_line(sst_run, tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text("(3 (2 a) (2 b))\n\n(3 (2 a) (2 b)\n")
    _one_line_error(capsys, [str(sst_run), "--file", str(f)], f"{f}:3: unbalanced brackets")
    f.write_text("(3 (2 a) (2 b))\n(3 (2 a) (2 b c))\n")
    _one_line_error(capsys, [str(sst_run), "--file", str(f)], f"{f}:2:", "two words")
    f.write_bytes(b"(3 (2 a) (2 b))\n(2 \xff)\n")
    _one_line_error(capsys, [str(sst_run), "--file", str(f)], f"{f}:2: not valid UTF-8")
    _one_line_error(capsys, [str(sst_run), "(2 a)", "(2 a"], "argument 2: unbalanced brackets")
    _one_line_error(capsys, [str(sst_run), "--file", str(tmp_path / "nope.txt")], "nope.txt")


def test_malformed_pairs_name_file_and_line(tmp_path, capsys):
    write_sick(tmp_path / "p", n=4)
    d = tmp_path / "p" / "dev"
    files = [str(d / n) for n in ("a.toks", "a.parents", "b.toks", "b.parents")]
    pairs, wheres = read_pairs(*files)
    assert len(pairs) == 4 and wheres[1] == f"{d / 'a.parents'}:2"
    lines = (d / "b.parents").read_text().splitlines()
    n = len((d / "b.toks").read_text().splitlines()[2].split(" "))
    lines[2] = " ".join(["0"] + ["x"] * (n - 1))
    (d / "b.parents").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"b\.parents:3: entry 2 \('x'\)"):
        read_pairs(*files)
    lines[2] = " ".join(["0"] * n)
    (d / "b.parents").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"b\.parents:3: .*root"):
        read_pairs(*files)
    (d / "b.parents").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match=r"b\.parents:3: 2 lines but .*a\.parents has 4"):
        read_pairs(*files)


def test_wrong_uses_are_one_line(sst_run, tmp_path, capsys):
    _one_line_error(capsys, [str(sst_run)], "give the trees")
    _one_line_error(capsys, [str(sst_run), "(2 a)", "--pairs", "a", "b", "c", "d"], "--pairs")
    _one_line_error(capsys, [str(sst_run), "(2 a)", "--draw", str(tmp_path / "x.pdf")], ".svg")
    _one_line_error(capsys, [str(tmp_path / "absent")], "no such run folder or checkpoint")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, [str(tmp_path / "empty"), "(2 a)"], "no best.pt")


def test_a_sick_model_refuses_trees_ptb_and_drawings(tmp_path, capsys):
    run, data, _ = _train(tmp_path, "sick")
    folder = str(data / "sick" / "dev")
    _one_line_error(capsys, [str(run), "(2 a)"], "takes sentence pairs")
    _one_line_error(capsys, [str(run), "--file", folder, "--format", "ptb"], "one score per pair")
    _one_line_error(capsys, [str(run), "--file", folder, "--draw", "x.svg"], "no class per node")
    _one_line_error(capsys, [str(run), "--file", str(tmp_path)], "no a.toks")
    assert cli.main([str(run), "--file", folder, "--quiet"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16


def _resave(src: Path, dst: Path, **changes) -> None:
    doc = torch.load(src, weights_only=True)
    payload = {
        k: v
        for k, v in doc.items()
        if k not in ("format", "version", "trainer", "role", "run_id", "sha256")
    }
    for k, v in changes.items():
        if v is None:
            payload.pop(k)
        else:
            payload[k] = v
    save_checkpoint(dst, payload, trainer=doc["trainer"], role=doc["role"], run_id=doc["run_id"])


def test_old_foreign_and_newer_checkpoints_are_clear_errors(sst_run, tmp_path):
    best = sst_run / "best.pt"
    old = tmp_path / "old.pt"
    _resave(best, old, vocab=None, task=None)  # a version-2 file from before issue 13
    with pytest.raises(CheckpointError, match="older treelstm, before checkpoints carried the voc"):
        treelstm.load_model(old)
    torch.save({"format": "treelstm-train-1", "config": {}, "model": {}}, old)  # version 1
    with pytest.raises(CheckpointError, match="older treelstm .*nor predict with it"):
        treelstm.load_model(old)
    cfg = torch.load(best, weights_only=True)["config"]
    _resave(best, old, config={**cfg, "a_setting_from_the_future": 1})
    with pytest.raises(CheckpointError, match="newer treelstm .*a_setting_from_the_future"):
        treelstm.load_model(old)
    doc = torch.load(best, weights_only=True)
    _resave(best, old, task={**doc["task"], "labels": ["bad", "good"]})
    with pytest.raises(CheckpointError, match="not the same task"):
        treelstm.load_model(old)
    _resave(best, old, vocab={**doc["vocab"], "escapes": "something-new"})
    with pytest.raises(CheckpointError, match="lookup rules"):
        treelstm.load_model(old)
    _resave(best, old, vocab={**doc["vocab"], "itos": doc["vocab"]["itos"][:-1]})
    with pytest.raises(CheckpointError, match="damaged: .* vocabulary words but embedding"):
        treelstm.load_model(old)
    save_checkpoint(
        old, {"config": {}, "model": {}}, trainer="dynamic.train", role="last", run_id="r"
    )
    with pytest.raises(CheckpointError, match="written by dynamic.train, not by treelstm.train"):
        treelstm.load_model(old)
    old.write_bytes(best.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="damaged"):
        treelstm.load_model(old)


def test_last_pt_loads_the_latest_weights(sst_run):
    model = treelstm.load_model(sst_run / "last.pt")
    assert model.source["role"] == "last" and model.source["epoch"] == 1
    [p] = model.predict(["(3 (2 a) (3 good))"])
    assert p.probs.shape == (3, 5)


def test_the_package_does_not_import_the_trainer_until_load_model_is_used():
    """`python -m treelstm.train` must not find itself imported by `import treelstm` (runpy
    warns on stderr, which breaks the one-line errors), so load_model is imported lazily."""
    code = (
        "import sys, treelstm; assert 'treelstm.train' not in sys.modules; "
        "treelstm.load_model; assert 'treelstm.train' in sys.modules"
    )
    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
