"""Train and evaluate the Tree-LSTM models of Tai, Socher & Manning (2015) on SST and SICK.

    python -m treelstm.train sst --data-dir D --out runs/sst-fine [--mode fine|binary]
    python -m treelstm.train sick --data-dir D --out runs/sick
    python -m treelstm.train sst --dry-run --out /tmp/x     # generated trees, seconds, offline

Training follows the reference code: AdaGrad (lr 0.05) on every non-embedding weight with L2
1e-4, 25 trees (or pairs) per step, dropout 0.5 before the SST classifier, embeddings tuned by
plain SGD (lr 0.1) for SST and frozen for SICK, memory 150. Schedules are built in the
DataLoader's collate_fn; the level scheduler runs the cell. Every epoch: dev metrics, the
best-on-dev weights (``best.pt``), the resumable state (``last.pt``, written atomically); at
the end: test metrics of the best weights, ``metrics.json`` and ``curves.png``.

This is the only module of the library that parses argv, prints, plots or writes checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import scaleout as distributed
from scaleout import SINGLE, Dist

from . import datasets as ds
from .cells import ChildSumCell, NaryCell
from .models import RelatednessModel, SentimentModel, TreeLSTM, relatedness_loss
from .schedule import build_schedule, collate

__all__ = ["TrainConfig", "TrainingError", "train", "evaluate", "main", "atomic_save"]

CHECKPOINT_FORMAT = "treelstm-train-1"


@dataclass
class TrainConfig:
    task: str = "sst"  # "sst" (sentiment, per-node classes) or "sick" (pair relatedness)
    mode: str = "fine"  # SST protocol: "fine" (5 classes) or "binary" (reference: 3 trained)
    data_dir: str | None = None  # data folder; else $TREELSTM_DATA; else download (SST only)
    out: str = "runs/train"  # run directory: last.pt, best.pt, metrics.json, curves.png
    epochs: int = 10  # passes over the training set (the reference trains 10)
    batch_size: int = 25  # trees (SST) or pairs (SICK) per optimiser step, as in the paper
    cell: str | None = None  # "nary" (binary N-ary; SST default) or "childsum" (SICK: only)
    hidden: int = 150  # Tree-LSTM memory size (the paper's 150)
    embeddings: str | None = None  # GloVe-format text file, "none" = random; default: found
    emb_dim: int = 300  # embedding size when no vectors file is used
    lower: bool | None = None  # lowercase words for lookup; default: if the vectors are uncased
    lr: float = 0.05  # AdaGrad learning rate of every non-embedding weight
    emb_lr: float = 0.1  # plain-SGD learning rate of the embeddings (when tuned)
    weight_decay: float = 1e-4  # L2 on the non-embedding weights (gradient + wd * w)
    dropout: float | None = None  # before the classifier; default 0.5 SST, 0 SICK (reference)
    freeze_embeddings: bool | None = None  # default: tuned for SST, frozen for SICK
    output_gate: bool | None = None  # default: on for SST, off for SICK (h = tanh c, reference)
    input_at: str | None = None  # "leaves" (reference N-ary; SST default) or "all" (SICK)
    double_bias: bool = False  # two bias vectors per gate like the reference (same function)
    sim_hidden: int = 50  # SICK: units of the sigmoid layer over (h_L * h_R, |h_L - h_R|)
    subset: int | None = None  # train on the first N training examples only (quick runs)
    seed: int = 0  # seeds the initialisation, the OOV vectors, dropout and the batch order
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    workers: int = 0  # DataLoader processes building schedules (0: in the training process)
    eval_batch_size: int = 256  # trees per evaluation batch (no gradients)
    resume: bool = False  # continue from RUN_DIR/last.pt (same seed -> same final metrics)
    dry_run: bool = False  # generated trees/pairs, tiny model, 2 epochs: no data, no network
    download: bool = True  # may download SST when no data folder is given
    progress: bool = True  # tqdm progress bars
    step_delay: float = 0.0  # seconds to sleep after each step (tests: a run slow to kill)
    dist_timeout: float = 600.0  # torchrun: seconds a rank waits for a dead or stalled peer

    def resolved(self) -> TrainConfig:
        """A copy with the task-dependent defaults (None) filled in, checked."""
        if self.task not in ("sst", "sick"):
            raise ValueError(f"task must be 'sst' or 'sick', got {self.task!r}")
        if self.mode not in ("fine", "binary"):
            raise ValueError(f"mode must be 'fine' or 'binary', got {self.mode!r}")
        sst = self.task == "sst"
        c = dataclasses.replace(self)
        c.cell = c.cell or ("nary" if sst else "childsum")
        if c.cell not in ("nary", "childsum"):
            raise ValueError(f"cell must be 'nary' or 'childsum', got {c.cell!r}")
        if not sst and c.cell != "childsum":
            raise ValueError("SICK uses dependency trees (any fan-out): --cell childsum")
        c.dropout = (0.5 if sst else 0.0) if c.dropout is None else c.dropout
        c.freeze_embeddings = (not sst) if c.freeze_embeddings is None else c.freeze_embeddings
        c.output_gate = sst if c.output_gate is None else c.output_gate
        c.input_at = c.input_at or ("leaves" if sst else "all")
        if c.dry_run:
            c.epochs = min(c.epochs, 2)
            c.hidden = min(c.hidden, 16)
            c.emb_dim = min(c.emb_dim, 16)
            c.sim_hidden = min(c.sim_hidden, 8)
            c.batch_size = min(c.batch_size, 10)
        for name in ("epochs", "batch_size", "hidden", "emb_dim", "eval_batch_size"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(c, name)}")
        return c


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a corrupt or mismatched checkpoint)."""


