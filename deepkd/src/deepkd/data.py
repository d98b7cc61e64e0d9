"""Datasets, augmentations and loaders for CIFAR-100, ImageNet and MNIST-100 (single process or DDP)."""

from __future__ import annotations

import random
from typing import Any

import torch
from effrepro.data import get_dataset
from effrepro.train import DistInfo
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from deepkd.config import TrainConfig, data_root

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Cutout:
    """Zero a random square whose side is drawn uniformly up to ``max_fraction`` of the image side.

    Reconstruction of MLKD's strong-view Cutout (the paper says only "Cutout, <= 50 % of the side"); applied to the
    normalised tensor, so the hole is at the dataset mean.
    """

    def __init__(self, max_fraction: float = 0.5) -> None:
        self.max_fraction = max_fraction

    def __call__(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        side = int(random.uniform(0, self.max_fraction) * min(h, w))
        if side == 0:
            return image
        cy, cx = random.randrange(h), random.randrange(w)
        y0, y1 = max(cy - side // 2, 0), min(cy + side // 2 + 1, h)
        x0, x1 = max(cx - side // 2, 0), min(cx + side // 2 + 1, w)
        image = image.clone()
        image[..., y0:y1, x0:x1] = 0
        return image


class RandomMagnitudeRandAugment:
    """RandAugment with 2 ops whose magnitude is drawn at random for every image (MLKD's strong view)."""

    def __init__(self, num_ops: int = 2, bins: int = 31) -> None:
        from torchvision.transforms import RandAugment

        self.ops = [RandAugment(num_ops=num_ops, magnitude=m, num_magnitude_bins=bins) for m in range(bins)]

    def __call__(self, image: Any) -> Any:
        return random.choice(self.ops)(image)


class TwoViews:
    def __init__(self, weak: Any, strong: Any) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.weak(image), self.strong(image)


def _transforms(cfg: TrainConfig, train: bool, two_views: bool) -> Any:
    from torchvision import transforms as T

    dataset = cfg.data.dataset
    if dataset == "mnist100":  # tensors in [0, 1]; the models normalise
        if not (train and two_views):
            return None
        strong = T.Compose([T.RandomAffine(degrees=10, translate=(0.1, 0.1)), Cutout()])
        return TwoViews(lambda x: x, strong)
    if dataset == "cifar100":
        normalize = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
        if not train:
            return normalize
        weak = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), normalize]) if cfg.data.augment \
            else normalize
    else:
        normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        size = cfg.data.image_size
        if not train:
            return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), normalize])
        weak = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), normalize])
    if not two_views:
        return weak
    crop = T.RandomCrop(32, padding=4) if dataset == "cifar100" else T.RandomResizedCrop(cfg.data.image_size)
    strong = T.Compose([crop, T.RandomHorizontalFlip(), RandomMagnitudeRandAugment(), normalize, Cutout()])
    return TwoViews(weak, strong)


def build_dataset(cfg: TrainConfig, train: bool, two_views: bool = False) -> Dataset:
    transform = _transforms(cfg, train, two_views)
    if cfg.data.dataset == "mnist100":
        size = cfg.data.train_size if train else cfg.data.test_size
        return get_dataset("mnist100", "train" if train else "test", transform=transform, size=size)
    split = "train" if train else ("test" if cfg.data.dataset == "cifar100" else "val")
    return get_dataset(cfg.data.dataset, split, root=data_root(cfg), transform=transform)


class EpochSeededSampler(Sampler[int]):
    """A fresh permutation per epoch from ``(seed, epoch)``: the data order is the same for every arm of an
    experiment and survives a resume, independently of how much other code draws from the global RNG."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)


def train_loader(dataset: Dataset, cfg: TrainConfig, dist: DistInfo) -> DataLoader:
    if dist.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler: Sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed,
                                              drop_last=True)
    else:
        sampler = EpochSeededSampler(len(dataset), cfg.seed)
    return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.workers,
                      pin_memory=dist.device.type == "cuda", drop_last=False, worker_init_fn=_seed_worker,
                      persistent_workers=cfg.data.workers > 0)


class _Shard(Dataset):
    """Every ``world``-th item from ``rank`` (no padding, so a distributed evaluation counts each item once)."""

    def __init__(self, dataset: Dataset, rank: int, world: int) -> None:
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def test_loader(dataset: Dataset, cfg: TrainConfig, dist: DistInfo) -> DataLoader:
    if dist.distributed:
        dataset = _Shard(dataset, dist.rank, dist.world_size)
    return DataLoader(dataset, batch_size=cfg.data.test_batch_size, shuffle=False, num_workers=cfg.data.workers,
                      pin_memory=dist.device.type == "cuda")
