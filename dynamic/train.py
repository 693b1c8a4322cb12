"""Train and test the dynamic nets on MNIST: `train_epoch` / `evaluate` / `run` / `main`.

Shaped like pytorch/examples' mnist/main.py and the "Dynamic Graphs" tutorial that motivates
this package (SGD lr 0.01 momentum 0.5, batch 128, test batch 1000, normalisation
(0.1307, 0.3081), 8 epochs, seed 666), with the data path done properly: MNIST is read once into
tensors and normalised once (`dynamic.data`), each epoch is one `torch.randperm` from a
`torch.Generator`, and a batch is an index into those tensors.

All randomness of a run (shuffling, per-batch or per-sample draws) comes from one generator
owned by the loop, so a checkpoint that stores its state resumes to the same final metrics as an
uninterrupted run, even from the middle of an epoch. Everything around the loop (the run folder,
checkpoints, SIGINT/SIGTERM, non-finite and diverging losses, torchrun) is `treelstm.runtime`,
shared with `treelstm.train`.

Run it as `python examples/mnist_dynamic.py --net depth|branch|halting ...` (or
`python -m dynamic.train`); `--help` lists every option.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dynamic.data import (  # noqa: F401  (MNIST_MEAN .. resolve_data_dir: the data API, here too)
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    MnistTensors,
    get_data,
    load_mnist,
    resolve_data_dir,
)
from dynamic.nets import HaltingNet, RandomBranchNet, RandomDepthNet
from treelstm import runtime
from treelstm.runtime import (
    CheckpointError,
    RunOptions,
    Session,
    StopSignals,
    TrainingGuard,
    cli_main,
    curves_figure,
    dist,
    faults,
    require_positive,
)
from treelstm.runtime.dist import SINGLE, Dist

__all__ = ["Config", "EpochState", "build_parser", "evaluate", "main", "run", "train_epoch"]

TRAINER = "dynamic.train"
CHECKPOINT, METRICS, CURVES = "last.pt", "metrics.json", "curves.png"
ARTIFACTS = (METRICS, CURVES, CHECKPOINT)  # what --overwrite deletes, in this order

NETS: dict[str, type[nn.Module]] = {
    "depth": RandomDepthNet,
    "branch": RandomBranchNet,
    "halting": HaltingNet,
}


@dataclass
class Config(RunOptions):
    """Hyper-parameters and run options; every field is a command-line flag."""

    out: str = "runs/mnist_dynamic"  # run folder: run.json, last.pt, metrics.json, curves.png
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
    livelossplot: bool = False  # also send the curves to livelossplot (when installed)
    diverge: float = 10.0  # stop when an epoch's mean loss exceeds this x the first step's; 0: off
    dry_run: bool = False  # a couple of batches on a tiny slice; synthetic data if MNIST is absent

    RESUMABLE = RunOptions.RESUMABLE | {"epochs", "data_dir", "download", "livelossplot", "diverge"}
    CHOICES = {"net": tuple(sorted(NETS))}

    def resolved(self) -> Config:
        """A checked copy; --dry-run caps the epochs and the data."""
        require_positive(self, ("epochs", "batch_size", "test_batch_size"))
        if not self.dry_run:
            return dataclasses.replace(self)
        return dataclasses.replace(
            self, epochs=min(self.epochs, 2), train_size=self.train_size or 256,
            test_size=self.test_size or 256,
        )  # fmt: skip


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per `Config` field (`--batch-size` for batch_size)."""
    parser = argparse.ArgumentParser(
        prog="mnist_dynamic",
        description="Train a dynamic net (random depth, random branch or halting) on MNIST.",
    )
    runtime.add_config_arguments(parser, Config)
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """argv (None: sys.argv[1:]) -> Config."""
    return runtime.parse_config(Config, build_parser(), argv)


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