# ------------------------------------------------------------------------------- checkpoints


def atomic_save(obj, path) -> None:
    """torch.save that a crash or a kill never leaves half-written (`scaleout.atomic_write`)."""
    distributed.atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path) -> dict:
    """torch.load(weights_only=True) with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"no checkpoint to resume from: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: "
            f"{str(e)[:200]}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state


# ------------------------------------------------------------------------------- data


@dataclass
class TaskData:
    train: list
    dev: list
    test: list
    vocab: ds.Vocab
    vectors: torch.Tensor | None
    note: str  # what was read, printed once


class PairCollate:
    """collate_fn for SICK: (schedule of the a trees, schedule of the b trees, scores [B])."""

    def __init__(self, vocab) -> None:
        self.vocab = vocab

    def __call__(self, pairs):
        a = build_schedule([p.a for p in pairs], self.vocab)
        b = build_schedule([p.b for p in pairs], self.vocab)
        return a, b, torch.tensor([p.score for p in pairs], dtype=torch.float32)


_VECTOR_FILES = {
    "sst": ("glove.840B.300d.txt", "glove.6B.300d.txt", "glove.6B.50d.sst_sick.txt"),
    "sick": ("glove.840B.300d.txt", "glove.840B.300d.sick.txt", "glove.6B.50d.sst_sick.txt"),
}


def _find_vectors(cfg: TrainConfig, folder: Path) -> Path | None:
    if cfg.embeddings is not None:
        return None if cfg.embeddings.lower() == "none" else Path(cfg.embeddings)
    places = [folder / "glove", folder.parent / "glove"]
    if cfg.data_dir:
        places.insert(0, Path(cfg.data_dir) / "glove")
    for name in _VECTOR_FILES[cfg.task]:
        for place in places:
            if (place / name).exists():
                return place / name
    tried = ", ".join(str(p) for p in dict.fromkeys(places))
    raise ds.DataNotFound(
        f"no word vectors found (looked for {', '.join(_VECTOR_FILES[cfg.task])} in {tried}): "
        "pass --embeddings PATH (GloVe text format) or --embeddings none for random vectors"
    )


def _is_uncased(path: Path, lines: int = 5000) -> bool:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= lines:
                break
            word = line.split(" ", 1)[0]
            if word != word.lower():
                return False
    return True


def load_data(cfg: TrainConfig) -> TaskData:
    """The three splits, the vocabulary (every split's words, as in the reference code) and
    the initial embedding rows, for a resolved config."""
    if cfg.dry_run:
        if cfg.task == "sst":
            make = ds.synthetic_sst
            splits = [make(40, seed=1), make(10, seed=2), make(10, seed=3)]
            if cfg.mode == "binary":
                splits = [[ds.binarize_labels(t) for t in s if t.label != 2] for s in splits]
        else:
            make = ds.synthetic_sick
            splits = [make(40, seed=1), make(10, seed=2), make(10, seed=3)]
        note = "dry run: generated data (no data directory read, no network)"
        folder = None
    else:
        folder = ds.find_data(cfg.task, cfg.data_dir, download=cfg.download)
        if cfg.task == "sst":
            loaded = ds.load_sst(folder, cfg.mode)
        else:
            loaded = ds.load_sick(folder)
        splits = [loaded["train"], loaded["dev"], loaded["test"]]
        note = f"data: {folder}"
    train_set, dev, test = splits
    if cfg.subset is not None:
        train_set = train_set[: cfg.subset]
    note += f"; train {len(train_set)}, dev {len(dev)}, test {len(test)}"

    vec_path = None if folder is None else _find_vectors(cfg, folder)
    lower = cfg.lower
    if lower is None:
        lower = vec_path is not None and _is_uncased(vec_path)
    vocab = ds.Vocab(lower=lower)
    for split in splits:
        for item in split:
            for t in (item,) if cfg.task == "sst" else (item.a, item.b):
                for w in t.flat().words:
                    if w is not None:
                        vocab.add(w)
    gen = torch.Generator().manual_seed(cfg.seed)
    if vec_path is None:
        vectors = None
        if folder is not None:
            note += f"; random {cfg.emb_dim}-d embeddings (--embeddings none)"
    else:
        vectors, coverage = ds.load_vectors(vec_path, vocab, generator=gen)
        note += f"\nvectors: {coverage}"
    return TaskData(train_set, dev, test, vocab, vectors, note)


def _loader(cfg: TrainConfig, data: list, vocab, batches, device: torch.device) -> DataLoader:
    if cfg.task == "sst":
        fn = collate(vocab, n_ary=2 if cfg.cell == "nary" else None)
    else:
        fn = PairCollate(vocab)
    return DataLoader(
        data,
        batch_sampler=batches,
        collate_fn=fn,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        # Its own generator: by default a new iterator draws a seed from the global RNG, which
        # would shift dropout's random stream when a run resumes mid-epoch.
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch: a function of (seed, epoch) only, so a resumed run
    sees the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


# ------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int, vectors: torch.Tensor | None) -> nn.Module:
    """The model of a resolved config (random init from torch's global generator)."""
    E = vectors.shape[1] if vectors is not None else cfg.emb_dim
    switches = dict(input_at=cfg.input_at, output_gate=cfg.output_gate, double_bias=cfg.double_bias)
    if cfg.cell == "nary":
        cell = NaryCell(E, cfg.hidden, n_ary=2, **switches)
    else:
        cell = ChildSumCell(E, cfg.hidden, **switches)
    if vectors is None:
        vectors = torch.empty(vocab_size, E).uniform_(-0.05, 0.05)
    encoder = TreeLSTM(
        vocab_size, cell, embeddings=vectors, freeze_embeddings=cfg.freeze_embeddings
    )
    if cfg.task == "sst":
        return SentimentModel(encoder, 5 if cfg.mode == "fine" else 3, cfg.dropout)
    return RelatednessModel(encoder, cfg.sim_hidden)


def _to(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, tuple):
        return tuple(b.to(device, non_blocking=True) for b in batch)
    return batch.to(device, non_blocking=True)


def _loss(cfg: TrainConfig, model: nn.Module, batch) -> torch.Tensor:
    """The reference's training loss of one batch (without the L2 term).

    SST: cross-entropy summed over the labelled nodes of each tree, averaged over the trees.
    SICK: KL(target || p) averaged over the pairs and over the 5 entries (the reference's
    DistKLDivCriterion averages over the entries of the distribution).
    """
    if cfg.task == "sst":
        logits = model(batch)
        labels = batch.labels
        return (
            nn.functional.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            / batch.batch_size
        )
    a, b, scores = batch
    net = model.module if isinstance(model, DistributedDataParallel) else model
    return relatedness_loss(model(a, b), scores) / net.num_classes


# ------------------------------------------------------------------------------- metrics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def spearman(x, y) -> float:
    return pearson(_ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, np.float64)))


