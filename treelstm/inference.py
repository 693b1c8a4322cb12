"""Using a trained model: `load_model` rebuilds a run's model from its checkpoint alone (no
training data, no word-vectors file) and `TrainedModel.predict` runs it over trees or pairs.

    model = treelstm.load_model("runs/sst-fine")          # a run folder (its best.pt) or a .pt
    [p] = model.predict(["(3 (2 a) (3 (3 gripping) (2 film)))"])
    p.root_label, p.root_prob, p.labels()                 # the sentence; every node (post-order)

What a checkpoint of `treelstm.train` carries and this module uses (docs/predict.md): the
config (the model's shape), the task (its name, mode, class names and prediction rule, checked
against this version's), the vocabulary with its lookup rules (PTB escapes undone, lowercasing
when the vectors were uncased; unknown words read the ``<unk>`` row) and the weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import SICK_PARSES, Pair, Vocab, read_lines
from .formats.parents import read_parents
from .runtime import CheckpointError, RunError, load_checkpoint
from .tasks import Task
from .train import BEST, LAST, TRAINER, TrainConfig, build_model, task_of

__all__ = [
    "TrainedModel",
    "load_model",
    "max_fan_out",
    "read_pair_folder",
    "read_pairs",
    "read_texts",
]

_LOOKUP_RULES = ("ptb",)  # the vocabulary lookup rules this version implements


class TrainedModel(nn.Module):
    """A trained model (a Tree-LSTM or a sequential baseline) with everything needed to use
    it, in eval mode.

    model    the task's module (`SentimentModel` / `RelatednessModel`); ``forward`` is its own
    task     the `treelstm.tasks.Task` it was trained for (its prediction rule, its metrics)
    vocab    the training vocabulary (`data.Vocab`: unknown words map to ``<unk>``, id 0)
    config   the run's resolved `train.TrainConfig`
    source   where it came from: path, role ("best" / "last"), run_id, epoch, dev metrics
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        vocab: Vocab,
        config: TrainConfig,
        source: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.vocab = vocab
        self.config = config
        self.source = source
        self.eval()

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names (SST) or the scores "1".."5" (SICK)."""
        return tuple(self.task.labels)

    @property
    def per_node(self) -> bool:
        """Whether it predicts every node (a Tree-LSTM) or the sentence only (a sequence
        model: `predict` gives `prediction.SentencePrediction`s)."""
        return self.task.model.per_node

    @property
    def n_ary(self) -> int | None:
        """The most children a node may have (2 for the binary N-ary cell, a user's cell's own
        ``n_ary``; None: any)."""
        if ":" in (self.config.cell or ""):  # a user's cell (--cell module:factory)
            return getattr(self.model.encoder.cell, "n_ary", None)
        return 2 if self.config.cell == "nary" else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, *batch):
        return self.model(*batch)

    def examples(self, items: Iterable, where: Sequence[str] | None = None) -> list:
        """``items`` as the task's examples: PTB text or `Tree` (SST); `data.Pair` or an
        (a, b) tuple of trees (SICK). Checks each node's fan-out against the cell; errors name
        ``where[i]`` (default "tree i", from 1)."""
        out = []
        for i, item in enumerate(items):
            place = where[i] if where is not None else f"tree {i + 1}"
            ex = self.task.example(item, place)
            for tree in self.task.trees(ex):
                self.check_fan_out(tree, place)
            out.append(ex)
        return out

    def check_fan_out(self, tree, where: str) -> None:
        """ValueError naming ``where`` when a node has more children than the cell takes."""
        if self.n_ary is None:
            return
        widest = max_fan_out(tree)
        what = "binary N-ary cell" if self.config.cell == "nary" else "cell"
        if widest > self.n_ary:
            raise ValueError(
                f"{where}: a node with {widest} children; this model's {what} takes at most "
                f"{self.n_ary}: binarize the tree (treelstm.binarize; --binarize on the command "
                "line)"
            )

    @torch.no_grad()
    def predict(self, items: Iterable, batch_size: int | None = None) -> list:
        """One prediction per item, in order (`prediction.TreePrediction`: a class and the
        probabilities at every node, in the tree's post-order; `SentencePrediction` for a
        sequence model on SST: the sentence's class only, as such a model has no state inside
        the tree; `PairPrediction`: the relatedness score). Runs ``batch_size`` examples per
        batch (default: the run's
        ``eval_batch_size``, so that a split batched as the trainer batched it gives its dev
        or test numbers to the last digit) in eval mode, without gradients."""
        examples = self.examples(items)
        size = batch_size or self.config.eval_batch_size
        collate = self.task.collate(self.vocab, n_ary=self.n_ary)
        was_training, device = self.training, self.device
        self.eval()
        try:
            out: list = []
            for i in range(0, len(examples), size):
                part = examples[i : i + size]
                out += self.task.predict(self.model, _to(collate(part), device), part)
            return out
        finally:
            self.train(was_training)

    def unknown_words(self, items: Iterable) -> list[str]:
        """The words of ``items`` (examples, as `predict` takes them) that the vocabulary
        lacks: they are read as ``<unk>``. Each once, in order of appearance."""
        seen: dict[str, None] = {}
        for ex in self.examples(items):
            for tree in self.task.trees(ex):
                for w in tree.flat().words:
                    if w is not None and w not in self.vocab:
                        seen[w] = None
        return list(seen)

    def gold_metrics(self, predictions: Sequence) -> dict[str, float] | None:
        """The trainer's metrics of ``predictions`` against the labels the input carried
        (`Task.gold_metrics`), or None when it carried none."""
        return self.task.gold_metrics(predictions)

    def describe(self) -> str:
        """One line: what model this is and where it came from."""
        s = self.source
        dev = s.get("dev") or {}
        key = self.config.select
        score = f", dev {key} {dev[key]:.4f}" if key in dev else ""
        return (
            f"{s['path']} ({s['role']}, epoch {s['epoch']}{score}): {self.task.protocol}, "
            f"{self.task.model.summary(self.config)}, {len(self.vocab)} words"
        )


def max_fan_out(tree) -> int:
    """The largest number of children of any node of ``tree``."""
    return max(len(n.children) for n in tree.preorder())


def _to(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, tuple):
        return tuple(b.to(device) if hasattr(b, "to") else b for b in batch)
    return batch.to(device)


# ------------------------------------------------------------------------------- loading


def checkpoint_path(path) -> Path:
    """The checkpoint a run folder stands for (its best.pt), or ``path`` itself."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise CheckpointError(f"{path}: no such run folder or checkpoint")
        return path
    best = path / BEST
    if best.is_file():
        return best
    hint = "no epoch has finished yet, or it is not a Tree-LSTM run folder"
    if (path / LAST).is_file():
        hint = f"pass {path / LAST} for its latest weights"
    raise CheckpointError(f"{path}: no {BEST} in this folder ({hint})")


