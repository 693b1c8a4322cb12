"""Train and test the dynamic nets on MNIST: `train()` / `evaluate()` / `main(argv=None)`.

Shaped like pytorch/examples' mnist/main.py and the "Dynamic Graphs" tutorial that motivates
this package (SGD lr 0.01 momentum 0.5, batch 128, test batch 1000, normalisation
(0.1307, 0.3081), 8 epochs, seed 666), with the data path done properly: MNIST is read once into
tensors and normalised once, each epoch is one `torch.randperm` from a `torch.Generator`, and a
batch is an index into those tensors (no per-sample PIL transform inside the loop).

All randomness of a run (shuffling, per-batch or per-sample draws) comes from one generator
owned by the loop, so a checkpoint that stores its state resumes to the same final metrics as an
uninterrupted run, even from the middle of an epoch.

Run it as `python examples/mnist_dynamic.py --net depth|branch|halting ...` (or
`python -m dynamic.train`); `--help` lists every option.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import scaleout as distributed
from dynamic.nets import HaltingNet, RandomBranchNet, RandomDepthNet
from scaleout import SINGLE, Dist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the tutorial's (and torchvision examples') constants
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
CHECKPOINT_VERSION = 1


@dataclass
class Config:
    """Hyper-parameters and run options; every field is a command-line flag."""

    net: str = "depth"  # which net: depth | branch | halting
    per_sample: bool = False  # draw the depth/branch per sample (tutorial: once per batch)
    faithful: bool = False  # keep the tutorial's quirks (output ReLU, 300/100-column branches)
    epochs: int = 8  # training epochs (tutorial: 8)
    batch_size: int = 128  # training batch size (tutorial: 128)
    test_batch_size: int = 1000  # test batch size (tutorial: 1000); one draw per test batch
    lr: float = 0.01  # SGD learning rate, tutorial: 0.01
    momentum: float = 0.5  # SGD momentum, tutorial: 0.5
    seed: int = 666  # tutorial: 666; seeds the weights, the shuffling and the draws
    threshold: float = 10.0  # halting: a sample stops once ||h||_2 >= this (tutorial: 10)
    max_steps: int = 3  # halting: a sample never takes more steps than this (as depth 0..3)
    train_size: int = 0  # use only the first N training images (0 = all 60,000)
    test_size: int = 0  # use only the first N test images (0 = all 10,000)
    data_dir: str | None = None  # folder holding MNIST/raw; default: $TREELSTM_DATA, else a cache
    download: bool = True  # download MNIST when it is missing (needs network)
    out: str = "runs/mnist_dynamic"  # checkpoint, metrics.json and curves.png go here
    resume: bool = False  # continue from OUT/checkpoint.pt (mid-epoch too)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    threads: int = 0  # torch.set_num_threads; 0 keeps torch's default
    progress: bool = True  # tqdm progress bar
    livelossplot: bool = False  # also send the curves to livelossplot (when installed)
    dry_run: bool = False  # a couple of batches on a tiny slice; synthetic data if MNIST is absent
    dist_timeout: float = 600.0  # torchrun: seconds a rank waits for a dead peer before failing


# Fields that must match between a checkpoint and the run that resumes it: everything that
# changes the model, the data or the sequence of draws.
_RESUME_MUST_MATCH = (
    "net", "per_sample", "faithful", "batch_size", "test_batch_size", "lr", "momentum", "seed",
    "threshold", "max_steps", "train_size", "test_size", "dry_run",
)  # fmt: skip

NETS: dict[str, type[nn.Module]] = {
    "depth": RandomDepthNet,
    "branch": RandomBranchNet,
    "halting": HaltingNet,
}


class DataError(RuntimeError):
    """MNIST could not be found or downloaded."""


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not fit the run that tries to resume it."""


class UsageError(RuntimeError):
    """An option value that cannot work (no CUDA for --device cuda, a batch size of 0, ...)."""


