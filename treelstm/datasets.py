"""The former name of `treelstm.data` (SST, SICK, vocabularies, vectors), kept so that old
imports work: ``from treelstm.datasets import Vocab`` is ``from treelstm.data import Vocab``."""

from .data import *  # noqa: F403
from .data import __all__  # noqa: F401
