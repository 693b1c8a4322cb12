"""The README's usage example runs as written, and the demo runs end to end (tiny settings)."""

import re
from pathlib import Path

from treelstm import demo

ROOT = Path(__file__).resolve().parents[1]


def test_readme_usage_example_runs():
    """Every python block in the README executes without error."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_demo_learns_on_a_small_run(capsys):
    """The demo trains, reports accuracy above the majority rate, and times both strategies."""
    result = demo.main(["--train", "600", "--test", "200", "--epochs", "2", "--max-leaves", "5"])
    out = capsys.readouterr().out
    assert "test root accuracy" in out and "faster" in out
    assert result["root_accuracy"] > result["majority"] + 0.1
    assert result["speedup"] > 1
