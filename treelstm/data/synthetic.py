"""Generated stand-ins for SST and SICK (`synthetic_sst`, `synthetic_sick`): learnable,
offline, seconds to train on; what --dry-run and the tests use."""

from __future__ import annotations

import random

from ..tree import Tree
from .sick import Pair

__all__ = ["SYNTHETIC_WORDS", "synthetic_sick", "synthetic_sst"]

_POLARITY = {
    "awful": -2, "bad": -1, "dull": -1, "not": 0, "the": 0, "a": 0, "film": 0, "plot": 0,
    "is": 0, "and": 0, "good": 1, "fun": 1, "great": 2, "-LRB-": 0, "-RRB-": 0, "é": 0,
}  # fmt: skip
SYNTHETIC_WORDS = tuple(_POLARITY)


def synthetic_sst(n: int, seed: int = 0, max_words: int = 10) -> list[Tree]:
    """``n`` random binary trees shaped like SST: words at leaves, a 0..4 label on every node.

    A leaf's score is its word's polarity, a parent's the sum of its children's, negated when
    its left child is the word "not"; the label is the score clipped to -2..2, plus 2.
    """
    rng = random.Random(seed)
    score: dict[int, int] = {}

    def make(a: Tree, b: Tree) -> int:
        s = score[id(a)] + score[id(b)]
        if a.word == "not":
            s = -score[id(b)]
        return s

    trees = []
    for _ in range(n):
        leaves = []
        for w in rng.choices(SYNTHETIC_WORDS, k=rng.randint(2, max_words)):
            t = Tree(max(-2, min(2, _POLARITY[w])) + 2, w)
            score[id(t)] = _POLARITY[w]
            leaves.append(t)

        def label(a: Tree, b: Tree) -> int:
            return max(-2, min(2, make(a, b))) + 2

        nodes = list(leaves)
        while len(nodes) > 1:
            k = rng.randrange(len(nodes) - 1)
            a, b = nodes[k], nodes[k + 1]
            t = Tree(label(a, b), None, (a, b))
            score[id(t)] = make(a, b)
            nodes[k : k + 2] = [t]
        trees.append(nodes[0])
        score.clear()
    return trees


def _random_parents(rng: random.Random, n: int) -> list[int]:
    """1-based heads of a random dependency tree over n tokens (0 = root)."""
    order = list(range(1, n + 1))
    rng.shuffle(order)
    heads = [0] * n
    for j, v in enumerate(order[1:], 1):
        heads[v - 1] = order[rng.randrange(j)]
    return heads


def _random_bracketing(rng: random.Random, words: list[str]) -> Tree:
    """A random binary constituency tree over ``words`` (left to right), like a binarised
    parse: words at the leaves, unlabelled internal nodes with two children each."""
    nodes = [Tree(None, w) for w in words]
    while len(nodes) > 1:
        k = rng.randrange(len(nodes) - 1)
        nodes[k : k + 2] = [Tree(None, None, (nodes[k], nodes[k + 1]))]
    return nodes[0]


def synthetic_sick(
    n: int, seed: int = 0, max_words: int = 8, parses: str = "dependency"
) -> list[Pair]:
    """``n`` random sentence pairs; relatedness = 1 + 4 * word overlap (Jaccard of the two
    word sets), rounded to 0.1 as in SICK. ``parses``: "dependency" (random dependency trees)
    or "constituency" (random binary bracketings of the same sentences)."""
    if parses not in ("dependency", "constituency"):
        raise ValueError(f"parses must be 'dependency' or 'constituency', got {parses!r}")
    rng = random.Random(seed)
    brackets = random.Random(seed + 7919)  # its own stream: the dependency pairs stay as they were
    words = [w for w in SYNTHETIC_WORDS if not w.startswith("-")]
    pairs = []
    for i in range(n):
        a = rng.choices(words, k=rng.randint(2, max_words))
        keep = rng.randint(0, len(a))
        b = rng.sample(a, keep) + rng.choices(words, k=rng.randint(max(0, 2 - keep), 4))
        rng.shuffle(b)
        jac = len(set(a) & set(b)) / len(set(a) | set(b))
        score = round(1 + 4 * jac, 1)
        ta = Tree.from_parents(_random_parents(rng, len(a)), a)
        tb = Tree.from_parents(_random_parents(rng, len(b)), b)
        if parses == "constituency":
            ta, tb = _random_bracketing(brackets, a), _random_bracketing(brackets, b)
        pairs.append(Pair(ta, tb, score, str(i + 1)))
    return pairs