def load_model(path, device: str | torch.device = "cpu") -> TrainedModel:
    """The model a `treelstm.train` run learnt, in eval mode, from its checkpoint alone.

    ``path`` is a run folder (its ``best.pt``: the best-on-dev weights) or a checkpoint file
    (``best.pt``, or ``last.pt`` for the latest epoch's weights). Raises `CheckpointError`
    (one line naming the file) for a missing, damaged or foreign file, a checkpoint written
    before checkpoints carried the vocabulary, or settings this version does not know.
    """
    t0 = time.perf_counter()
    file = checkpoint_path(path)
    doc = load_checkpoint(file)
    _check_usable(file, doc)
    cfg = _config(file, doc)
    task = _task(file, doc, cfg)
    vocab = _vocab(file, doc)
    model = _model(file, doc, cfg, len(vocab)).to(device)
    source = {
        "path": str(file),
        "role": doc["role"],
        "run_id": doc["run_id"],
        "epoch": doc.get("epoch"),
        "dev": doc.get("dev"),
        "load_s": time.perf_counter() - t0,
    }
    return TrainedModel(model, task, vocab, cfg, source)


def _check_usable(file: Path, doc: dict) -> None:
    if doc["trainer"] != TRAINER:
        raise CheckpointError(
            f"{file} was written by {doc['trainer']}, not by {TRAINER}: only runs of "
            "(python -m treelstm.train) can be loaded for prediction"
        )
    if doc["role"] not in ("best", "last"):
        raise CheckpointError(f"{file}: a checkpoint of role {doc['role']!r}, not best or last")
    missing = [k for k in ("vocab", "task") if k not in doc]
    if missing:
        raise CheckpointError(
            f"{file} was written by an older treelstm, before checkpoints carried the "
            f"vocabulary and the task (it lacks {', '.join(missing)}): it cannot be used "
            "without its training data; train the run again to predict with it"
        )
    missing = [k for k in ("config", "model") if k not in doc]
    if missing:
        raise CheckpointError(f"{file} is damaged: it lacks {', '.join(missing)}")


def _config(file: Path, doc: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(doc["config"]) - known)
    if unknown:
        raise CheckpointError(
            f"{file} was written by a newer treelstm (settings unknown here: "
            f"{', '.join(unknown)}): update treelstm to use it"
        )
    try:
        return TrainConfig(**doc["config"]).resolved()
    except (RunError, ValueError) as e:
        # e.g. a user's --cell module:factory whose module does not import here
        raise CheckpointError(f"{file}: the run's settings cannot be used here: {e}") from None


def _task(file: Path, doc: dict, cfg: TrainConfig) -> Task:
    """The config's task (model kind and parses included), checked against the one the
    checkpoint recorded."""
    saved = doc["task"]
    task = task_of(cfg)
    mine = task.describe()
    if saved.get("name") != task.name or saved.get("mode", "fine") != getattr(task, "mode", "fine"):
        raise CheckpointError(f"{file}: its task {saved!r} is not its config's {mine!r}")
    for key in ("labels", "prediction"):
        if saved.get(key) != mine[key]:
            raise CheckpointError(
                f"{file}: the run's task has {key} {saved.get(key)!r}, this treelstm's "
                f"{task.protocol} has {mine[key]!r}: not the same task"
            )
    return task


