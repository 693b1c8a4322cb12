"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch.

trees -> build_schedule -> TreeLSTM(encoder) -> head
"""

from .cells import ChildSumCell, NaryCell, TreeCell
from .datasets import DataNotFound, Pair, Vocab, find_data, load_sick, load_sst, load_vectors
from .executor import STRATEGIES, evaluate_tree, run
from .models import (
    Encoded,
    RelatednessModel,
    SentimentModel,
    TreeLSTM,
    relatedness_loss,
    relatedness_target,
)
from .schedule import Schedule, build_schedule, collate
from .tree import FlatTree, Tree, normalize_token, read_parents, read_ptb, write_ptb

__all__ = [
    "STRATEGIES",
    "ChildSumCell",
    "DataNotFound",
    "Encoded",
    "FlatTree",
    "NaryCell",
    "Pair",
    "RelatednessModel",
    "SentimentModel",
    "Vocab",
    "Schedule",
    "Tree",
    "TreeCell",
    "TreeLSTM",
    "build_schedule",
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
    "write_ptb",
]
