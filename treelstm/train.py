"""Train and evaluate the models of Tai, Socher & Manning (2015) on SST and SICK: Tree-LSTMs
and the paper's sequential baselines.

    python -m treelstm.train sst --data-dir D --out runs/sst-fine [--mode fine|binary]
    python -m treelstm.train sick --data-dir D --out runs/sick          # Dependency Tree-LSTM
    python -m treelstm.train sick --cell nary --out runs/sick-c         # Constituency (cparents)
    python -m treelstm.train sst --model bilstm2 --out runs/sst-bi2     # a sequential baseline
    python -m treelstm.train sst --dry-run --out /tmp/x     # generated trees, seconds, offline

Training follows the reference code: AdaGrad (lr 0.05) on every non-embedding weight with L2
1e-4, 25 trees (or pairs) per step, dropout 0.5 before the SST classifier, embeddings tuned by
plain SGD (lr 0.1) for SST and frozen for SICK, the paper's memory size for the task and model
(`encoders`). Batches (schedules, or padded sentences for a sequence model) are built in the
DataLoader's collate_fn; the level scheduler runs a Tree-LSTM cell. What differs between SST
and SICK lives in `treelstm.tasks`, what differs between model kinds in `treelstm.encoders`.
The best epoch is the best on dev by ``--select`` (SST: accuracy; SICK: the lowest MSE).

The loop is written out here (`train_epoch`, `evaluate`, `main`); everything around it comes
from `treelstm.runtime`, shared with `dynamic.train`: the run folder (lock, run.json, --resume,
--overwrite), checkpoints (``last.pt`` after every epoch: everything --resume needs, the
best-on-dev weights included; ``best.pt``: those weights alone), SIGINT/SIGTERM, the checks
for non-finite and diverging losses, torchrun. At the end: test metrics of the best-on-dev
weights, ``curves.png`` and ``metrics.json`` (written last: the mark of a finished run).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import data as ds
from .encoders import MODELS, TREE_OPTIONS, get_model_kind
from .models import cell_n_ary
from .runtime import (
    CheckpointError,
    RunOptions,
    Session,
    TrainingError,
    TrainingGuard,
    UsageError,
    add_config_arguments,
    cli_main,
    curves_figure,
    dist,
    faults,
    load_checkpoint,
    parse_config,
    require_positive,
)
from .runtime.dist import SINGLE, Dist
from .sequence import composition_parameters
from .tasks import TASKS, Task, get_task

__all__ = [
    "TrainConfig",
    "TrainingError",
    "build_model",
    "build_parser",
    "evaluate",
    "load_data",
    "main",
    "parameter_counts",
    "train",
    "train_epoch",
]

TRAINER = "treelstm.train"
LAST, BEST, METRICS, CURVES = "last.pt", "best.pt", "metrics.json", "curves.png"
ARTIFACTS = (METRICS, CURVES, BEST, LAST)  # what --overwrite deletes, in this order


@dataclass
class TrainConfig(RunOptions):
    """Every option of a run (``--help`` shows the comments)."""

    out: str = "runs/train"  # run folder: run.json, last.pt, best.pt, metrics.json, curves.png
    task: str = "sst"  # "sst" (sentiment, per-node classes) or "sick" (pair relatedness)
    mode: str = "fine"  # SST protocol: "fine" (5 classes) or "binary" (reference: 3 trained)
    model: str = "treelstm"  # "treelstm" (--cell) or a baseline: lstm, bilstm, lstm2, bilstm2
    parses: str | None = None  # SICK trees: "dependency" or "constituency" (default: by --cell)
    data_dir: str | None = None  # data folder; else $TREELSTM_DATA; else download (SST only)
    epochs: int = 10  # passes over the training set (the reference trains 10)
    batch_size: int = 25  # trees (SST) or pairs (SICK) per optimiser step, as in the paper
    cell: str | None = (
        None  # "nary" (binary trees), "childsum" (any tree), or yours: module:factory
    )
    hidden: int | None = None  # memory size d; default: the paper's for the task and model
    embeddings: str | None = None  # GloVe-format text file, "none" = random; default: found
    emb_dim: int = 300  # embedding size when no vectors file is used
    emb_init: str = "uniform"  # random vectors: uniform(+-0.05) (reference OOV) or normal N(0,1)
    lower: bool | None = None  # lowercase words for lookup; default: if the vectors are uncased
    lr: float = 0.05  # AdaGrad learning rate of every non-embedding weight
    emb_lr: float = 0.1  # plain-SGD learning rate of the embeddings (when tuned)
    weight_decay: float = 1e-4  # L2 on the non-embedding weights (gradient + wd * w)
    dropout: float | None = None  # before the classifier; default 0.5 SST, 0 SICK (reference)
    freeze_embeddings: bool | None = None  # default: tuned for SST, frozen for SICK
    output_gate: bool | None = None  # default: on for SST, off for SICK (h = tanh c, reference)
    input_at: str | None = None  # "leaves" (reference N-ary; SST default) or "all" (SICK)
    double_bias: bool = False  # two bias vectors per gate like the reference (same function)
    forget_input: bool = True  # forget gates see x; off: no W_f (dead where only leaves have words)
    select: str | None = None  # dev metric picking the best epoch; default SST accuracy, SICK mse
    test_every_epoch: bool = False  # also test every epoch (recorded; never used to pick one)
    sim_hidden: int = 50  # SICK: units of the sigmoid layer over (h_L * h_R, |h_L - h_R|)
    subset: int | None = None  # train on the first N training examples only (quick runs)
    seed: int = 0  # seeds the initialisation, the OOV vectors, dropout and the batch order
    workers: int = 0  # DataLoader processes building schedules (0: in the training process)
    eval_batch_size: int = 256  # trees per evaluation batch (no gradients)
    diverge: float = 10.0  # stop when an epoch's mean loss exceeds this x the first step's; 0: off
    dry_run: bool = False  # generated trees/pairs, tiny model, 2 epochs: no data, no network
    download: bool = True  # may download SST when no data folder is given
    step_delay: float = 0.0  # seconds to sleep after each step (tests: a run slow to kill)

    RESUMABLE = RunOptions.RESUMABLE | {
        "data_dir", "epochs", "workers", "eval_batch_size", "diverge", "download", "step_delay",
    }  # fmt: skip
    CHOICES = {"mode": ("fine", "binary"), "input_at": ("leaves", "all"), "model": tuple(MODELS),
               "emb_init": ("uniform", "normal"),
               "parses": ("dependency", "constituency"),
               "select": ("accuracy", "pearson", "spearman", "mse", "kl")}  # fmt: skip

    def resolved(self) -> TrainConfig:
        """A copy with the task's and the model's defaults (the None fields) filled in,
        checked (`UsageError` naming the option)."""
        c = dataclasses.replace(self)
        kind = get_model_kind(c.model)
        tree = kind.per_node
        plain = get_task(c.task, c.mode)
        if c.parses is not None and c.parses not in plain.parse_kinds:
            raise UsageError(
                f"--parses {c.parses}: {c.task} comes with {' or '.join(plain.parse_kinds)} "
                "parses only"
            )
        for name, value in plain.defaults.items():
            if getattr(c, name) is None and (tree or name not in TREE_OPTIONS):
                setattr(c, name, value)
        if tree:
            _check_cell(c)
        else:
            _refuse_tree_options(c)
        task = task_of(c)
        c.parses = task.parses
        c.select = c.select or task.primary
        if c.select not in task.GOALS:
            raise UsageError(
                f"--select {c.select}: {task.name} picks the best epoch by one of "
                f"{', '.join(task.GOALS)}"
            )
        if c.hidden is None:
            c.hidden = kind.paper_memory(c.task, c.cell)
        if c.dry_run:
            c.epochs, c.hidden, c.emb_dim = min(c.epochs, 2), min(c.hidden, 16), min(c.emb_dim, 16)
            c.sim_hidden, c.batch_size = min(c.sim_hidden, 8), min(c.batch_size, 10)
        require_positive(c, ("epochs", "batch_size", "hidden", "emb_dim", "sim_hidden",
                             "eval_batch_size", "subset"))  # fmt: skip
        if c.cell and ":" in c.cell:  # a user's module:factory (build_cell): it must build now
            try:
                cell_n_ary(c.cell, c.emb_dim, c.hidden)
            except ValueError as e:
                raise UsageError(f"--{e}") from None
        return c


def _check_cell(c: TrainConfig) -> None:
    """A Tree-LSTM's cell fits the task and its parses (SICK: the parses follow the cell). A
    user's ``module:factory`` cell takes the task's default parses unless --parses says."""
    task = get_task(c.task, c.mode)
    if ":" not in c.cell and c.cell not in task.cells:
        raise UsageError(
            f"--cell {c.cell}: {task.name} takes {' or '.join(task.cells)}, or your own cell as "
            "module:factory"
        )
    if c.parses is None and "constituency" in task.parse_kinds and c.cell == "nary":
        c.parses = "constituency"  # the binary N-ary cell needs binary trees
    if c.cell == "nary" and c.parses == "dependency":
        raise UsageError(
            "--cell nary takes binary trees: --parses constituency (SICK's binarised "
            "constituency parses), or --cell childsum for dependency trees"
        )


def _refuse_tree_options(c: TrainConfig) -> None:
    """A sequence model has no cell: the options that shape one are refused, not ignored."""
    given = [f"--{n.replace('_', '-')}" for n in ("cell", "input_at") if getattr(c, n) is not None]
    given += ["--double-bias"] if c.double_bias else []
    given += ["--no-forget-input"] if not c.forget_input else []
    if given:
        raise UsageError(
            f"{', '.join(given)}: options of a Tree-LSTM cell; --model {c.model} is a "
            "sequence model (nn.LSTM layout, two biases per gate)"
        )


def task_of(cfg: TrainConfig) -> Task:
    return get_task(cfg.task, cfg.mode, cfg.model, cfg.parses)


def _n_ary(cfg: TrainConfig) -> int | None:
    """The most children a node may have: 2 for the binary N-ary cell, any for Child-Sum, a
    user's cell's own ``n_ary``; None for a sequence model (no cell)."""
    return cell_n_ary(cfg.cell, cfg.emb_dim, cfg.hidden) if cfg.cell else None


# ------------------------------------------------------------------------------- data


@dataclass
class TaskData:
    train: list
    dev: list
    test: list
    vocab: ds.Vocab
    vectors: torch.Tensor | None
    note: str  # what was read, printed once


def _vectors_path(cfg: TrainConfig, task: Task, folder: Path) -> Path | None:
    if cfg.embeddings is not None:
        if cfg.embeddings.lower() == "none":
            return None
        if not Path(cfg.embeddings).is_file():
            raise ds.DataNotFound(
                f"--embeddings {cfg.embeddings}: no such file (a GloVe-format text file, or "
                "--embeddings none for random vectors)"
            )
        return Path(cfg.embeddings)
    places = [Path(cfg.data_dir) / "glove"] if cfg.data_dir else []
    return ds.find_vectors(task.vector_files, places + [folder / "glove", folder.parent / "glove"])


def load_data(cfg: TrainConfig, task: Task | None = None) -> TaskData:
    """The three splits, the vocabulary (every split's words, as in the reference code) and
    the initial embedding rows, for a resolved config."""
    task = task or task_of(cfg)
    folder = None
    if cfg.dry_run:
        splits = task.synthetic()
    else:
        folder = ds.find_data(task.name, cfg.data_dir, download=cfg.download)
        splits = task.load(folder, max_children=_n_ary(cfg))
    train_set = splits.train[: cfg.subset] if cfg.subset else splits.train
    note = (
        f"{splits.source}; train {len(train_set)}, dev {len(splits.dev)}, test {len(splits.test)}"
    )
    vec_path = None if folder is None else _vectors_path(cfg, task, folder)
    lower = cfg.lower if cfg.lower is not None else bool(vec_path and ds.is_uncased(vec_path))
    every = (splits.train, splits.dev, splits.test)
    vocab = ds.Vocab.from_trees((t for s in every for ex in s for t in task.trees(ex)), lower=lower)
    vectors = None
    if vec_path is not None:
        gen = torch.Generator().manual_seed(cfg.seed)
        vectors, coverage = ds.load_vectors(vec_path, vocab, generator=gen)
        note += f"\nvectors: {coverage}"
    elif folder is not None:
        note += f"; random {cfg.emb_dim}-d embeddings, {cfg.emb_init} (--embeddings none)"
    return TaskData(train_set, splits.dev, splits.test, vocab, vectors, note)


def _loader(cfg: TrainConfig, task: Task, data: list, vocab, batches, device, workers: int):
    return DataLoader(
        data,
        batch_sampler=batches,
        collate_fn=task.collate(vocab, n_ary=_n_ary(cfg)),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # Its own generator: by default a new iterator draws a seed from the global RNG, which
        # would shift dropout's random stream when a run resumes mid-epoch.
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch: a function of (seed, epoch) only, so a resumed run
    (under any number of processes) sees the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _shares(batches: list[list[int]], d: Dist) -> tuple[list[list[int]], list[float]]:
    """This rank's share of each global batch, and the weight that makes DDP's mean over ranks
    the gradient of the whole batch's loss (0 for an empty share: the rank then runs one tree
    of the batch for nothing, as DDP needs every rank to step)."""
    mine = [dist.shard(b, d) for b in batches]
    weights = [len(m) * d.world / len(b) for m, b in zip(mine, batches, strict=True)]
    return [m or b[:1] for m, b in zip(mine, batches, strict=True)], weights


def _to(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, tuple):
        return tuple(b.to(device, non_blocking=True) for b in batch)
    return batch.to(device, non_blocking=True)


# ------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int, vectors: torch.Tensor | None) -> nn.Module:
    """The model of a resolved config: ``--model``'s encoder (`encoders.MODELS`) under the
    task's head (random init from torch's global generator; ``vectors=None``: random word
    vectors of ``--emb-dim`` drawn as ``--emb-init`` says)."""
    task = task_of(cfg)
    encoder = task.model.encoder(cfg, vocab_size, vectors, cfg.emb_dim)
    return task.head(encoder, cfg)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """The model's parameters: all, the trainable ones, and the composition function's alone
    (the cell or the LSTM: the paper's |θ| in its Table 1)."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "composition": composition_parameters(model),
    }


