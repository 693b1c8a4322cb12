"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch.

trees -> build_schedule -> TreeLSTM(encoder) -> head;  load_model(run).predict(trees)
sentences -> build_sequences -> SequenceLSTM (the paper's sequential baselines) -> head
"""

from .cells import ChildSumCell, NaryCell, TreeCell, check_cell
from .data import DataNotFound, Pair, Vocab, find_data, load_sick, load_sst, load_vectors
from .executor import (
    DIRECTIONS,
    STRATEGIES,
    child_slots,
    evaluate_bidirectional,
    evaluate_tree,
    explain,
    fused_kernel,
    run,
)
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
    BiTreeLSTM,
    Encoded,
    RelatednessModel,
    SentimentModel,
    TreeLSTM,
    build_cell,
    relatedness_loss,
    relatedness_target,
)
from .schedule import Schedule, build_schedule, collate
from .sequence import SequenceBatch, SequenceLSTM, build_sequences, sequence_model
from .tree import FlatTree, Tree

__all__ = [
    "DIRECTIONS",
    "IGNORE_INDEX",
    "STRATEGIES",
    "BiTreeLSTM",
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
    "TrainedModel",
    "binarize",
    "build_cell",
    "build_schedule",
    "build_sequences",
    "check_cell",
    "child_slots",
    "collate",
    "evaluate_bidirectional",
    "evaluate_tree",
    "explain",
    "find_data",
    "fused_kernel",
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
    "sequence_model",
    "unbinarize",
    "write_ptb",
]


def __getattr__(name: str):
    """`load_model` and `TrainedModel` (treelstm.inference) on first use: inference rebuilds a
    run's model with the trainer's code, and importing ``treelstm.train`` with the package
    would make ``python -m treelstm.train`` find itself already imported (runpy warns)."""
    if name in ("load_model", "TrainedModel"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'treelstm' has no attribute {name!r}")
