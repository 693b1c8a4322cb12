"""Every model kind of the paper's tables through the real command line (issue 14): a sequence
model or a Tree-LSTM trains on dry-run data, resumes, and loads with `treelstm.load_model`,
whose predictions give the run's own test numbers to the last digit; a sequence model predicts
the sentence only and says so; the SICK epoch rule (lowest dev MSE, earliest of equals); and
the constituency rows' cell without W_f x computing the same function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import treelstm
from treelstm import NaryCell, build_schedule, run
from treelstm import predict as cli
from treelstm import train as tr
from treelstm.data import synthetic_sick, synthetic_sst
from treelstm.prediction import SentencePrediction, TreePrediction
from treelstm.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = [("sst", "lstm", []), ("sst", "bilstm", []), ("sst", "lstm2", []),
         ("sst", "bilstm2", []), ("sst", "treelstm", ["--no-forget-input"]),
         ("sst", "treelstm", ["--embeddings", "none", "--mode", "binary"]),
         ("sick", "lstm", []), ("sick", "bilstm", []), ("sick", "lstm2", []),
         ("sick", "bilstm2", []), ("sick", "treelstm", ["--cell", "nary", "--no-forget-input"]),
         ("sick", "treelstm", ["--cell", "childsum"])]  # fmt: skip


def _args(task: str, model: str, extra: list[str], out: Path, epochs: int) -> list[str]:
    return [task, "--model", model, *extra, "--dry-run", "--out", str(out), "--epochs",
            str(epochs), "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(("task", "model", "extra"), KINDS)
def test_every_kind_trains_resumes_and_loads(task, model, extra, tmp_path, capsys):
    assert tr.main(_args(task, model, extra, tmp_path, 1)) == 0
    assert tr.main([*_args(task, model, extra, tmp_path, 2), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["epochs"]) == 2 and m["config"]["model"] == model
    assert m["parameters"]["composition"] > 0 and m["select"]["metric"] == m["config"]["select"]
    loaded = treelstm.load_model(tmp_path)
    cfg = loaded.config
    assert loaded.per_node == (model == "treelstm") and cfg.model == model
    # the generated test split with its 0..4 labels (binary: predict() drops neutral roots and
    # binarises as the trainer's data did): the run's own test numbers, to the last digit
    test = get_task(task, "fine", model, cfg.parses).synthetic().test
    predictions = loaded.predict(test)
    assert loaded.gold_metrics(predictions) == {k: m["test"][k] for k in loaded.gold_metrics(
        predictions)}  # fmt: skip
    kind = TreePrediction if model == "treelstm" and task == "sst" else None
    if task == "sst":
        assert all(isinstance(p, kind or SentencePrediction) for p in predictions)


def test_sick_constituency_reads_cparents_and_the_memory_is_the_papers(tmp_path):
    cfg = tr.TrainConfig(task="sick", cell="nary").resolved()
    assert (cfg.parses, cfg.hidden) == ("constituency", 142)
    pairs = get_task("sick", parses="constituency").synthetic().train
    assert all(len(n.children) in (0, 2) for p in pairs for t in (p.a, p.b) for n in t.preorder())
    words = [n.word for n in pairs[0].a.preorder() if n.children]
    assert words == [None] * len(words)  # words at the leaves only


def test_a_sequence_model_predicts_the_sentence_only_and_says_so(tmp_path, capsys):
    assert tr.main(_args("sst", "bilstm", [], tmp_path, 1)) == 0
    model = treelstm.load_model(tmp_path)
    [p] = model.predict(["(3 (2 a) (3 (3 gripping) (2 film)))"])
    assert isinstance(p, SentencePrediction) and p.root_label in model.labels
    assert p.probs.shape == (5,) and abs(float(p.probs.sum()) - 1) < 1e-6
    for call in (p.labels, p.to_tree):
        with pytest.raises(ValueError, match=r"bilstm, a sequence model\) predicts the sentence"):
            call()
    doc = p.to_dict()
    assert "nodes" not in doc and doc["sentence"] == "a gripping film" and doc["gold"] == 3
    with pytest.raises(ValueError, match="draw: a SentencePrediction has no class per node"):
        treelstm.draw.scene([p])
    capsys.readouterr()
    tree = "(3 (2 a) (3 (3 gripping) (2 film)))"
    svg = str(tmp_path / "x.svg")
    for flags, says in [(["--format", "ptb"], "--format ptb: this model (bilstm"),
                        (["--draw", svg], "--draw: this model (bilstm")]:  # fmt: skip
        assert cli.main([str(tmp_path), tree, *flags]) == 1
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert cli.main([str(tmp_path), tree, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["order"].startswith("the sentence only") and "nodes" not in out["predictions"][0]


def test_tree_options_are_refused_for_a_sequence_model(tmp_path, capsys):
    assert tr.main(_args("sick", "lstm", ["--cell", "childsum"], tmp_path, 1)) == 1
    assert "--cell: options of a Tree-LSTM cell; --model lstm" in capsys.readouterr().err


# ----------------------------------------------------------------------------- epoch rule


def test_the_sick_epoch_is_the_lowest_dev_mse_earliest_of_equals():
    task = get_task("sick")
    assert task.primary == "mse" and task.worst("mse") == float("inf")
    assert task.better("mse", 0.25, 0.26) and not task.better("mse", 0.26, 0.26)  # ties: earlier
    assert task.better("pearson", 0.87, 0.86) and not task.better("pearson", 0.86, 0.86)
    assert get_task("sst").primary == "accuracy"


@pytest.mark.parametrize("select", [None, "pearson"])
def test_the_trainer_keeps_the_epoch_its_rule_picks(select, tmp_path):
    cfg = tr.TrainConfig(task="sick", dry_run=True, epochs=4, out=str(tmp_path), progress=False,
                         threads=1, test_every_epoch=True, select=select)  # fmt: skip
    m = tr.train(cfg, log=lambda *a: None)
    dev = [r["dev"]["mse" if select is None else "pearson"] for r in m["epochs"]]
    want = dev.index(min(dev) if select is None else max(dev)) + 1  # index(): the earliest
    assert m["best_epoch"] == want and m["select"]["metric"] == (select or "mse")
    # --test-every-epoch records every epoch's test; the final test is the picked epoch's
    assert m["epochs"][want - 1]["test"] == m["test"]
    assert all("test" in r for r in m["epochs"])


# ----------------------------------------------------------------------- cell without W_f x


@pytest.mark.parametrize("input_at", ["leaves", "all"])
def test_no_forget_input_is_the_same_function_where_only_leaves_have_words(input_at):
    """W_f x reaches only nodes without children when words sit at the leaves: dropping it
    (what the table's constituency rows do) changes no value and no gradient."""
    torch.manual_seed(0)
    trees = synthetic_sst(6, seed=4)
    vocab = {w: i for i, w in enumerate(sorted({w for t in trees for w in t.words() if w}))}
    s = build_schedule(trees, vocab, n_ary=2)
    x = torch.randn(len(vocab) + 1, 5, dtype=torch.float64)
    x = x[torch.where(s.tokens >= 0, s.tokens, len(vocab))]
    x[s.tokens < 0] = 0  # internal nodes have no word: a zero input row
    # float64 per tensor (the float64 fixture is module-scoped: it would reach later tests)
    a = NaryCell(5, 4, input_at=input_at).double()
    b = NaryCell(5, 4, input_at=input_at, forget_input=False).double()
    with torch.no_grad():
        b.W.weight.copy_(a.W.weight[:12])
        b.W.bias.copy_(a.W.bias[:12])
        b.b_f.copy_(a.W.bias[12:])
        b.U.weight.copy_(a.U.weight)
    outs = []
    for cell in (a, b):
        h, c = run(cell, s, x, "level")
        (h.sum() + c.pow(2).sum()).backward()
        outs.append((h, c))
    assert torch.allclose(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1])
    assert torch.allclose(a.W.weight.grad[:12], b.W.weight.grad)
    assert torch.allclose(a.W.bias.grad[12:], b.b_f.grad) and torch.allclose(
        a.U.weight.grad, b.U.weight.grad
    )
    assert a.W.weight.grad[12:].abs().max() == 0  # the dropped weights never learn anything


