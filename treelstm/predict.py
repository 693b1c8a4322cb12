"""Predict with a trained run: a class at every node (SST) or a pair's relatedness (SICK).

    python -m treelstm.predict RUN "(3 (2 a) (3 (3 gripping) (2 film)))"      # text, stdout
    python -m treelstm.predict RUN --file test.txt --format json --output preds.json
    python -m treelstm.predict RUN --file test.txt --format ptb > pred.txt    # read_ptb reads it
    python -m treelstm.predict RUN --file sentence.txt --draw tree.svg        # or tree.png
    python -m treelstm.predict SICK_RUN --file sick/test       # a.toks a.parents b.toks b.parents
    python -m treelstm.predict SICK_RUN --pairs a.toks a.parents b.toks b.parents

RUN is a run folder of ``python -m treelstm.train`` (its best.pt) or a checkpoint file; nothing
else is read (no data folder, no vectors file). Trees are PTB bracket text, one per line, with
any labels (SST's 0..4 are taken as gold labels and scored). A summary (speed, unknown words,
scores against the gold labels) goes to stderr; errors are one line naming file:line, exit 1.
The library side is `treelstm.inference` (`load_model`) and `treelstm.draw`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass

import torch

from .draw import save_drawing
from .formats import binarize, to_ptb
from .inference import TrainedModel, load_model, read_pair_folder, read_pairs, read_texts
from .runtime import UsageError, atomic_write_bytes, cli_main, pick_device
from .runtime.dist import SINGLE

__all__ = ["build_parser", "main"]

DRAW_LIMIT = 200  # trees in one picture


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m treelstm.predict",
        description="Predict every node of trees (SST) or the relatedness of pairs (SICK) with "
        "a run of python -m treelstm.train.",
    )
    p.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    p.add_argument(
        "trees",
        nargs="*",
        metavar="TREE",
        help="bracketed trees, e.g. '(3 (2 a) (3 (3 gripping) (2 film)))'",
    )
    p.add_argument(
        "--file",
        help="trees, one per line ('-': stdin); SICK: a folder holding "
        "a.toks a.parents b.toks b.parents [sim.txt]",
    )
    p.add_argument(
        "--pairs",
        nargs=4,
        metavar=("A_TOKS", "A_PARENTS", "B_TOKS", "B_PARENTS"),
        help="SICK: the four files of the sentence pairs",
    )
    p.add_argument(
        "--format",
        choices=("text", "json", "ptb"),
        default="text",
        help="text: one line per tree; json: every node; ptb: the trees with the "
        "predicted class as every node's label (default: text)",
    )
    p.add_argument("--output", help="write the predictions here (atomically) instead of stdout")
    p.add_argument(
        "--draw",
        metavar="OUT.svg|OUT.png",
        help="draw the trees (one picture, "
        f"stacked; at most {DRAW_LIMIT}), every node coloured by its class",
    )
    p.add_argument(
        "--binarize",
        action="store_true",
        help="binarize trees with wider nodes "
        "(right-factored) for a binary N-ary model instead of refusing them",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="trees per batch (default: the run's eval_batch_size, as in its dev/test evaluation)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return p


# ------------------------------------------------------------------------------- input


def _inputs(args, model: TrainedModel) -> tuple[list, list[str]]:
    """The examples to predict and where each came from (for file:line errors)."""
    if model.task.inputs == "pairs":
        if args.trees:
            raise UsageError(
                "a SICK model takes sentence pairs: --file FOLDER or --pairs "
                "A_TOKS A_PARENTS B_TOKS B_PARENTS, not bracketed trees"
            )
        if (args.file is None) == (args.pairs is None):
            raise UsageError("give the pairs with one of --file FOLDER or --pairs (four files)")
        parses = model.config.parses
        if args.pairs:
            return read_pairs(*args.pairs, parses=parses)
        return read_pair_folder(args.file, parses)
    if args.pairs:
        raise UsageError(f"--pairs: this model ({model.task.protocol}) takes trees, not pairs")
    if bool(args.trees) == (args.file is not None):
        raise UsageError("give the trees either as arguments or with --file (not both, not none)")
    if args.file is not None:
        texts, wheres = read_texts(args.file)
        if not texts:
            raise ValueError(f"{args.file}: no trees in the file")
    else:
        texts, wheres = args.trees, [f"argument {k}" for k in range(1, len(args.trees) + 1)]
    trees = [model.task.example(t, w) for t, w in zip(texts, wheres, strict=True)]
    if args.binarize:
        trees = [binarize(t) for t in trees]
    return model.examples(trees, wheres), wheres


# ------------------------------------------------------------------------------- output


@dataclass
class Outcome:
    """One command's predictions and what the summary says about them."""

    model: TrainedModel
    examples: list
    wheres: list[str]  # where each example came from ("file:line", "argument k")
    preds: list
    seconds: float  # spent in model.predict
    batch: int
    gold: dict | None  # the task's metrics against the input's labels, if it had them