# ----------------------------------------------------------------------------- command line


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line of a dataclass: the --help text."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (frozen app): flags still work, help is bare
        return {}
    out = {}
    for line in lines:
        code, sep, comment = line.partition("  # ")
        name = code.strip().split(":", 1)[0]
        if sep and name.isidentifier():
            out[name] = comment.strip()
    return out


def build_parser(defaults: Config | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per `Config` field (`--batch-size` for batch_size)."""
    defaults = defaults or Config()
    helps = _field_comments(Config)
    parser = argparse.ArgumentParser(
        prog="mnist_dynamic",
        description="Train a dynamic net (random depth, random branch or halting) on MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        # Annotations are strings here (postponed evaluation): "int", "float", "str | None", ...
        kind = str(f.type).split("|")[0].strip()
        text = helps.get(f.name, "")
        if kind == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        elif f.name == "net":
            parser.add_argument(flag, choices=sorted(NETS), default=default, help=text)
        else:
            typ = {"int": int, "float": float, "str": str}[kind]
            parser.add_argument(flag, type=typ, default=default, help=text)
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """argv (None: sys.argv[1:]) -> Config."""
    return Config(**vars(build_parser().parse_args(argv)))


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (try --device auto)")
    return device


# ----------------------------------------------------------------------------- data


@dataclass
class MnistTensors:
    """MNIST held as tensors, normalised once.

    x_train [N, 784] float32, y_train [N] int64, x_test [M, 784], y_test [M]; `source` says
    where they came from (a path, or the synthetic stand-in).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    source: str

    def to(self, device: torch.device) -> MnistTensors:
        return MnistTensors(
            *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
            source=self.source,
        )


def normalise(images: Tensor) -> Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 784], exactly ToTensor() then Normalize(mean, std)."""
    x = images.reshape(images.shape[0], -1).float().div_(255)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def resolve_data_dir(data_dir: str | None) -> tuple[Path, str]:
    """-> (root that should hold MNIST/raw, where that choice came from)."""
    if data_dir:
        root, origin = Path(data_dir), "--data-dir"
    elif os.environ.get("TREELSTM_DATA"):
        root, origin = Path(os.environ["TREELSTM_DATA"]), "$TREELSTM_DATA"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root, origin = cache / "treelstm", "the default cache"
    root = root.expanduser()
    # Accept a path to MNIST/ or MNIST/raw/ itself: torchvision wants their grandparent.
    if root.name == "raw" and root.parent.name == "MNIST":
        root = root.parent.parent
    elif root.name == "MNIST" and (root / "raw").is_dir():
        root = root.parent
    return root, origin


def _how_to_get(root: Path, origin: str, reason: str) -> str:
    return (
        f"MNIST not found in {root / 'MNIST' / 'raw'} (from {origin}): {reason}.\n"
        "Put the four IDX files there (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed), or point --data-dir / "
        "TREELSTM_DATA at a folder that holds MNIST/raw/, or run once with network access to "
        "download it (--download is on by default)."
    )


def load_mnist(root: Path, origin: str = "--data-dir", download: bool = False) -> MnistTensors:
    """Read MNIST from root/MNIST/raw with torchvision (downloading there if allowed).

    Raises DataError naming the path tried when the files are absent and cannot be fetched.
    """
    from torchvision.datasets import MNIST  # torchvision only when real data is read

    try:
        train, test = MNIST(str(root), train=True), MNIST(str(root), train=False)
    except RuntimeError as missing:
        if not download:
            raise DataError(_how_to_get(root, origin, "download disabled")) from missing
        try:
            train = MNIST(str(root), train=True, download=True)
            test = MNIST(str(root), train=False, download=True)
        except Exception as e:  # offline, read-only folder, partial files, ...
            raise DataError(_how_to_get(root, origin, f"download failed ({e})")) from e
    return MnistTensors(
        normalise(train.data), train.targets.long(), normalise(test.data), test.targets.long(),
        source=str(root / "MNIST" / "raw"),
    )  # fmt: skip


def synthetic_mnist(n_train: int, n_test: int, seed: int = 0) -> MnistTensors:
    """A learnable stand-in with MNIST's shapes: one random 28x28 prototype per class + noise.

    For --dry-run when the real files are absent; normalised exactly like MNIST.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 28, 28, generator=g)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(10, (n,), generator=g)
        img = (protos[y] + 0.35 * torch.randn(n, 28, 28, generator=g)).clamp_(0, 1)
        return normalise((img * 255).round().to(torch.uint8)), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return MnistTensors(x_train, y_train, x_test, y_test, source="synthetic stand-in")