@torch.no_grad()
def evaluate(
    cfg: TrainConfig, model: nn.Module, data: list, vocab, device, d: Dist = SINGLE
) -> dict:
    """Metrics of ``model`` on ``data`` (the task's: root accuracy for SST, Pearson r,
    Spearman rho and MSE for SICK; see `treelstm.tasks`).

    Distributed (`d.enabled`; pass the unwrapped model): rank r runs batches r, r + world, ...
    and the outputs are gathered, so every rank returns the metrics of the whole of ``data``.
    """
    task = task_of(cfg)
    size = cfg.eval_batch_size
    batches = [list(range(i, min(i + size, len(data)))) for i in range(0, len(data), size)]
    loader = _loader(cfg, task, data, vocab, batches[d.rank :: d.world], device, workers=0)
    was_training = model.training
    model.eval()
    try:
        outputs = [task.outputs(model, _to(batch, device)) for batch in loader]
    finally:
        model.train(was_training)
    return task.metrics([o for part in dist.gather(outputs, d) for o in part])


# ------------------------------------------------------------------------------- the run


@dataclass
class Progress:
    """Where a run stands: what last.pt records besides the weights and optimisers."""

    epoch: int = 0  # epochs done
    step: int = 0  # steps done in the epoch under way
    loss_sum: float = 0.0  # of those steps (this rank's share)
    history: list[dict] = field(default_factory=list)  # one record per epoch done
    best: dict = field(default_factory=lambda: {"epoch": 0, "value": -math.inf})  # see _prepare
    best_model: dict | None = None  # the best-on-dev weights (state_dict)
    wall_before: float = 0.0  # seconds spent by earlier processes of this run