def test_parameter_counts_of_the_table_rows():
    """|θ| of the rows with the paper's input sizes (docs/reproduction.md, README table)."""

    def theta(task, emb, **kw):
        cfg = tr.TrainConfig(task=task, **kw).resolved()
        return tr.parameter_counts(tr.build_model(cfg, 3, torch.zeros(3, emb)))["composition"]

    nary = dict(cell="nary", forget_input=False)
    assert (
        theta("sick", 300, **nary) == 246_938 and theta("sick", 300, **nary, hidden=127) == 205_613
    )
    assert theta("sick", 300, cell="nary") == 289_538  # with the dead W_f: +41% on 205,190
    assert theta("sst", 50, **nary) == 248_100 and theta("sst", 300, **nary) == 360_600
    assert theta("sst", 300, **nary, hidden=138) == 315_192
    assert theta("sst", 50, model="lstm") == 147_840 and theta("sst", 50, model="lstm2") == 163_296
    assert theta("sick", 300, model="bilstm2") == 203_472 and theta("sick", 300) == 202_950


def test_generated_constituency_pairs_have_the_dependency_pairs_words_and_scores():
    """The constituency option brackets the same sentences (its own random stream, so the
    dependency pairs are what they were before it existed)."""
    dep = synthetic_sick(5, seed=1)
    con = synthetic_sick(5, seed=1, parses="constituency")
    assert [p.score for p in dep] == [p.score for p in con]

    # the same words (a random dependency tree is rarely projective, so its reading order is
    # not the sentence's; real SICK parses give the *.toks lines back: test_sequence)
    def words(pairs):
        return [sorted(n.word for n in p.a.preorder() if n.word) for p in pairs]

    assert words(con) == words(dep)


