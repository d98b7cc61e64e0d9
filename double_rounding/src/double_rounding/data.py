"""Data: MNIST / MNIST-100 held in memory (the CPU miniature), ImageNet folders and CIFAR-10 in its python layout
(the paper's recipes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from effrepro.data import imagenet_folder, load_mnist, mnist100
from effrepro.errors import UsageError
from effrepro.train import DistInfo
from torch import Tensor

from double_rounding.config import DataConfig

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


class InMemoryLoader:
    """Batches of a uint8 image tensor, normalised on the fly; a fixed permutation per (seed, epoch), so a
    resumed run sees the same batches. Sharded by rank like ``DistributedSampler``."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.sampler = self  # effrepro.train.Trainer calls loader.sampler.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        else:
            order = torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._indices()
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            x = self.images[index].unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
            yield x, self.labels[index]


def _mnist_like(cfg: DataConfig, split: str, size: int | None) -> tuple[Tensor, Tensor]:
    if cfg.dataset == "mnist":
        images, labels = load_mnist()[split]
        return (images[:size], labels[:size]) if size else (images, labels)
    return mnist100(split, size=size)


def imagenet_root(cfg: DataConfig) -> str:
    root = cfg.root or os.environ.get("DOUBLE_ROUNDING_DATA")
    if not root:
        raise UsageError("ImageNet needs a path: pass data.root=/path/to/imagenet (train/ and val/ inside) or "
                         "set DOUBLE_ROUNDING_DATA")
    return root


def cifar10_root(cfg: DataConfig) -> str:
    """The folder holding ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``)."""
    root = cfg.root or os.environ.get("DOUBLE_ROUNDING_DATA")
    if not root:
        raise UsageError("CIFAR-10 needs a path: pass data.root=/path/containing/cifar-10-batches-py or set "
                         "DOUBLE_ROUNDING_DATA")
    folder = Path(root).expanduser() / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)} (the python version of the "
                         "dataset, extracted; nothing is downloaded)")
    return root


def data_root(cfg: DataConfig) -> str | None:
    """The dataset's folder, checked (a clear error before anything runs); None for the in-memory MNIST sets."""
    if cfg.dataset == "imagenet":
        return imagenet_root(cfg)
    if cfg.dataset == "cifar10":
        return cifar10_root(cfg)
    return None


def cifar10(root: str, train: bool, transform: Any) -> Any:
    """CIFAR-10 as effrepro.data reads CIFAR-100: torchvision's dataset class, ``download=False``; it checks the
    files' MD5 sums before unpickling them, so a damaged or crafted file is an error and never runs."""
    from torchvision.datasets import CIFAR10

    try:
        return CIFAR10(root, train=train, transform=transform, download=False)
    except RuntimeError as exc:
        raise UsageError(f"CIFAR-10 under {root} is damaged: {exc}") from None


def _datasets(cfg: DataConfig) -> tuple[Any, Any]:
    """(train, test) datasets of ImageNet (RandomResizedCrop 224 + flip / resize 256 + center crop 224) or CIFAR-10
    (random crop 32 with 4-pixel padding + flip / as is)."""
    from torchvision import transforms as T

    if cfg.dataset == "cifar10":
        root, normalize = cifar10_root(cfg), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
        return (cifar10(root, True, T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                               normalize])),
                cifar10(root, False, T.Compose([T.ToTensor(), normalize])))
    root, normalize = imagenet_root(cfg), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return (imagenet_folder(root, "train", T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                                      T.ToTensor(), normalize])),
            imagenet_folder(root, "val", T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])))


def build_loaders(cfg: DataConfig, dist: DistInfo, seed: int = 0) -> tuple[object, object]:
    """``(train, test)`` loaders. MNIST-like: in memory; ImageNet / CIFAR-10: torchvision datasets with the
    paper's augmentation (see ``_datasets``), DistributedSampler under torchrun."""
    if cfg.dataset in ("mnist", "mnist100"):
        train = _mnist_like(cfg, "train", cfg.train_size)
        test = _mnist_like(cfg, "test", cfg.test_size)
        return (InMemoryLoader(*train, cfg.batch_size, True, seed, dist.rank, dist.world_size, drop_last=True),
                InMemoryLoader(*test, cfg.eval_batch_size))
    from torch.utils.data import DataLoader, DistributedSampler

    train_set, val_set = _datasets(cfg)
    sampler = DistributedSampler(train_set, dist.world_size, dist.rank, seed=seed) if dist.distributed else None
    pin = dist.device.type == "cuda"
    train = DataLoader(train_set, cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                       num_workers=cfg.workers, pin_memory=pin, persistent_workers=cfg.workers > 0)
    test = DataLoader(val_set, cfg.eval_batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin)
    return train, test


def calibration_batch(loader: object, images: int) -> Tensor:
    """The first ``images`` training inputs (for the activation-scale initialisation)."""
    parts, count = [], 0
    for x, _ in loader:
        parts.append(x)
        count += len(x)
        if count >= images:
            break
    return torch.cat(parts)[:images]