@dataclass
class Run:
    """Everything one training process holds."""

    s: Session
    cfg: TrainConfig
    task: Task
    data: TaskData
    model: nn.Module  # checkpoints hold this one
    trained: nn.Module  # the model, in DistributedDataParallel under torchrun
    optimizers: list[torch.optim.Optimizer]  # AdaGrad on the weights, SGD on the embeddings
    guard: TrainingGuard
    prog: Progress
    t_start: float

    def wall(self) -> float:
        return self.prog.wall_before + time.perf_counter() - self.t_start


def _optimizers(cfg: TrainConfig, model: nn.Module) -> list[torch.optim.Optimizer]:
    emb = model.encoder.embedding.weight
    params = [p for p in model.parameters() if p is not emb and p.requires_grad]
    optims: list[torch.optim.Optimizer] = [
        torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ]
    if not cfg.freeze_embeddings:
        optims.append(torch.optim.SGD([emb], lr=cfg.emb_lr))
    return optims


def _prepare(s: Session, cfg: TrainConfig, task: Task) -> Run:
    data = load_data(cfg, task)
    s.log(data.note)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(data.vocab), data.vectors).to(s.device)
    # Every parameter gets a gradient each step (the fused level kernel returns one for U even
    # for a share without internal nodes), so DDP needs no search for unused ones.
    trained = dist.wrap(model, s.d, s.device)
    guard = TrainingGuard(model.parameters(), s.saved_note, cfg.diverge, s.d)
    start = Progress(best={"epoch": 0, "value": task.worst(cfg.select)})
    run = Run(s, cfg, task, data, model, trained, _optimizers(cfg, model), guard, start,
              time.perf_counter())  # fmt: skip
    counts = parameter_counts(model)
    s.log(f"model: {task.model.summary(cfg)}; {counts['composition']:,} composition parameters, "
          f"{counts['trainable']:,} trained")  # fmt: skip
    doc = s.resume_from(required=_LAST_KEYS)
    if doc is not None:
        _restore(run, doc)
    return run