def get_data(cfg: Config, verbose: bool = True) -> MnistTensors:
    """The data a run uses: MNIST (sliced to --train-size/--test-size), or in --dry-run the
    synthetic stand-in when MNIST is absent (never downloading in a dry run)."""
    root, origin = resolve_data_dir(cfg.data_dir)
    try:
        data = load_mnist(root, origin, download=cfg.download and not cfg.dry_run)
    except DataError:
        if not cfg.dry_run:
            raise
        if verbose:
            print(f"dry run: MNIST not found in {root / 'MNIST' / 'raw'}; using synthetic data")
        data = synthetic_mnist(max(cfg.train_size, 256), max(cfg.test_size, 256), cfg.seed)
    if cfg.train_size:
        data.x_train, data.y_train = data.x_train[: cfg.train_size], data.y_train[: cfg.train_size]
    if cfg.test_size:
        data.x_test, data.y_test = data.x_test[: cfg.test_size], data.y_test[: cfg.test_size]
    return data


# ----------------------------------------------------------------------------- model


def build_model(cfg: Config) -> nn.Module:
    """The net named by cfg.net, initialised from torch's global RNG (seeded by the caller)."""
    if cfg.net not in NETS:
        raise ValueError(f"unknown net {cfg.net!r}; choose from {sorted(NETS)}")
    if cfg.net == "halting":
        return NETS["halting"](
            threshold=cfg.threshold, max_steps=cfg.max_steps, faithful=cfg.faithful
        )
    return NETS[cfg.net](faithful=cfg.faithful)


def n_choices(model: nn.Module) -> int:
    """How many depths/branches the net draws from (0 for the halting net, which draws none)."""
    return getattr(model, "n_choices", 0)


def forward(
    model: nn.Module, x: Tensor, generator: torch.Generator | None, per_sample: bool,
    choice: int | None = None,
) -> Tensor:  # fmt: skip
    """One pass: a fixed `choice`, else a draw from `generator` (the halting net draws none)."""
    if n_choices(model) == 0:
        return model(x)
    if choice is None:
        choice = model.draw(x.shape[0], generator, per_sample)
    return model(x, choice)


# ----------------------------------------------------------------------------- train / evaluate


