"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch.

    trees -> build_schedule -> TreeLSTM(encoder) -> head
"""

from .cells import ChildSumCell, NaryCell, TreeCell
from .executor import STRATEGIES, evaluate_tree, run
from .models import Encoded, TreeLSTM
from .schedule import Schedule, build_schedule, collate
from .tree import FlatTree, Tree, normalize_token, read_parents, read_ptb, write_ptb

__all__ = [
    "STRATEGIES",
    "ChildSumCell",
    "Encoded",
    "FlatTree",
    "NaryCell",
    "Schedule",
    "Tree",
    "TreeCell",
    "TreeLSTM",
    "build_schedule",
    "collate",
    "evaluate_tree",
    "normalize_token",
    "read_parents",
    "read_ptb",
    "run",
    "write_ptb",
]