def _text(o: Outcome) -> str:
    """One line per example: where it came from, the prediction, the sentence(s)."""
    lines = []
    for p, where in zip(o.preds, o.wheres, strict=True):
        if o.model.task.inputs == "pairs":
            gold = "" if math.isnan(p.gold) else f" (gold {p.gold:g})"
            a, b = " ".join(p.a.words()), " ".join(p.b.words())
            lines.append(f"{where}\t{p.score:.4f}{gold}\t{a}\t|\t{b}")
        else:
            d = p.to_dict()
            lines.append(f"{where}\t{d['label']}\t{d['prob']:.3f}\t{d['sentence']}")
    return "".join(line + "\n" for line in lines)


def _json(o: Outcome) -> str:
    """One document: the model, the task, the scores against the input's labels (exact
    floats, null without labels) and every prediction (`TreePrediction.to_dict`)."""
    items = [{"where": w, **p.to_dict()} for p, w in zip(o.preds, o.wheres, strict=True)]
    doc = {
        "model": o.model.source["path"],
        "task": o.model.task.describe(),
        "order": "post-order (children before parents, the root last)"
        if o.model.per_node
        else "the sentence only (a sequence model predicts at the root)",
        "scores": o.gold,
        "predictions": items,
    }
    return json.dumps(doc, ensure_ascii=False) + "\n"


def _ptb(model: TrainedModel, preds: list) -> str:
    if model.task.inputs != "trees":
        raise UsageError(
            f"--format ptb: a {model.task.protocol} model predicts one score per "
            "pair, not a label per node; use --format text or json"
        )
    if not model.per_node:
        raise UsageError(
            f"--format ptb: this model ({model.config.model}, a sequence model) predicts the "
            "sentence (the root) only, not a label per node; use --format text or json"
        )
    return "".join(to_ptb(p.to_tree()) + "\n" for p in preds)


def _write(args, o: Outcome) -> None:
    if args.format == "ptb":
        text = _ptb(o.model, o.preds)
    elif args.format == "json":
        text = _json(o)
    else:
        text = _text(o)
    if args.output:
        atomic_write_bytes(args.output, text.encode())
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _check_draw(args, model: TrainedModel, n: int) -> None:
    """Refuse a drawing that cannot be made before any work is done."""
    if args.draw is None:
        return
    if model.task.inputs != "trees":
        raise UsageError(
            f"--draw: a {model.task.protocol} model predicts one score per pair; "
            "there is no class per node to draw"
        )
    if not model.per_node:
        raise UsageError(
            f"--draw: this model ({model.config.model}, a sequence model) predicts the "
            "sentence (the root) only; there is no class per node to draw"
        )
    if not args.draw.lower().endswith((".svg", ".png")):
        raise UsageError(f"--draw {args.draw}: the file must end in .svg or .png")
    if n > DRAW_LIMIT:
        raise UsageError(
            f"--draw: {n} trees; one picture holds at most {DRAW_LIMIT} (give a "
            "file with the trees to draw)"
        )


# ------------------------------------------------------------------------------- summary


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _summary(o: Outcome) -> list[str]:
    model = o.model
    trees = [t for ex in o.examples for t in model.task.trees(ex)]
    nodes = sum(t.size for t in trees)
    kind = "pair" if model.task.inputs == "pairs" else "tree"
    out = [
        f"model: {model.describe()} (loaded in {model.source['load_s']:.2f} s)",
        f"predicted {_plural(len(o.examples), kind)} ({nodes} nodes) in {o.seconds:.3f} s: "
        f"{len(o.examples) / o.seconds:.0f} {kind}s/s (batches of {o.batch}, "
        f"{_plural(torch.get_num_threads(), 'thread')}, {model.device})",
    ]
    unknown = model.unknown_words(o.examples)
    if unknown:
        shown = ", ".join(unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        out.append(
            f"{_plural(len(unknown), 'word type')} not in the vocabulary, read as <unk>: {shown}"
        )
    if o.gold:
        shown = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in o.gold.items()
        )
        out.append(f"against the input's labels: {shown}")
    return out


def run(args) -> Outcome:
    """The command: load, read, predict, write, draw, summarise."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_model(args.run, pick_device(args.device, SINGLE))
    examples, wheres = _inputs(args, model)
    _check_draw(args, model, len(examples))
    if args.format == "ptb":
        _ptb(model, [])  # refuses pairs before any work
    batch = args.batch_size or model.config.eval_batch_size
    t0 = time.perf_counter()
    preds = model.predict(examples, batch_size=batch)
    seconds = time.perf_counter() - t0
    o = Outcome(model, examples, wheres, preds, seconds, batch, model.gold_metrics(preds))
    _write(args, o)
    if args.draw:
        save_drawing(args.draw, preds)
    if not args.quiet:
        for line in _summary(o):
            print(line, file=sys.stderr)
    return o


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 1 error, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    return cli_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
