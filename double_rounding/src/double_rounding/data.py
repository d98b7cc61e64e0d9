"""Data: MNIST / MNIST-100 held in memory (the CPU miniature) and ImageNet folders (the paper's recipe)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from effrepro.data import imagenet_folder, load_mnist, mnist100
from effrepro.errors import UsageError
from effrepro.train import DistInfo
from torch import Tensor

from double_rounding.config import DataConfig

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


def build_loaders(cfg: DataConfig, dist: DistInfo, seed: int = 0) -> tuple[object, object]:
    """``(train, test)`` loaders. MNIST-like: in memory; ImageNet: RandomResizedCrop 224 + flip / resize 256
    + center crop 224, DistributedSampler under torchrun."""
    if cfg.dataset in ("mnist", "mnist100"):
        train = _mnist_like(cfg, "train", cfg.train_size)
        test = _mnist_like(cfg, "test", cfg.test_size)
        return (InMemoryLoader(*train, cfg.batch_size, True, seed, dist.rank, dist.world_size, drop_last=True),
                InMemoryLoader(*test, cfg.eval_batch_size))
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import transforms as T

    root = imagenet_root(cfg)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_set = imagenet_folder(root, "train", T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                                          T.ToTensor(), normalize]))
    val_set = imagenet_folder(root, "val", T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]))
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