@torch.no_grad()
def evaluate(
    cfg: TrainConfig, model: nn.Module, data: list, vocab, device, d: Dist = SINGLE
) -> dict:
    """Metrics of ``model`` on ``data`` (a resolved config says the task).

    SST fine: accuracy at the root (and at every node). SST binary (reference protocol): roots
    labelled neutral are skipped, the prediction is negative when the negative score beats the
    positive one, else positive. SICK: Pearson r, Spearman rho and MSE of the expected score.

    Distributed (`d.enabled`; pass the unwrapped model): rank r runs batches r, r + world, ...
    and the outputs are gathered, so every rank returns the metrics of the whole of ``data``.
    """
    was_training = model.training
    model.eval()
    batches = [
        list(range(i, min(i + cfg.eval_batch_size, len(data))))
        for i in range(0, len(data), cfg.eval_batch_size)
    ][d.rank :: d.world]
    loader = _loader(dataclasses.replace(cfg, workers=0), data, vocab, batches, device)
    loss_sum = 0.0
    try:
        if cfg.task == "sst":
            root_logits, root_labels, node_logits, node_labels = [], [], [], []
            for batch in loader:
                batch = _to(batch, device)
                logits = model(batch).float()
                root_logits.append(logits[batch.roots].cpu())
                root_labels.append(batch.labels[batch.roots].cpu())
                node_logits.append(logits.cpu())
                node_labels.append(batch.labels.cpu())
            outs = [root_logits, root_labels, node_logits, node_labels]
            gathered = zip(*distributed.gather(outs, d), strict=True)  # one list per rank
            outs = [torch.cat([t for part in o for t in part]) for o in gathered]
            return sentiment_metrics(outs[0], outs[1], cfg.mode, outs[2], outs[3])
        preds, golds = [], []
        for batch in loader:
            a, b, scores = _to(batch, device)
            logp = model(a, b)
            loss_sum += float(relatedness_loss(logp, scores)) * scores.shape[0]
            preds.append(model.expected_score(logp).double().cpu())
            golds.append(scores.double().cpu())
        parts = distributed.gather((preds, golds, loss_sum), d)
        p = torch.cat([t for part in parts for t in part[0]]).numpy()
        g = torch.cat([t for part in parts for t in part[1]]).numpy()
        loss_sum = sum(part[2] for part in parts)
        return {
            "pearson": pearson(p, g),
            "spearman": spearman(p, g),
            "mse": float(((p - g) ** 2).mean()),
            "kl": loss_sum / len(data),
            "n": len(data),
        }
    finally:
        model.train(was_training)


