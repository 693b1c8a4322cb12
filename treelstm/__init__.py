"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch.

trees -> build_schedule -> TreeLSTM(encoder) -> head
sentences -> build_sequences -> SequenceLSTM (the paper's sequential baselines) -> head
"""

from .cells import ChildSumCell, NaryCell, TreeCell
from .datasets import DataNotFound, Pair, Vocab, find_data, load_sick, load_sst, load_vectors
from .executor import STRATEGIES, evaluate_tree, run
from .formats import (
    Collapsed,
    Factored,
    binarize,
    normalize_token,
    read_parents,
    read_ptb,
    unbinarize,
    write_ptb,
)
from .labels import IGNORE_INDEX, LabelMap
from .models import (
    Encoded,
    RelatednessModel,
    SentimentModel,
    TreeLSTM,
    relatedness_loss,
    relatedness_target,
)
from .schedule import Schedule, build_schedule, collate
from .sequence import SequenceBatch, SequenceLSTM, build_sequences, sequence_model
from .tree import FlatTree, Tree

__all__ = [
    "IGNORE_INDEX",
    "STRATEGIES",
    "ChildSumCell",
    "Collapsed",
    "DataNotFound",
    "Encoded",
    "Factored",
    "FlatTree",
    "LabelMap",
    "NaryCell",
    "Pair",
    "RelatednessModel",
    "SentimentModel",
    "Vocab",
    "Schedule",
    "SequenceBatch",
    "SequenceLSTM",
    "Tree",
    "TreeCell",
    "TreeLSTM",
    "binarize",
    "build_schedule",
    "build_sequences",
    "collate",
    "evaluate_tree",
    "find_data",
    "load_sick",
    "load_sst",
    "load_vectors",
    "normalize_token",
    "read_parents",
    "read_ptb",
    "relatedness_loss",
    "relatedness_target",
    "run",
    "sequence_model",
    "unbinarize",
    "write_ptb",
]
