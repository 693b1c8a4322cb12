"""Trees in and out: one module per format, and binarisation.

    ptb        Penn Treebank bracket text: from_ptb, to_ptb, read_ptb, write_ptb, normalize_token
    parents    parent arrays (SICK layout): from_parents (dependency heads, 1-based, 0 = root),
               from_cparents (constituency), to_parents, to_cparents, read_parents
    nltk_tree  nltk.Tree both ways: from_nltk, to_nltk (nltk imported on first call)
    binarize   binarize / unbinarize, and the marks they use: Factored, Collapsed

``Tree.from_ptb`` and the other ``Tree`` classmethods call these. See docs/trees.md.
"""

from .binarize import FACTORS, Collapsed, Factored, binarize, unbinarize
from .nltk_tree import from_nltk, to_nltk
from .parents import from_cparents, from_parents, read_parents, to_cparents, to_parents
from .ptb import from_ptb, normalize_token, read_ptb, to_ptb, write_ptb

__all__ = [
    "FACTORS",
    "Collapsed",
    "Factored",
    "binarize",
    "from_cparents",
    "from_nltk",
    "from_parents",
    "from_ptb",
    "normalize_token",
    "read_parents",
    "read_ptb",
    "to_cparents",
    "to_nltk",
    "to_parents",
    "to_ptb",
    "unbinarize",
    "write_ptb",
]
