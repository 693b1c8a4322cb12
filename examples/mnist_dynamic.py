"""Train a net whose structure is drawn on every forward pass on MNIST.

    python examples/mnist_dynamic.py --net depth             # the tutorial's random-depth net
    python examples/mnist_dynamic.py --net branch --faithful # the random-branch net, quirks kept
    python examples/mnist_dynamic.py --net halting           # stop when ||h|| >= 10, per sample
    python examples/mnist_dynamic.py --dry-run               # a few batches; no data needed

Options: --per-sample (one draw per sample instead of per batch), --epochs N, --seed S,
--data-dir D (a folder holding MNIST/raw; else $TREELSTM_DATA; else downloaded to a cache),
--out DIR (run.json, last.pt, metrics.json, curves.png), --resume, --overwrite,
--device auto|cpu|cuda; `--help` lists them all. The defaults are the tutorial's settings.
"""

import sys
from pathlib import Path

try:
    from dynamic.train import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dynamic.train import main
from treelstm.runtime.dist import exit_process

__all__ = ["main"]

if __name__ == "__main__":
    # Under torchrun: skip a teardown that can abort (see treelstm.runtime.dist.exit_process).
    exit_process(main())
