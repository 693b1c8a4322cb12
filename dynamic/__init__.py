"""dynamic: networks whose structure is drawn on every forward pass (the MNIST demos), and
autobatching of per-example code (`dynamic.autobatch`)."""

from dynamic.autobatch import autobatch
from dynamic.nets import HaltingNet, RandomBranchNet, RandomDepthNet

__all__ = ["RandomDepthNet", "RandomBranchNet", "HaltingNet", "autobatch"]