def _batch_loss(model, net, x, y, idx, cfg, generator, d) -> tuple[Tensor, Tensor, int]:
    """(the loss to step on, the summed NLL, samples) of the global batch ``idx``.

    The draw is made for the whole global batch on every rank, then sliced. Distributed, the
    loss is (sum of this rank's NLLs) * world / B, so DDP's gradient mean over ranks is exactly
    the gradient of the global batch's mean NLL, even for a short last batch.
    """
    n = idx.numel()
    choice = net.draw(n, generator, cfg.per_sample) if n_choices(net) else None
    idx, choice = dist.shard(idx, d), dist.shard(choice, d)
    xb, yb = x.index_select(0, idx), y.index_select(0, idx)
    out = model(xb) if choice is None else model(xb, choice)
    if d.enabled:
        nll = F.nll_loss(out, yb, reduction="sum")
        return nll * (d.world / n), nll.detach(), yb.shape[0]
    loss = F.nll_loss(out, yb)
    return loss, loss.detach().double() * yb.shape[0], yb.shape[0]


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, cfg: Config,
    epoch: int, generator: torch.Generator, state: EpochState | None = None,
    stop: StopSignals | None = None, d: Dist = SINGLE, guard: TrainingGuard | None = None,
) -> EpochState:  # fmt: skip
    """Train one epoch (or the rest of one, from `state`) on x [N, 784], y [N].

    The shuffle and every draw come from `generator`. Returns the epoch's state: complete when
    `state.done(cfg.batch_size)`, else stopped early by SIGINT/SIGTERM (`stop.requested`).
    ``guard`` checks every loss and update (`TrainingGuard`). Distributed (`d.enabled`,
    ``model`` wrapped in DDP): every rank trains on its slice of each global batch; the
    returned loss_sum / seen are summed over ranks.
    """
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
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
        faults.rank_fault(d.rank, d.world, (epoch - 1) * n_batches + b)
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        loss, nll, n = _batch_loss(model, net, x, y, idx, cfg, generator, d)
        if guard is not None:  # one read per step: this loss and the last update's weights
            guard.loss_value(loss, f"epoch {epoch}, batch {b + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if guard is not None:
            guard.updated()
        loss_sum += nll.double()  # accumulated on the device
        seen += n
        if cfg.progress and d.main and b % 50 == 0:
            bar.set_postfix(loss=f"{float(nll) / n:.4f}")
        faults.point("step")
        if stop is not None and stop.requested:
            b += 1
            break
    else:
        b = n_batches
    bar.close()
    state.next_batch, state.loss_sum, state.seen = b, float(loss_sum), seen
    if d.enabled:  # each rank started from its own share (rank 0 holds a resumed partial sum)
        total_loss, total_seen = dist.all_sum([state.loss_sum, seen], d, x.device)
        state.loss_sum, state.seen = total_loss, int(total_seen)
    state.seconds += time.perf_counter() - t0
    return state


train = train_epoch  # the former name (benchmarks/mnist_epoch.py)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, cfg: Config, choice: int | None = None,
    generator: torch.Generator | None = None, d: Dist = SINGLE,
) -> dict[str, Any]:  # fmt: skip
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
    sums = torch.zeros(3 + getattr(model, "max_steps", -1) + 1, dtype=torch.float64)
    for i in range(0, x.shape[0], cfg.test_batch_size):
        xb, yb = x[i : i + cfg.test_batch_size], y[i : i + cfg.test_batch_size]
        c: int | Tensor | None = choice
        if c is None and n_choices(model) and d.enabled:  # draw for the whole batch
            c = model.draw(xb.shape[0], generator, cfg.per_sample)
        xb, yb, c = dist.shard(xb, d), dist.shard(yb, d), dist.shard(c, d)
        if isinstance(model, HaltingNet):
            out, steps = model(xb, return_steps=True)
            sums[3:] += torch.bincount(steps.cpu(), minlength=sums.numel() - 3)
        else:
            out = forward(model, xb, generator, cfg.per_sample, c)
        pred = out.argmax(dim=1)
        sums[0] += F.nll_loss(out, yb, reduction="sum").item()
        sums[1] += int((pred == yb).sum())
        sums[2] += int((pred >= 10).sum())
    loss, correct, impossible, *hist = dist.all_sum(sums.tolist(), d, x.device)
    total = x.shape[0]
    result: dict[str, Any] = {
        "loss": loss / max(total, 1),
        "correct": int(correct),
        "total": total,
        "accuracy": 100.0 * int(correct) / max(total, 1),
        "impossible": int(impossible),
    }
    if isinstance(model, HaltingNet):
        result["steps_hist"] = [int(v) for v in hist]
        result["mean_steps"] = sum(k * c for k, c in enumerate(result["steps_hist"])) / max(
            total, 1
        )
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