# ------------------------------------------------------------------------------- checkpoints

_LAST_KEYS = ("step", "loss_sum", "model", "optimizers", "rng", "history", "best", "best_model",
              "first_loss", "wall_time", "vocab")  # fmt: skip


def _save_last(run: Run) -> None:
    p = run.prog
    run.guard.check_weights(f"epoch {p.epoch + (1 if p.step else 0)}")
    payload = {
        "config": asdict(run.cfg), "task": run.task.describe(), "vocab": run.data.vocab.to_dict(),
        "epoch": p.epoch, "step": p.step, "loss_sum": p.loss_sum, "history": p.history,
        "best": p.best, "best_model": p.best_model, "first_loss": run.guard.reference,
        "wall_time": run.wall(), "rng": torch.get_rng_state(), "model": run.model.state_dict(),
        "optimizers": [o.state_dict() for o in run.optimizers],
    }  # fmt: skip
    note = f"epoch {p.epoch + 1}, step {p.step}" if p.step else f"{p.epoch} epochs done"
    run.s.save(LAST, "last", payload, note=note)


def _save_best(run: Run) -> None:
    p = run.prog
    run.s.save(BEST, "best", {
        "config": asdict(run.cfg), "task": run.task.describe(), "vocab": run.data.vocab.to_dict(),
        "epoch": p.best["epoch"], "dev": p.history[p.best["epoch"] - 1]["dev"],
        "model": p.best_model,
    })  # fmt: skip


