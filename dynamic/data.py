"""MNIST for the dynamic nets, held as tensors and normalised once (no per-sample transform
inside the training loop), or a synthetic stand-in for --dry-run when the files are absent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from treelstm.runtime import RunError

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "DataError",
    "MnistTensors",
    "get_data",
    "load_mnist",
    "normalise",
    "resolve_data_dir",
    "synthetic_mnist",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the tutorial's (and torchvision examples') constants


class DataError(RunError):
    """MNIST could not be found or downloaded."""


@dataclass
class MnistTensors:
    """MNIST held as tensors, normalised once.

    x_train [N, 784] float32, y_train [N] int64, x_test [M, 784], y_test [M]; `source` says
    where they came from (a path, or the synthetic stand-in).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    source: str

    def to(self, device: torch.device) -> MnistTensors:
        return MnistTensors(
            *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
            source=self.source,
        )


def normalise(images: Tensor) -> Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 784], exactly ToTensor() then Normalize(mean, std)."""
    x = images.reshape(images.shape[0], -1).float().div_(255)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def resolve_data_dir(data_dir: str | None) -> tuple[Path, str]:
    """-> (root that should hold MNIST/raw, where that choice came from)."""
    if data_dir:
        root, origin = Path(data_dir), "--data-dir"
    elif os.environ.get("TREELSTM_DATA"):
        root, origin = Path(os.environ["TREELSTM_DATA"]), "$TREELSTM_DATA"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root, origin = cache / "treelstm", "the default cache"
    root = root.expanduser()
    # Accept a path to MNIST/ or MNIST/raw/ itself: torchvision wants their grandparent.
    if root.name == "raw" and root.parent.name == "MNIST":
        root = root.parent.parent
    elif root.name == "MNIST" and (root / "raw").is_dir():
        root = root.parent
    return root, origin


def _how_to_get(root: Path, origin: str, reason: str) -> str:
    return (
        f"MNIST not found in {root / 'MNIST' / 'raw'} (from {origin}): {reason}; "
        "put the four IDX files there (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed), or point --data-dir / "
        "TREELSTM_DATA at a folder that holds MNIST/raw/, or run once with network access to "
        "download it (--download is on by default)."
    )


def load_mnist(root: Path, origin: str = "--data-dir", download: bool = False) -> MnistTensors:
    """Read MNIST from root/MNIST/raw with torchvision (downloading there if allowed).

    Raises DataError naming the path tried when the files are absent and cannot be fetched.
    """
    from torchvision.datasets import MNIST  # torchvision only when real data is read

    try:
        train, test = MNIST(str(root), train=True), MNIST(str(root), train=False)
    except RuntimeError as missing:
        if not download:
            raise DataError(_how_to_get(root, origin, "download disabled")) from missing
        try:
            train = MNIST(str(root), train=True, download=True)
            test = MNIST(str(root), train=False, download=True)
        except Exception as e:  # offline, read-only folder, partial files, ...
            raise DataError(_how_to_get(root, origin, f"download failed ({e})")) from e
    return MnistTensors(
        normalise(train.data), train.targets.long(), normalise(test.data), test.targets.long(),
        source=str(root / "MNIST" / "raw"),
    )  # fmt: skip


def synthetic_mnist(n_train: int, n_test: int, seed: int = 0) -> MnistTensors:
    """A learnable stand-in with MNIST's shapes: one random 28x28 prototype per class + noise.

    For --dry-run when the real files are absent; normalised exactly like MNIST.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 28, 28, generator=g)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(10, (n,), generator=g)
        img = (protos[y] + 0.35 * torch.randn(n, 28, 28, generator=g)).clamp_(0, 1)
        return normalise((img * 255).round().to(torch.uint8)), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return MnistTensors(x_train, y_train, x_test, y_test, source="synthetic stand-in")


def get_data(cfg, verbose: bool = True) -> MnistTensors:
    """The data a run uses: MNIST (sliced to --train-size/--test-size), or in --dry-run the
    synthetic stand-in when MNIST is absent (never downloading in a dry run)."""
    root, origin = resolve_data_dir(cfg.data_dir)
    try:
        data = load_mnist(root, origin, download=cfg.download and not cfg.dry_run)
    except DataError:
        if not cfg.dry_run:
            raise
        if verbose:
            print(f"dry run: MNIST not found in {root / 'MNIST' / 'raw'}; using synthetic data")
        data = synthetic_mnist(max(cfg.train_size, 256), max(cfg.test_size, 256), cfg.seed)
    if cfg.train_size:
        data.x_train, data.y_train = data.x_train[: cfg.train_size], data.y_train[: cfg.train_size]
    if cfg.test_size:
        data.x_test, data.y_test = data.x_test[: cfg.test_size], data.y_test[: cfg.test_size]
    return data