@dataclass
class _Run:
    """Everything one training process holds."""

    s: Session
    cfg: Config
    data: MnistTensors
    model: nn.Module  # checkpoints hold this one
    trained: nn.Module  # the model, in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffles and draws, nothing else
    guard: TrainingGuard
    live: LiveLoss
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epochs_done: int = 0
    state: EpochState | None = None  # a partial epoch to continue


def _save(r: _Run) -> None:
    """last.pt: everything --resume needs (``r.state``: the partial epoch after the last one
    done, if any)."""
    r.guard.check_weights(f"epoch {r.epochs_done + 1}")
    partial = None if r.state is None else dataclasses.asdict(r.state)
    payload = {
        "config": asdict(r.cfg), "epoch": r.epochs_done, "partial": partial,
        "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
        "generator": r.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "history": r.history, "first_loss": r.guard.reference,
    }  # fmt: skip
    note = f"{r.epochs_done} epochs done" + (f" + {r.state.next_batch} batches" if r.state else "")
    r.s.save(CHECKPOINT, "last", payload, note=note)


def _restore(r: _Run, doc: dict) -> None:
    path = r.s.file(CHECKPOINT)
    try:
        r.model.load_state_dict(doc["model"])
        r.optimizer.load_state_dict(doc["optimizer"])
        r.generator.set_state(doc["generator"])
        torch.set_rng_state(doc["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} does not fit this net: {reason}") from None
    r.epochs_done, r.history = doc["epoch"], list(doc["history"])
    r.guard.reference = doc["first_loss"]
    if doc["partial"] is not None:
        r.state = EpochState(**doc["partial"])
        if not r.s.d.main:  # the partial sums are counted once, on rank 0
            r.state.loss_sum, r.state.seen = 0.0, 0
    where = f" (+{r.state.next_batch} batches)" if r.state else ""
    r.s.log(f"resumed from {path}: {r.epochs_done} epochs done{where}")


def _prepare(s: Session, cfg: Config) -> _Run:
    data = get_data(cfg, verbose=s.d.main).to(s.device)
    ranks = f" ranks={s.d.world} (batch {cfg.batch_size // s.d.world} each)" if s.d.enabled else ""
    s.log(
        f"net={cfg.net} per_sample={cfg.per_sample} faithful={cfg.faithful} device={s.device} "
        f"threads={torch.get_num_threads()} data={data.source} "
        f"train={data.x_train.shape[0]} test={data.x_test.shape[0]}{ranks}"
    )
    if cfg.net == "halting" and cfg.per_sample:
        s.log("note: the halting net draws nothing; each sample always stops on its own")
    torch.manual_seed(cfg.seed)  # the weights
    model = build_model(cfg).to(s.device)
    # A pass may skip layers (depth 0, a branch, an early halt): DDP must look for them.
    trained = dist.wrap(model, s.d, s.device, find_unused=True)
    r = _Run(
        s, cfg, data, model, trained,
        torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum),
        torch.Generator().manual_seed(cfg.seed),
        TrainingGuard(model.parameters(), s.saved_note, cfg.diverge, s.d),
        LiveLoss(cfg.livelossplot and s.d.main),
    )  # fmt: skip
    doc = s.resume_from(required=("partial", "model", "optimizer", "generator", "torch_rng",
                                  "history", "first_loss"))  # fmt: skip
    if doc is not None:
        _restore(r, doc)
    return r


