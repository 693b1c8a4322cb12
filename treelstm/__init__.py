"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch.

trees -> build_schedule -> TreeLSTM(encoder) -> head;  load_model(run).predict(trees)
"""

from .cells import ChildSumCell, NaryCell, TreeCell
from .data import DataNotFound, Pair, Vocab, find_data, load_sick, load_sst, load_vectors
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
from .tree import FlatTree, Tree

# Last: inference sits on top of everything above (it rebuilds a run's model with train's code).
from .inference import TrainedModel, load_model  # noqa: E402  (isort: skip)

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
    "Tree",
    "TreeCell",
    "TreeLSTM",
    "TrainedModel",
    "binarize",
    "build_schedule",
    "collate",
    "evaluate_tree",
    "find_data",
    "load_model",
    "load_sick",
    "load_sst",
    "load_vectors",
    "normalize_token",
    "read_parents",
    "read_ptb",
    "relatedness_loss",
    "relatedness_target",
    "run",
    "unbinarize",
    "write_ptb",
]
