"""benchmarks.sick_seeds on generated data: every epoch tested, the trainer's own result kept,
and the rule table written."""

import json

import torch

from benchmarks import sick_seeds
from treelstm.cells import ChildSumCell


def test_per_epoch_test_metrics_and_rule_table(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--dry-run", "--epochs", "2", "--out", str(out)]
    assert sick_seeds.main(["run", "--seeds", "0-1", *args]) == 0
    assert sick_seeds.main(["run", "--seeds", "0-1", "--init", "reference", *args]) == 0  # done
    doc = json.loads((out / "seed1" / "epochs.json").read_text())
    metrics = json.loads((out / "seed1" / "metrics.json").read_text())
    assert len(doc["epochs"]) == 2
    assert doc["epochs"][metrics["best_epoch"] - 1]["test"] == metrics["test"]
    assert sick_seeds.main(["table", "--out", str(out), "--json", str(tmp_path / "t.json")]) == 0
    printed = capsys.readouterr().out
    assert "| dev MSE | 2 |" in printed and "Paired with the trainer's rule" in printed
    assert len(json.loads((tmp_path / "t.json").read_text())["rules"]["dev MSE @ 2"]) == 2


def test_seed_ranges_and_the_reference_initialisation():
    assert sick_seeds.parse_seeds("0-2,7") == [0, 1, 2, 7]
    torch.manual_seed(0)
    cell = ChildSumCell(300, 150, output_gate=False)
    sick_seeds._torch7_linear_init(cell)
    # Torch7's Linear: uniform(+-1/sqrt(fan in)): 1/sqrt(300) on x, 1/sqrt(150) on h
    for p, bound in [
        (cell.W.weight, 300**-0.5),
        (cell.W.bias, 300**-0.5),
        (cell.U.weight, 150**-0.5),
    ]:
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