class GracefulInterrupt:
    """Context manager: the first Ctrl-C sets `.requested` and the loop stops at the next batch
    boundary (so the saved state is consistent); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one raises

    def __enter__(self) -> GracefulInterrupt:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        except ValueError:  # not the main thread: Ctrl-C stays a plain KeyboardInterrupt
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class EpochState:
    """Where an epoch stands: enough to continue it exactly from the next batch."""

    perm: Tensor  # [N] the epoch's shuffle, drawn at its start
    next_batch: int = 0  # batches [0, next_batch) are done
    loss_sum: float = 0.0  # sum of per-sample training NLL so far
    seen: int = 0  # samples trained on so far
    seconds: float = 0.0  # training time so far (wall clock)

    def done(self, batch_size: int) -> bool:
        """Whether every batch of the epoch has been trained on."""
        return self.next_batch * batch_size >= self.perm.numel()


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    epoch: int,
    generator: torch.Generator,
    state: EpochState | None = None,
    stop: GracefulInterrupt | None = None,
    d: Dist = SINGLE,
) -> EpochState:
    """Train one epoch (or the rest of one, from `state`) on x [N, 784], y [N].

    The shuffle and every draw come from `generator`. Returns the epoch's state: complete when
    `state.done(cfg.batch_size)`, else stopped early by Ctrl-C (`stop.requested`).

    Distributed (`d.enabled`, `model` wrapped in DDP): every rank draws the same permutation and
    the same depth/branch for the whole global batch of cfg.batch_size, then trains on its slice
    of it. The local loss is (sum of its NLLs) * world / B, so DDP's gradient mean over ranks is
    exactly the gradient of the global batch's mean NLL, even for a short last batch. The
    returned loss_sum / seen are summed over ranks.
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    model.train()
    if state is None:
        state = EpochState(perm=torch.randperm(x.shape[0], generator=generator))
    perm = state.perm.to(x.device)
    n_batches = math.ceil(perm.numel() / cfg.batch_size)
    loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=x.device)
    seen, t0 = state.seen, time.perf_counter()
    bar = tqdm(
        range(state.next_batch, n_batches), desc=f"epoch {epoch}", total=n_batches,
        initial=state.next_batch, leave=False, disable=not (cfg.progress and d.main), unit="batch",
    )  # fmt: skip
    b = state.next_batch
    for b in bar:
        distributed.maybe_fail(d, (epoch - 1) * n_batches + b)
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        n = idx.numel()  # the global batch; the draw is made for all of it, on every rank
        choice = net.draw(n, generator, cfg.per_sample) if n_choices(net) else None
        idx, choice = distributed.shard(idx, d), distributed.shard(choice, d)
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        out = model(xb) if choice is None else model(xb, choice)
        if d.enabled:
            nll = F.nll_loss(out, yb, reduction="sum")
            loss = nll * (d.world / n)
        else:
            loss = F.nll_loss(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: no host sync per step.
        loss_sum += nll.detach().double() if d.enabled else loss.detach().double() * yb.shape[0]
        seen += yb.shape[0]
        if cfg.progress and d.main and b % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if stop is not None and stop.requested:
            b += 1
            break
    else:
        b = n_batches
    bar.close()
    state.next_batch = b
    state.loss_sum, state.seen = float(loss_sum), seen
    if d.enabled:  # each rank started from its own share (rank 0 holds a resumed partial sum)
        total_loss, total_seen = distributed.all_sum([state.loss_sum, seen], d, x.device)
        state.loss_sum, state.seen = total_loss, int(total_seen)
    state.seconds += time.perf_counter() - t0
    return state


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    choice: int | None = None,
    generator: torch.Generator | None = None,
    d: Dist = SINGLE,
) -> dict[str, Any]:
    """Test-set metrics for x [M, 784], y [M], in batches of cfg.test_batch_size.

    `choice` fixes the depth/branch; otherwise each test batch (or sample, with per_sample) gets
    a draw from `generator`, as the tutorial's test did. Returns loss (mean NLL), correct, total,
    accuracy (%), impossible (predictions >= 10, faithful branch net) and, for the halting net,
    a histogram of halting steps.

    Distributed (`d.enabled`; pass the unwrapped model): each rank runs its slice of every test
    batch with the draw made for the whole batch, and the sums are all-reduced, so every rank
    returns the metrics one process would.
    """
    model.eval()
    loss, correct, impossible = 0.0, 0, 0
    steps_hist = torch.zeros(getattr(model, "max_steps", 0) + 1, dtype=torch.long)
    for i in range(0, x.shape[0], cfg.test_batch_size):
        xb, yb = x[i : i + cfg.test_batch_size], y[i : i + cfg.test_batch_size]
        c: int | Tensor | None = choice
        if c is None and n_choices(model) and d.enabled:  # draw for the whole batch
            c = model.draw(xb.shape[0], generator, cfg.per_sample)
        xb, yb, c = distributed.shard(xb, d), distributed.shard(yb, d), distributed.shard(c, d)
        if isinstance(model, HaltingNet):
            out, steps = model(xb, return_steps=True)
            steps_hist += torch.bincount(steps.cpu(), minlength=steps_hist.numel())
        else:
            out = forward(model, xb, generator, cfg.per_sample, c)
        loss += F.nll_loss(out, yb, reduction="sum").item()
        pred = out.argmax(dim=1)
        correct += int((pred == yb).sum())
        impossible += int((pred >= 10).sum())
    if d.enabled:
        sums = distributed.all_sum([loss, correct, impossible, *steps_hist.tolist()], d, x.device)
        loss, correct, impossible = sums[0], int(sums[1]), int(sums[2])
        steps_hist = torch.tensor([int(v) for v in sums[3:]], dtype=torch.long)
    total = x.shape[0]
    result: dict[str, Any] = {
        "loss": loss / max(total, 1),
        "correct": correct,
        "total": total,
        "accuracy": 100.0 * correct / max(total, 1),
        "impossible": impossible,
    }
    if isinstance(model, HaltingNet):
        hist = steps_hist.tolist()
        result["steps_hist"] = hist
        result["mean_steps"] = sum(k * c for k, c in enumerate(hist)) / max(total, 1)
    return result