def _vocab(file: Path, doc: dict) -> Vocab:
    v = doc["vocab"]
    if v.get("escapes") not in _LOOKUP_RULES or v.get("unk") != Vocab.UNK or not v.get("itos"):
        raise CheckpointError(
            f"{file}: a vocabulary with lookup rules this treelstm does not implement "
            f"(escapes {v.get('escapes')!r}, unk {v.get('unk')!r}): update treelstm"
        )
    return Vocab.from_dict(v)


def _model(file: Path, doc: dict, cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The run's module with the checkpoint's weights. Built from the stored embedding rows
    (their width is the model's input size, which the config alone does not give when a
    vectors file was used), under a forked RNG so that loading leaves the caller's
    random stream as it was."""
    state = doc["model"]
    emb = state.get("encoder.embedding.weight")
    if emb is None or emb.dim() != 2 or emb.shape[0] != vocab_size + 1:
        rows = None if emb is None else tuple(emb.shape)
        raise CheckpointError(
            f"{file} is damaged: {vocab_size} vocabulary words but embedding weights {rows}"
        )
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, vocab_size, emb[:vocab_size].float())
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{file} does not fit the model its config describes: {reason}"
        ) from None
    return model


# ------------------------------------------------------------------------------- input files


def read_texts(path) -> tuple[list[str], list[str]]:
    """The non-blank lines of a UTF-8 text file (one bracketed tree each) and where each is
    (``"path:line"``); ``"-"`` reads standard input (``"<stdin>:line"``)."""
    if str(path) == "-":
        import sys

        name, lines = "<stdin>", _decode(sys.stdin.buffer.read().splitlines(), "<stdin>")
    else:
        name, lines = str(path), read_lines(Path(path))
    keep = [(f"{name}:{k}", line) for k, line in enumerate(lines, 1) if line.strip()]
    return [line for _, line in keep], [where for where, _ in keep]


def _decode(raw_lines: list[bytes], name: str) -> list[str]:
    out = []
    for k, raw in enumerate(raw_lines, 1):
        try:
            out.append(raw.decode("utf-8-sig" if k == 1 else "utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}:{k}: not valid UTF-8 (byte {e.start})") from None
    return out


def read_pairs(
    a_toks, a_parents, b_toks, b_parents, sim=None, parses: str = "dependency"
) -> tuple[list[Pair], list[str]]:
    """Sentence pairs from the SICK layout's files (one sentence per line: its tokens, and its
    1-based dependency heads, 0 = root; or with ``parses="constituency"`` its constituency
    parent pointers, ``*.cparents``) and, if given, ``sim`` (one gold score per line).
    Returns the pairs and where each is (``"a.parents:line"``); every error names a file and
    line (a line count that differs between the files included)."""
    paths = [Path(p) for p in (a_toks, a_parents, b_toks, b_parents)]
    columns = [read_parents(p) if i % 2 else read_lines(p) for i, p in enumerate(paths)]
    if sim is not None:
        paths.append(Path(sim))
        columns.append(read_lines(Path(sim)))
    n = len(columns[1])
    for path, col in zip(paths, columns, strict=True):
        if len(col) != n:
            line = min(len(col), n) + 1
            raise ValueError(f"{path}:{line}: {len(col)} lines but {paths[1]} has {n}")
    reader = SICK_PARSES[parses][1]
    pairs, wheres = [], []
    for i in range(n):
        trees = [
            reader(columns[k + 1][i], columns[k][i].split(" "), where=f"{paths[k + 1]}:{i + 1}")
            for k in (0, 2)
        ]
        gold = _score(columns[4][i], f"{paths[4]}:{i + 1}") if sim is not None else float("nan")
        pairs.append(Pair(trees[0], trees[1], gold, str(i + 1)))
        wheres.append(f"{paths[1]}:{i + 1}")
    return pairs, wheres


def _score(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: relatedness {text!r} is not a number") from None


def read_pair_folder(folder, parses: str = "dependency") -> tuple[list[Pair], list[str]]:
    """The pairs of a folder in the SICK layout (``a.toks a.parents b.toks b.parents``, or
    ``a.cparents b.cparents`` for ``parses="constituency"``, and ``sim.txt`` when present:
    then the gold scores come with them)."""
    folder = Path(folder)
    ext = SICK_PARSES[parses][0]
    names = ("a.toks", f"a.{ext}", "b.toks", f"b.{ext}")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ValueError(
            f"{folder}: no {', '.join(missing)}: this SICK model ({parses} parses) reads a "
            f"folder holding {', '.join(names)} (sim.txt optional), or --pairs with the four "
            "files"
        )
    sim = folder / "sim.txt"
    return read_pairs(
        *(folder / n for n in names), sim=sim if sim.is_file() else None, parses=parses
    )
