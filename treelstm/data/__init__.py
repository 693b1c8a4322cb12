"""The data of Tai, Socher & Manning (2015): Stanford Sentiment Treebank, SICK, word vectors.

- `load_sst` (``sst``): PTB bracket trees with a 0..4 label on every node; the fine (5 classes)
  and binary (neutral roots dropped, 3 classes at every node) protocols.
- `load_sick` (``sick``): sentence pairs with a relatedness in [1, 5], as dependency trees or
  (``parses="constituency"``) as binarised constituency trees.
- `Vocab`, `load_vectors` (``vectors``): vocabularies and GloVe-format vectors.
- `find_data`, `download_sst` (``locate``): where the files are; the official SST zip.
- `synthetic_sst`, `synthetic_sick` (``synthetic``): generated stand-ins for dry runs.

Every reader names ``file:line`` in its errors (bad UTF-8 included) and refuses an empty split.
Parsing needs no torch; only `load_vectors` does.
"""

from .locate import SST_MD5, SST_URL, DataNotFound, download_sst, find_data
from .sick import SICK_FILES, SICK_PARSES, SICK_SPLITS, Pair, load_sick, read_sick_split, sick_files
from .sst import SST_LABELS, SST_SPLITS, binarize_labels, load_sst
from .synthetic import SYNTHETIC_WORDS, synthetic_sick, synthetic_sst
from .text import read_lines
from .vectors import Coverage, Vocab, find_vectors, is_uncased, load_vectors

__all__ = [
    "SICK_FILES",
    "SICK_PARSES",
    "SICK_SPLITS",
    "SST_LABELS",
    "SST_MD5",
    "SST_SPLITS",
    "SST_URL",
    "SYNTHETIC_WORDS",
    "Coverage",
    "DataNotFound",
    "Pair",
    "Vocab",
    "binarize_labels",
    "download_sst",
    "find_data",
    "find_vectors",
    "is_uncased",
    "load_sick",
    "load_sst",
    "load_vectors",
    "read_lines",
    "read_sick_split",
    "sick_files",
    "synthetic_sick",
    "synthetic_sst",
]