def sentiment_metrics(root_logits, root_labels, mode, node_logits=None, node_labels=None):
    """Accuracy at the roots (and at all labelled nodes) under the fine or binary protocol."""

    def acc(logits, labels):
        if mode == "fine":
            keep = labels >= 0
            pred = logits.argmax(1)
        else:
            keep = (labels >= 0) & (labels != 1)  # neutral (and unlabelled) nodes are skipped
            pred = torch.where(logits[:, 0] > logits[:, 2], 0, 2)
        n = int(keep.sum())
        return (float((pred[keep] == labels[keep]).sum()) / n if n else float("nan")), n

    out = {}
    out["accuracy"], out["n"] = acc(root_logits, root_labels)
    if node_logits is not None:
        out["node_accuracy"], out["n_nodes"] = acc(node_logits, node_labels)
    return out


def primary_metric(task: str) -> str:
    """The dev metric that picks the best epoch."""
    return "accuracy" if task == "sst" else "pearson"


# ------------------------------------------------------------------------------- training


class _StopFlag:
    """SIGINT sets a flag the loop checks between steps; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        print("\ninterrupt: saving after this step (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


_RESUME_MAY_DIFFER = {
    "out", "data_dir", "epochs", "device", "threads", "workers", "resume", "progress",
    "download", "step_delay", "eval_batch_size", "dist_timeout",
}  # fmt: skip


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but torch sees no CUDA device")
    return torch.device(name)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, keep the best-on-dev weights, test them; returns (and writes) the metrics.

    Raises `TrainingError` (NaN loss, bad checkpoint), `datasets.DataNotFound` (no data) and
    `KeyboardInterrupt` after saving when interrupted with Ctrl-C.

    Under torchrun (WORLD_SIZE > 1) this process is one rank of a DistributedDataParallel job
    (see `scaleout`): --batch-size is the global batch, each rank takes its share
    of every batch, metrics are reduced over the ranks, only rank 0 logs and writes files, and
    a rank that raises says so on stderr (torchrun then stops the others).
    """
    d = distributed.from_env()
    try:
        metrics = _train(cfg, log if d.main else (lambda *a, **k: None), d)
    except BaseException as e:
        if d.enabled and not isinstance(e, KeyboardInterrupt):
            print(f"rank {d.rank} of {d.world} failed: {type(e).__name__}: {e}", file=sys.stderr)
        raise  # without tearing the group down: a peer may be dead; torchrun ends the rest
    distributed.close()
    return metrics


