"""The former home of the torchrun helpers, now `treelstm.runtime.dist` (and the atomic file
write, now `treelstm.runtime.files`); this name stays so that old imports keep working."""

from treelstm.runtime.dist import *  # noqa: F403
from treelstm.runtime.dist import __all__ as _dist_all
from treelstm.runtime.files import atomic_write

__all__ = [*_dist_all, "atomic_write"]
