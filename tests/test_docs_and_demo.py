"""The README's usage example runs as written, and the demo runs end to end (tiny settings)."""

import re
from pathlib import Path

import pytest
import torch

from treelstm import demo

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(name: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), re.S)
    assert blocks, f"no python blocks in {name}"
    return blocks


@pytest.mark.parametrize("name", ["README.md", "docs/trees.md", "docs/cells.md"])
def test_python_blocks_in_the_docs_run(name):
    """Every python block in the README, docs/trees.md and docs/cells.md executes."""
    for code in python_blocks(name):
        exec(compile(code, name, "exec"), {})


def test_readme_loss_skips_unlabelled_nodes():
    """The README's usage block, with trees that have unlabelled nodes (a dependency tree, a
    node added by binarize), runs, and its loss is the loss over the labelled nodes only."""
    (code,) = [b for b in python_blocks("README.md") if "cross_entropy" in b]
    trees = (
        'trees = [Tree.from_ptb("(3 (2 good) (4 (2 not) (1 bad)))"), '
        'Tree.from_parents([2, 0], ["not", "dull"]), '
        'binarize(Tree.from_ptb("(1 (2 good) (2 not) (1 dull))"))]'
    )
    changed, n = re.subn(r"^trees = .*$", trees, code, count=1, flags=re.M)
    assert n == 1
    scope: dict = {}
    exec(compile("from treelstm import binarize\n" + changed, "README.md", "exec"), scope)
    labels = scope["batch"].labels
    keep = labels != -100
    assert (~keep).sum() == 3  # two dependency nodes, one added by binarize
    expected = torch.nn.functional.cross_entropy(scope["logits"][keep], labels[keep])
    assert torch.allclose(scope["loss"], expected)


def test_demo_learns_on_a_small_run(capsys):
    """The demo trains, reports accuracy above the majority rate, and times both strategies."""
    result = demo.main(["--train", "600", "--test", "200", "--epochs", "2", "--max-leaves", "5"])
    out = capsys.readouterr().out
    assert "test root accuracy" in out and "faster" in out
    assert result["root_accuracy"] > result["majority"] + 0.1
    assert result["speedup"] > 1