def _train(cfg: TrainConfig, log, d: Dist) -> dict:
    """`train` for one process, or for rank d.rank of a torchrun job."""
    t_start = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _pick_device(cfg.device)
    if d.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)  # one GPU per process
    distributed.init(d, device, cfg.dist_timeout)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"

    data = load_data(cfg)
    log(data.note)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(data.vocab), data.vectors).to(device)
    emb = model.encoder.embedding.weight
    params = [p for p in model.parameters() if p is not emb and p.requires_grad]
    optim = torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    emb_optim = None if cfg.freeze_embeddings else torch.optim.SGD([emb], lr=cfg.emb_lr)

    history: list[dict] = []
    best = {"epoch": 0, "value": -math.inf}
    epoch, step, loss_sum, wall_before = 0, 0, 0.0, 0.0
    if cfg.resume and last_path.exists():
        state = load_checkpoint(last_path)
        saved = state["config"]
        diff = [
            f"{k}: {saved.get(k)!r} -> {v!r}"
            for k, v in asdict(cfg).items()
            if k not in _RESUME_MAY_DIFFER and saved.get(k) != v
        ]
        if diff:
            raise TrainingError(
                f"--resume: {last_path} was written with other settings ({'; '.join(diff)}); "
                "use another --out or the same settings"
            )
        try:
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optim"])
            if emb_optim is not None:
                emb_optim.load_state_dict(state["emb_optim"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainingError(f"checkpoint {last_path} does not fit this model: {e}") from None
        torch.set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        loss_sum, history, best = state["loss_sum"], state["history"], state["best"]
        if not d.main:  # a partial epoch's loss is counted once, on rank 0
            loss_sum = 0.0
        wall_before = state["wall_time"]
        where = f"{epoch} epochs done" + (f", {step} steps into epoch {epoch + 1}" if step else "")
        log(f"resumed from {last_path}: {where}")
    elif cfg.resume:
        log(f"--resume: no {last_path} yet, starting from scratch")

    def snapshot(ep: int, st: int, ls: float) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(cfg),
            "epoch": ep,
            "step": st,
            "loss_sum": ls,
            "model": model.state_dict(),
            "optim": optim.state_dict(),
            "emb_optim": None if emb_optim is None else emb_optim.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "best": best,
            "wall_time": wall_before + time.perf_counter() - t_start,
        }

    metric = primary_metric(cfg.task)
    n_train = len(data.train)
    model.train()
    # DDP broadcasts rank 0's weights and averages the gradients over the ranks. Checkpoints
    # hold `model` itself, so they load in any world size.
    trained: nn.Module = model
    if d.enabled:
        ids = [device.index] if device.type == "cuda" else None
        # Every parameter gets a gradient each step: the fused level kernel returns one for U
        # even for a share without internal nodes (and frozen embeddings are not parameters DDP
        # syncs), so DDP needs no extra graph traversal.
        trained = DistributedDataParallel(model, device_ids=ids)
    # Distributed: no graceful Ctrl-C (ranks would stop at different steps); --resume restarts
    # from the last epoch's last.pt.
    stop_flag = contextlib.nullcontext(_StopFlag()) if d.enabled else _StopFlag()
    with stop_flag as stop:
        while epoch < cfg.epochs:
            t_epoch = time.perf_counter()
            batches = _epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch)
            # This rank's share of each global batch, and the weight that makes DDP's mean over
            # ranks the gradient of the whole batch's loss (0 for an empty share: the rank
            # then runs one tree of the batch for nothing, as DDP needs every rank to step).
            mine = [distributed.shard(b, d) for b in batches]
            weights = [len(m) * d.world / len(b) for m, b in zip(mine, batches, strict=True)]
            mine = [m or b[:1] for m, b in zip(mine, batches, strict=True)]
            loader = _loader(cfg, data.train, data.vocab, mine[step:], device)
            bar = _progress(cfg, loader, len(batches), step, f"epoch {epoch + 1}/{cfg.epochs}")
            for batch in bar:
                distributed.maybe_fail(d, epoch * len(batches) + step)
                batch = _to(batch, device)
                loss = _loss(cfg, trained, batch)
                if d.enabled:
                    loss = loss * weights[step]
                # The step's one read of a device value: made before backward, so on a GPU
                # the backward and update still run while the CPU fetches the next batch.
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"loss is {value} at epoch {epoch + 1}, step {step + 1}: "
                        f"training stopped (try a lower --lr); the last good state is {last_path}"
                    )
                optim.zero_grad(set_to_none=True)
                if emb_optim is not None:
                    emb_optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                if emb_optim is not None:
                    emb_optim.step()
                loss_sum += value / d.world  # summed over the ranks below
                step += 1
                if hasattr(bar, "set_postfix"):  # rank 0's share, scaled: an estimate
                    bar.set_postfix(loss=f"{loss_sum * d.world / step:.4f}", refresh=False)
                if cfg.step_delay:
                    time.sleep(cfg.step_delay)
                if stop.set and step < len(batches):
                    atomic_save(snapshot(epoch, step, loss_sum), last_path)
                    log(
                        f"interrupted: saved {last_path} (epoch {epoch + 1}, step {step}); "
                        "run again with --resume to continue"
                    )
                    raise KeyboardInterrupt
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the last step's backward and update
            train_s = time.perf_counter() - t_epoch
            (loss_sum,) = distributed.all_sum([loss_sum], d, device)
            dev = evaluate(cfg, model, data.dev, data.vocab, device, d)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(len(batches), 1),
                "dev": dev,
                "train_time_s": train_s,  # this run's steps (a resumed epoch: the rest of it)
                "epoch_time_s": time.perf_counter() - t_epoch,  # with the dev evaluation
            }
            history.append(record)
            improved = dev[metric] > best["value"]
            if improved:
                best = {"epoch": epoch + 1, "value": dev[metric]}
            if improved and d.main:
                atomic_save(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "config": asdict(cfg),
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "dev": dev,
                    },
                    best_path,
                )
            epoch, step, loss_sum = epoch + 1, 0, 0.0
            if d.main:
                atomic_save(snapshot(epoch, 0, 0.0), last_path)
            log(
                f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, dev "
                + _fmt(dev)
                + (" (best)" if improved else "")
                + f", {record['train_time_s']:.1f}s training + "
                f"{record['epoch_time_s'] - record['train_time_s']:.1f}s evaluation"
            )
            if stop.set:
                log(f"interrupted: saved {last_path}; run again with --resume to continue")
                raise KeyboardInterrupt

    distributed.barrier(d)  # rank 0 has written best.pt
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    test = evaluate(cfg, model, data.test, data.vocab, device, d)
    wall = wall_before + time.perf_counter() - t_start
    metrics = {
        "config": asdict(cfg),
        "epochs": history,
        "best_epoch": best["epoch"],
        "best_dev": history[best["epoch"] - 1]["dev"] if best["epoch"] else None,
        "test": test,
        "wall_time_s": wall,
        "device": str(device),
        "vocab_size": len(data.vocab),
        "data": data.note,
    }
    if d.main:
        _write_json(out / "metrics.json", metrics)
        _plot(history, cfg, out / "curves.png")
    log(f"test (best dev epoch {best['epoch']}): {_fmt(test)}; wall {wall:.1f}s -> {out}")
    return metrics


