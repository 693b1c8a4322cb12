"""dynamic: networks whose structure is drawn on every forward pass (the MNIST demos)."""

from dynamic.nets import HaltingNet, RandomBranchNet, RandomDepthNet

__all__ = ["RandomDepthNet", "RandomBranchNet", "HaltingNet"]