def _restore(run: Run, doc: dict) -> None:
    """Continue from a verified last.pt (`Session.resume_from`)."""
    path = run.s.file(LAST)
    if (doc["vocab"]["itos"], doc["vocab"]["lower"]) != (run.data.vocab.itos, run.data.vocab.lower):
        raise CheckpointError(
            f"--resume: the data differ from the run's: {path} has a vocabulary of "
            f"{len(doc['vocab']['itos'])} words, the data give {len(run.data.vocab)} (another "
            "--data-dir or --embeddings?)"
        )
    try:
        run.model.load_state_dict(doc["model"])
        for optim, state in zip(run.optimizers, doc["optimizers"], strict=True):
            optim.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} does not fit this model: {reason}") from None
    torch.set_rng_state(doc["rng"])
    run.guard.reference = doc["first_loss"]
    run.prog = Progress(
        epoch=doc["epoch"], step=doc["step"], history=list(doc["history"]), best=doc["best"],
        loss_sum=doc["loss_sum"] if run.s.d.main else 0.0,  # a partial epoch: counted once
        best_model=doc["best_model"], wall_before=doc["wall_time"],
    )  # fmt: skip
    where = f"{run.prog.epoch} epochs done"
    if run.prog.step:
        where += f", {run.prog.step} steps into epoch {run.prog.epoch + 1}"
    run.s.log(f"resumed from {path}: {where}")
    _check_best(run)


def _check_best(run: Run) -> None:
    """best.pt must hold this run's best epoch; rewrite it from last.pt's copy when it is
    missing, damaged, or from an epoch whose last.pt a kill never committed."""
    p, path = run.prog, run.s.file(BEST)
    if p.best_model is None or not run.s.d.main:
        return
    if not path.exists():
        reason = "was missing"
    else:
        try:
            doc = load_checkpoint(path, trainer=TRAINER, role="best", required=("epoch",))
        except CheckpointError as e:
            doc, reason = None, f"was unreadable ({e})"
        if doc is not None and doc["run_id"] != run.s.run_id:
            raise CheckpointError(
                f"{path} belongs to another run, not to the run in {run.s.out}: move it away, "
                "or start the run again with --overwrite"
            )
        if doc is not None:
            if doc["epoch"] == p.best["epoch"]:
                return
            reason = f"held epoch {doc['epoch']}, not the best epoch {p.best['epoch']}"
    _save_best(run)
    run.s.log(f"{path} {reason}: rewritten from last.pt's copy of epoch {p.best['epoch']}")


