"""Generate Penn-Treebank-like constituency trees (wide, unbinarised) for the speed benchmarks.

Real treebank trees are not binary: a node has 1 (unary chains, and a part-of-speech node
above every word) to a few dozen children (flat noun phrases, lists, coordinations), and
sentences run from a few words to 60+. The Child-Sum kernels must stay fast on such fan-out,
so the benchmarks take these files through ``--trees FILE`` (this project's
`benchmarks.batching` and the outside yardstick alike).

Shape, per sentence: a length from a log-normal around 22 words (clipped to 1..80); each node
over k > 1 words gets c children with P(c) ~ 1/c^1.6 on 2..min(k, 32), some nodes with one
child (a unary chain link), and every word sits under a part-of-speech node. One node in
about fifty is made flat: min(k, 32) children at once. Labels are PTB-style strings (ROOT at
the top); words are w0..w9999.

    python -m benchmarks.wide_trees OUT.txt [--n 512] [--max-children 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

PHRASES = ("NP", "VP", "PP", "S", "SBAR", "ADJP", "ADVP", "QP", "PRN", "UCP")
TAGS = ("NN", "NNS", "NNP", "DT", "JJ", "IN", "VB", "VBD", "VBZ", "RB", "CC", "CD", "PRP", ",")


def sentence_length(rng: random.Random) -> int:
    return max(1, min(80, round(rng.lognormvariate(math.log(22), 0.55))))


def fan_out(rng: random.Random, k: int, max_children: int) -> int:
    """Children of a node over k > 1 words: heavy-tailed on 2..min(k, max_children)."""
    top = min(k, max_children)
    if rng.random() < 0.02:
        return top  # a flat node: a list, a long noun phrase
    weights = [c**-1.6 for c in range(2, top + 1)]
    return rng.choices(range(2, top + 1), weights=weights)[0]


def split(rng: random.Random, k: int, parts: int) -> list[int]:
    """k words into `parts` non-empty consecutive spans."""
    cuts = sorted(rng.sample(range(1, k), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, k], strict=True)]


def tree(rng: random.Random, k: int, max_children: int, label: str) -> str:
    """A bracketed tree over k words (recursion depth: the tree's height, under ~100)."""
    if k == 1:
        word = f"({rng.choice(TAGS)} w{rng.randrange(10_000)})"
        return f"({label} {word})" if label != "TAG" else word
    if rng.random() < 0.12:  # a unary link above this span
        return f"({label} {tree(rng, k, max_children, rng.choice(PHRASES))})"
    spans = split(rng, k, fan_out(rng, k, max_children))
    kids = " ".join(
        tree(rng, n, max_children, "TAG" if n == 1 else rng.choice(PHRASES)) for n in spans
    )
    return f"({label} {kids})"


def generate(n: int, max_children: int = 32, seed: int = 0) -> list[str]:
    """n bracketed trees, one per string."""
    rng = random.Random(seed)
    return [tree(rng, sentence_length(rng), max_children, "ROOT") for _ in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="file to write, one tree per line")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--max-children", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.max_children < 2:
        p.error("--max-children must be at least 2")
    lines = generate(args.n, args.max_children, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(lines)} trees to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