def report_line(loss: float, correct: int, total: int) -> str:
    """The tutorial's test line: 'Test set: Average loss: 0.1711, Accuracy: 9492/10000 (95%)'."""
    return (
        f"Test set: Average loss: {loss:.4f}, "
        f"Accuracy: {correct}/{total} ({100.0 * correct / max(total, 1):.0f}%)"
    )


def epoch_metrics(
    model: nn.Module, data: MnistTensors, cfg: Config, epoch: int, state: EpochState,
    d: Dist = SINGLE,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate after an epoch: the tutorial's random-draw test, then each depth/branch fixed."""
    # A fresh generator per evaluation: the test draws are the same every epoch and on resume.
    g = torch.Generator().manual_seed(cfg.seed + 1)
    test = evaluate(model, data.x_test, data.y_test, cfg, generator=g, d=d)
    per_choice = {
        str(c): evaluate(model, data.x_test, data.y_test, cfg, choice=c, d=d)["accuracy"]
        for c in range(n_choices(model))
    }
    return {
        "epoch": epoch,
        "train_loss": state.loss_sum / max(state.seen, 1),
        "test_loss": test["loss"],
        "test_correct": test["correct"],
        "test_total": test["total"],
        "test_accuracy": test["accuracy"],
        "per_choice_accuracy": per_choice,
        "impossible": test["impossible"],
        "steps_hist": test.get("steps_hist"),
        "mean_steps": test.get("mean_steps"),
        "epoch_seconds": state.seconds,
    }


def print_epoch(m: dict[str, Any], cfg: Config) -> None:
    """The tutorial's test line, then what the tutorial did not show."""
    print("\n" + report_line(m["test_loss"], m["test_correct"], m["test_total"]))
    print(f"Train epoch {m['epoch']}: loss {m['train_loss']:.4f}, {m['epoch_seconds']:.2f} s")
    if m["per_choice_accuracy"]:
        what = "depth" if cfg.net == "depth" else "branch"
        accs = "  ".join(f"{k}: {v:.2f}%" for k, v in m["per_choice_accuracy"].items())
        print(f"Test accuracy per {what}: {accs}")
    if cfg.net == "branch" and cfg.faithful:
        print(f"Impossible predictions (class >= 10): {m['impossible']}/{m['test_total']}")
    if m["steps_hist"] is not None:
        hist = {k: c for k, c in enumerate(m["steps_hist"]) if c}
        print(f"Halting steps: mean {m['mean_steps']:.2f}, histogram {hist}")
    print()


# ----------------------------------------------------------------------------- files


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save `payload` atomically."""
    distributed.atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True); CheckpointError (not a traceback) when it is unreadable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {e}); delete it or use another "
            "--out to start afresh"
        ) from e
    needed = {"version", "config", "epoch", "model", "optimizer", "generator", "history"}
    if not isinstance(ckpt, dict) or not needed <= ckpt.keys():
        raise CheckpointError(f"checkpoint {path} is not a mnist_dynamic checkpoint")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {ckpt['version']}")
    return ckpt


def write_metrics(out: Path, cfg: Config, history: list[dict[str, Any]], source: str) -> None:
    """metrics.json: the config, the data source and one record per epoch."""
    doc = {"config": asdict(cfg), "data": source, "epochs": history}
    text = json.dumps(doc, indent=2)
    distributed.atomic_write(out / METRICS, lambda f: f.write(text.encode()))


def plot_curves(path: Path, history: list[dict[str, Any]], title: str) -> None:
    """PNG of train/test loss and test accuracy (overall and per depth/branch) per epoch."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    epochs = [m["epoch"] for m in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [m["train_loss"] for m in history], "o-", label="train")
    ax_loss.plot(epochs, [m["test_loss"] for m in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="NLL", title="loss")
    ax_acc.plot(epochs, [m["test_accuracy"] for m in history], "o-", lw=2, label="test (drawn)")
    for c in history[-1]["per_choice_accuracy"] if history else ():
        ax_acc.plot(epochs, [m["per_choice_accuracy"][c] for m in history], ".--", label=c)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    distributed.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


class LiveLoss:
    """Forward each epoch to livelossplot's PlotLosses when it is installed (the tutorial
    used it in a notebook); otherwise say so once and do nothing."""

    def __init__(self, enabled: bool) -> None:
        self.plot = None
        if not enabled:
            return
        try:
            from livelossplot import PlotLosses
        except ImportError:
            print("livelossplot is not installed (pip install livelossplot); curves.png only")
            return
        self.plot = PlotLosses()

    def update(self, m: dict[str, Any]) -> None:
        if self.plot is not None:
            self.plot.update(
                {
                    "log loss": m["train_loss"],
                    "val_log loss": m["test_loss"],
                    "val_accuracy": m["test_accuracy"] / 100,
                }
            )
            self.plot.send()


# ----------------------------------------------------------------------------- the run


def _checkpoint_payload(
    cfg: Config, epoch: int, state: EpochState | None, model: nn.Module,
    optimizer: torch.optim.Optimizer, generator: torch.Generator, history: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Everything `--resume` needs. `epoch` = epochs completed; `state` = a partial next epoch."""
    partial = None
    if state is not None:
        partial = {
            "perm": state.perm, "next_batch": state.next_batch, "loss_sum": state.loss_sum,
            "seen": state.seen, "seconds": state.seconds,
        }  # fmt: skip
    return {
        "version": CHECKPOINT_VERSION,
        "config": asdict(cfg),
        "epoch": epoch,
        "partial": partial,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }


def run(cfg: Config) -> dict[str, Any]:
    """The whole run: data, model, (resume), epochs with test and checkpoints, metrics, plot.

    Returns {"history": [per-epoch metrics], "final": last epoch's metrics or None,
    "out": output folder}. Raises DataError / CheckpointError / UsageError; SystemExit(130) on
    Ctrl-C after saving a checkpoint that --resume continues from.

    Under torchrun (WORLD_SIZE > 1) it runs as one rank of a DistributedDataParallel job; see
    `scaleout`. Only rank 0 prints and writes files; a rank that raises says so on
    stderr and exits non-zero, and torchrun stops the others.
    """
    d = distributed.from_env()
    try:
        result = _run(cfg, d)
    except BaseException as e:
        if d.enabled and not (isinstance(e, SystemExit) and e.code in (0, None)):
            print(f"rank {d.rank} of {d.world} failed: {type(e).__name__}: {e}", file=sys.stderr)
        raise  # without tearing the group down: a peer may be dead; torchrun ends the rest
    distributed.close()
    return result


def _run(cfg: Config, d: Dist) -> dict[str, Any]:
    """`run` for one process (d.world == 1) or for rank d.rank of a torchrun job."""
    say = print if d.main else (lambda *a, **k: None)
    for name in ("epochs", "batch_size", "test_batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.dry_run:
        cfg = dataclasses.replace(
            cfg, epochs=min(cfg.epochs, 2), train_size=cfg.train_size or 256,
            test_size=cfg.test_size or 256,
        )  # fmt: skip
    device = pick_device(cfg.device)
    if d.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)  # one GPU per process
    distributed.init(d, device, cfg.dist_timeout)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT

    data = get_data(cfg, verbose=d.main).to(device)
    ranks = f" ranks={d.world} (batch {cfg.batch_size // d.world} each)" if d.enabled else ""
    say(
        f"net={cfg.net} per_sample={cfg.per_sample} faithful={cfg.faithful} device={device} "
        f"threads={torch.get_num_threads()} data={data.source} "
        f"train={data.x_train.shape[0]} test={data.x_test.shape[0]}{ranks}"
    )
    if cfg.net == "halting" and cfg.per_sample:
        say("note: the halting net draws nothing; each sample always stops on its own")

    torch.manual_seed(cfg.seed)  # the weights
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffles and draws, nothing else
    history: list[dict[str, Any]] = []
    epochs_done, state = 0, None

    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        diff = [k for k in _RESUME_MUST_MATCH if ckpt["config"].get(k) != getattr(cfg, k)]
        if diff:
            was = ", ".join(f"{k}={ckpt['config'].get(k)!r}" for k in diff)
            raise CheckpointError(f"{ckpt_path} was made with {was}; pass the same to --resume")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit this net: {e}") from e
        epochs_done, history = ckpt["epoch"], list(ckpt["history"])
        if ckpt["partial"] is not None:
            state = EpochState(**ckpt["partial"])
            if not d.main:  # the partial sums are counted once, on rank 0
                state.loss_sum, state.seen = 0.0, 0
        where = f" (+{state.next_batch} batches)" if state else ""
        say(f"resumed from {ckpt_path}: {epochs_done} epochs done{where}")
    elif cfg.resume:
        say(f"no checkpoint at {ckpt_path}; starting from scratch")

    # DDP broadcasts rank 0's weights and averages gradients; a pass may skip layers (depth 0,
    # a branch, an early halt), hence find_unused_parameters. Checkpoints hold `model` itself.
    trained: nn.Module = model
    if d.enabled:
        ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    live = LiveLoss(cfg.livelossplot and d.main)
    title = f"{cfg.net} net{' (faithful)' if cfg.faithful else ''} on {data.source}"
    # Distributed: no graceful Ctrl-C (ranks would stop at different batches); Ctrl-C ends the
    # job and --resume continues from the last epoch checkpoint.
    interrupt = contextlib.nullcontext(GracefulInterrupt()) if d.enabled else GracefulInterrupt()
    with interrupt as stop:
        for epoch in range(epochs_done + 1, cfg.epochs + 1):
            state = train(
                trained, optimizer, data.x_train, data.y_train, cfg, epoch, generator, state,
                stop, d,
            )  # fmt: skip
            if not state.done(cfg.batch_size):  # Ctrl-C: save the partial epoch and leave
                save_checkpoint(
                    ckpt_path,
                    _checkpoint_payload(
                        cfg, epoch - 1, state, model, optimizer, generator, history
                    ),
                )
                print(f"\ninterrupted in epoch {epoch}: saved {ckpt_path}; continue with --resume")
                raise SystemExit(130)
            m = epoch_metrics(model, data, cfg, epoch, state, d)
            history.append(m)
            state = None
            if d.main:
                print_epoch(m, cfg)
                live.update(m)
                save_checkpoint(
                    ckpt_path,
                    _checkpoint_payload(cfg, epoch, None, model, optimizer, generator, history),
                )
                write_metrics(out, cfg, history, data.source)
                plot_curves(out / CURVES, history, title)
            if stop.requested:  # Ctrl-C during the test: the epoch checkpoint is saved
                print(f"interrupted after epoch {epoch}: saved {ckpt_path}; continue with --resume")
                raise SystemExit(130)
    if history and epochs_done >= cfg.epochs and d.main:  # resumed a finished run: refresh
        write_metrics(out, cfg, history, data.source)
        plot_curves(out / CURVES, history, title)
    return {"history": history, "final": history[-1] if history else None, "out": str(out)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; see `--help`. Returns what `run` returns."""
    cfg = parse_config(argv)
    try:
        return run(cfg)
    except (DataError, CheckpointError, UsageError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # a second Ctrl-C: the last epoch checkpoint is still on disk
        print(f"\ninterrupted; the last complete checkpoint is in {cfg.out}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
    distributed.exit_process(0)