def _write_outputs(r: _Run) -> None:
    """curves.png, then metrics.json (the config, the data source, one record per epoch)."""
    h = r.history
    ep = [m["epoch"] for m in h]
    accuracy = {"test (drawn)": (ep, [m["test_accuracy"] for m in h])}
    for c in h[-1]["per_choice_accuracy"] if h else ():
        accuracy[c] = (ep, [m["per_choice_accuracy"][c] for m in h])
    losses = {
        "train": (ep, [m["train_loss"] for m in h]),
        "test": (ep, [m["test_loss"] for m in h]),
    }
    title = f"{r.cfg.net} net{' (faithful)' if r.cfg.faithful else ''} on {r.data.source}"
    panels = [("loss", "NLL", losses), ("test accuracy", "accuracy (%)", accuracy)]
    r.s.plot(CURVES, curves_figure(panels, title))
    r.s.write_json(METRICS, {"config": asdict(r.cfg), "complete": r.epochs_done >= r.cfg.epochs,
                             "data": r.data.source, "epochs": h})  # fmt: skip


def _end_epoch(r: _Run, epoch: int) -> None:
    """Check the epoch, test, then last.pt, curves.png and metrics.json."""
    r.guard.check_weights(f"epoch {epoch}")
    r.guard.check_epoch(r.state.loss_sum / max(r.state.seen, 1), f"epoch {epoch}")
    m = epoch_metrics(r.model, r.data, r.cfg, epoch, r.state, r.s.d)
    r.history.append(m)
    r.epochs_done, r.state = epoch, None
    if r.s.d.main:
        print_epoch(m, r.cfg)
        r.live.update(m)
    _save(r)
    _write_outputs(r)


def run(cfg: Config) -> dict[str, Any]:
    """The whole run: data, model, (resume), epochs with test and checkpoints, metrics, plot.

    Returns {"history": [per-epoch metrics], "final": last epoch's metrics or None, "out":
    output folder, "run_id"}. Raises a `treelstm.runtime.RunError` (one line), and
    `Interrupted` after saving on SIGINT/SIGTERM (mid-epoch: --resume continues from there).

    Under torchrun (WORLD_SIZE > 1) it runs as one rank of a DistributedDataParallel job; only
    rank 0 prints and writes files; a rank that raises says so on stderr.
    """
    cfg = cfg.resolved()
    with Session.start(cfg, trainer=TRAINER, artifacts=ARTIFACTS) as s:
        r = _prepare(s, cfg)
        for epoch in range(r.epochs_done + 1, cfg.epochs + 1):
            r.state = train_epoch(
                r.trained, r.optimizer, r.data.x_train, r.data.y_train, cfg, epoch, r.generator,
                r.state, s.stop, s.d, r.guard,
            )  # fmt: skip
            if not r.state.done(cfg.batch_size):  # a signal: save the partial epoch and leave
                _save(r)
                raise s.interrupted(f"saved {s.file(CHECKPOINT)} in epoch {epoch}")
            _end_epoch(r, epoch)
            if s.stop.requested:  # a signal during the test: the epoch is saved
                raise s.interrupted(f"saved {s.file(CHECKPOINT)} after epoch {epoch}")
        if r.history and r.epochs_done >= cfg.epochs and s.d.main:  # resumed a finished run
            _write_outputs(r)
        return {"history": r.history, "final": r.history[-1] if r.history else None,
                "out": str(s.out), "run_id": s.run_id}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see `--help`); returns the exit status (0 done, 1 error,
    130/143 stopped by SIGINT/SIGTERM)."""
    cfg = parse_config(argv)
    return cli_main(lambda: run(cfg))


if __name__ == "__main__":
    dist.exit_process(main())