def _write_sick_constituency(folder: Path, n: int) -> None:
    """SICK-layout split folders with toks and cparents (from generated constituency pairs)."""
    from treelstm.data import SICK_SPLITS
    from treelstm.formats import to_cparents

    for k, split in enumerate(SICK_SPLITS):
        d = folder / split
        d.mkdir(parents=True)
        pairs = synthetic_sick(n, seed=k, parses="constituency")
        for side in "ab":
            rows = [to_cparents(getattr(p, side)) for p in pairs]
            (d / f"{side}.toks").write_text("".join(" ".join(w) + "\n" for _, w, _ in rows))
            (d / f"{side}.cparents").write_text(
                "".join(" ".join(map(str, par)) + "\n" for par, _, _ in rows)
            )
        (d / "sim.txt").write_text("".join(f"{p.score}\n" for p in pairs))
        (d / "id.txt").write_text("".join(f"{p.id}\n" for p in pairs))


def test_a_sick_constituency_run_reads_and_predicts_cparents_files(tmp_path, capsys):
    """Training reads *.cparents (no *.parents in the folder), and predict --file on the test
    folder reads them too and scores the run's own test numbers."""
    _write_sick_constituency(tmp_path / "sick", n=20)
    run = tmp_path / "run"
    args = ["sick", "--cell", "nary", "--data-dir", str(tmp_path), "--out", str(run),
            "--embeddings", "none", "--emb-dim", "8", "--hidden", "8", "--epochs", "1",
            "--threads", "1", "--no-progress"]  # fmt: skip
    assert tr.main(args) == 0
    assert "(constituency parses)" in capsys.readouterr().out
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert cli.main([str(run), "--file", str(tmp_path / "sick" / "test"), "--format", "json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert scores == {k: test[k] for k in scores}
    assert cli.main([str(run), "--file", str(tmp_path / "nowhere")]) == 1
    assert "no a.toks, a.cparents, b.toks, b.cparents: this SICK model (constituency parses)" in (
        capsys.readouterr().err)  # fmt: skip