# ------------------------------------------------------------------------------- training


def _train_step(run: Run, batch, weight: float, where: str) -> float:
    """One optimiser step; returns the loss (checked, with the weights, by the guard)."""
    loss = run.task.loss(run.trained, batch)
    if weight != 1.0:
        loss = loss * weight
    # The step's one read of a device value: made before backward, so on a GPU the backward
    # and update still run while the CPU fetches the next batch.
    value = run.guard.loss_value(loss, where)
    for optim in run.optimizers:
        optim.zero_grad(set_to_none=True)
    loss.backward()
    for optim in run.optimizers:
        optim.step()
    run.guard.updated()
    return value


def train_epoch(run: Run) -> int:
    """One pass over the training set, or the rest of one from ``run.prog.step``: one
    optimiser step per global batch of ``--batch-size``. Returns the epoch's batch count.

    SIGINT/SIGTERM: saves last.pt after the current step and raises `Interrupted`.
    """
    s, cfg, p = run.s, run.cfg, run.prog
    batches = _epoch_batches(len(run.data.train), cfg.batch_size, cfg.seed, p.epoch)
    mine, weights = _shares(batches, s.d)
    loader = _loader(cfg, run.task, run.data.train, run.data.vocab, mine[p.step :], s.device,
                     cfg.workers)  # fmt: skip
    bar = _progress(run, loader, len(batches), p.step, f"epoch {p.epoch + 1}/{cfg.epochs}")
    for batch in bar:
        faults.rank_fault(s.d.rank, s.d.world, p.epoch * len(batches) + p.step)
        where = f"epoch {p.epoch + 1}, step {p.step + 1}"
        value = _train_step(run, _to(batch, s.device), weights[p.step], where)
        p.loss_sum += value / s.d.world  # summed over the ranks at the end of the epoch
        p.step += 1
        if hasattr(bar, "set_postfix"):  # rank 0's share, scaled: an estimate
            bar.set_postfix(loss=f"{p.loss_sum * s.d.world / p.step:.4f}", refresh=False)
        if cfg.step_delay:
            time.sleep(cfg.step_delay)
        faults.point("step")
        if s.stop.requested and p.step < len(batches):
            _save_last(run)
            raise s.interrupted(f"saved {s.file(LAST)} (epoch {p.epoch + 1}, step {p.step})")
    return len(batches)


def _end_epoch(run: Run, n_batches: int, t_epoch: float) -> None:
    """Dev evaluation, the best epoch, last.pt (then best.pt), the epoch's line."""
    s, p = run.s, run.prog
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)  # the last step's backward and update
    train_s = time.perf_counter() - t_epoch
    (loss_sum,) = dist.all_sum([p.loss_sum], s.d, s.device)
    record = {"epoch": p.epoch + 1, "train_loss": loss_sum / max(n_batches, 1)}
    run.guard.check_weights(f"epoch {p.epoch + 1}")
    run.guard.check_epoch(record["train_loss"], f"epoch {p.epoch + 1}")
    record["dev"] = dev = evaluate(run.cfg, run.model, run.data.dev, run.data.vocab, s.device, s.d)
    if run.cfg.test_every_epoch:  # for studies of epoch rules: recorded, never used to pick
        record["test"] = evaluate(run.cfg, run.model, run.data.test, run.data.vocab, s.device, s.d)
    record["train_time_s"] = train_s  # this process's steps (a resumed epoch: the rest of it)
    record["epoch_time_s"] = time.perf_counter() - t_epoch  # with the dev evaluation
    p.history.append(record)
    metric = run.cfg.select
    improved = run.task.better(metric, dev[metric], p.best["value"])
    if improved:
        p.best = {"epoch": p.epoch + 1, "value": dev[metric]}
        p.best_model = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    p.epoch, p.step, p.loss_sum = p.epoch + 1, 0, 0.0
    _save_last(run)  # the commit point: it holds the best weights too
    if improved:
        _save_best(run)
    s.log(
        f"epoch {p.epoch}/{run.cfg.epochs}: train loss {record['train_loss']:.4f}, dev "
        f"{_fmt(dev)}{' (best)' if improved else ''}, {train_s:.1f}s training + "
        f"{record['epoch_time_s'] - train_s:.1f}s evaluation"
    )