def _fmt(m: dict) -> str:
    keys = ("accuracy", "node_accuracy", "pearson", "spearman", "mse")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _progress(cfg: TrainConfig, loader, total: int, initial: int, desc: str):
    if not cfg.progress:
        return loader
    from tqdm import tqdm

    return tqdm(loader, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _plot(history: list[dict], cfg: TrainConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = primary_metric(cfg.task)
    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [r["train_loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax2.plot(ep, [r["dev"][metric] for r in history], marker="o", color="C1")
    ax2.set(xlabel="epoch", ylabel=f"dev {metric}", title=f"dev {metric}")
    name = cfg.task if cfg.task == "sick" else f"sst {cfg.mode}"
    fig.suptitle(f"Tree-LSTM {name} (seed {cfg.seed})")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- CLI


_CHOICES = {
    "mode": ("fine", "binary"),
    "cell": ("nary", "childsum"),
    "device": ("auto", "cpu", "cuda"),
    "input_at": ("leaves", "all"),
}


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` after each field of a dataclass, from its source (the help text)."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    return {m.group(1): m.group(2) for m in map(pattern.match, source.splitlines()) if m}


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, skip=()) -> None:
    """One option per dataclass field: ``--batch-size`` for ``batch_size``; booleans get
    ``--x/--no-x``; ``X | None`` fields accept the value or keep the task default. The help
    text is the field's comment."""
    comments = _field_comments(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        base = kind.replace(" | None", "")
        default = f.default
        help_text = comments.get(f.name, "")
        if default is not None:
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")
        if base == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            conv = {"int": int, "float": float, "str": str}[base]
            parser.add_argument(
                flag, type=conv, default=default, help=help_text, choices=_CHOICES.get(f.name)
            )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m treelstm.train",
        description="Train a Tree-LSTM on SST (sentiment) or SICK (relatedness), Tai et al. 2015.",
    )
    p.add_argument("task", choices=["sst", "sick"])
    add_config_arguments(p, skip=("task",))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(**vars(args))
    try:
        train(cfg)
    except KeyboardInterrupt:
        return 130
    except (TrainingError, ds.DataNotFound, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    distributed.exit_process(main())