def _finish(run: Run) -> dict:
    """Test the best-on-dev weights; curves.png, then metrics.json (the run is finished)."""
    s, cfg, p = run.s, run.cfg, run.prog
    dist.barrier(s.d)
    if p.best_model is None:
        raise TrainingError(f"no epoch had a dev {cfg.select} to pick the best weights by")
    run.model.load_state_dict(p.best_model)
    test = evaluate(cfg, run.model, run.data.test, run.data.vocab, s.device, s.d)
    metrics = {
        "config": asdict(cfg), "complete": True, "epochs": p.history,
        "best_epoch": p.best["epoch"], "best_dev": p.history[p.best["epoch"] - 1]["dev"],
        "select": {"metric": cfg.select, "goal": run.task.GOALS[cfg.select]},
        "test": test, "wall_time_s": run.wall(), "device": str(s.device),
        "parameters": parameter_counts(run.model), "model": run.task.model.summary(cfg),
        "vocab_size": len(run.data.vocab), "data": run.data.note,
    }  # fmt: skip
    s.plot(CURVES, _figure(run))
    s.write_json(METRICS, metrics)
    s.log(
        f"test (best dev epoch {p.best['epoch']}): {_fmt(test)}; wall {run.wall():.1f}s -> {s.out}"
    )
    return {"run_id": s.run_id, **metrics}


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, keep the best-on-dev weights, test them; returns (and writes) the metrics.

    Raises a `treelstm.runtime.RunError` (one line: the run folder, a checkpoint, a
    non-finite or diverging loss, an option), `data.DataNotFound` or ValueError (data, with
    file:line), and `Interrupted` (a KeyboardInterrupt) after saving on SIGINT/SIGTERM.

    Under torchrun (WORLD_SIZE > 1) this process is one rank of a DistributedDataParallel job
    (see `treelstm.runtime.dist`): --batch-size is the global batch, each rank takes its share
    of every batch, metrics are reduced over the ranks, only rank 0 logs and writes files.
    """
    cfg = cfg.resolved()
    with Session.start(cfg, trainer=TRAINER, artifacts=ARTIFACTS, log=log) as s:
        run = _prepare(s, cfg, task_of(cfg))
        while run.prog.epoch < cfg.epochs:
            t_epoch = time.perf_counter()
            n_batches = train_epoch(run)
            _end_epoch(run, n_batches, t_epoch)
            if s.stop.requested:
                raise s.interrupted(f"saved {s.file(LAST)} after epoch {run.prog.epoch}")
        return _finish(run)


def _fmt(m: dict) -> str:
    keys = ("accuracy", "node_accuracy", "pearson", "spearman", "mse")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _progress(run: Run, loader, total: int, initial: int, desc: str):
    if not (run.cfg.progress and run.s.d.main):
        return loader
    from tqdm import tqdm

    return tqdm(loader, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _figure(run: Run):
    h, metric = run.prog.history, run.cfg.select
    ep = [r["epoch"] for r in h]
    return curves_figure(
        [("training loss", "train loss", {"train": (ep, [r["train_loss"] for r in h])}),
         (f"dev {metric}", f"dev {metric}", {"dev": (ep, [r["dev"][metric] for r in h])})],
        f"{run.task.model.label} {run.task.protocol} (seed {run.cfg.seed})",
    )  # fmt: skip


# ------------------------------------------------------------------------------- CLI


def build_parser():
    """The command line: the task, then one option per `TrainConfig` field."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m treelstm.train",
        description="Train a Tree-LSTM or a sequential baseline on SST (sentiment) or SICK "
        "(relatedness), Tai et al. 2015.",
    )
    p.add_argument("task", choices=list(TASKS))
    add_config_arguments(p, TrainConfig, skip=("task",))
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 1 error, 130/143 stopped)."""
    cfg = parse_config(TrainConfig, build_parser(), argv)
    return cli_main(lambda: train(cfg))


if __name__ == "__main__":
    dist.exit_process(main())
