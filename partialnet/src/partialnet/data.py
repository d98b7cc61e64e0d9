"""Data pipelines: ImageNet folders with the official timm augmentation recipe, and MNIST-100 for the CPU
miniature.

MNIST-100 images are 28x56 (two digits side by side). They are padded with background to 32x64 (2 pixels
top/bottom, 4 left/right; LeNet padded MNIST to 32x32 alike) so that every down-sampling step divides
evenly; the miniature models use a 2x2/2
patch embedding instead of 4x4/4, giving 16x32, 8x16, 4x8 and 2x4 maps in the four stages (ImageNet at 224:
56, 28, 14, 7) -- total stride 16 instead of 32, so the last stage's self-attention still sees 8 tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from effrepro.data import imagenet_folder, mnist100
from effrepro.errors import UsageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST100_PADDED = (32, 64)


@dataclass
class AugmentConfig:
    """The augmentation fields of the official ``cfg/PartialNet_*.yaml`` (timm names)."""

    image_size: int = 224
    multi_scale: str | list[int] | None = "192_280"  # train at 192 before epoch 280, then at image_size
    test_crop_ratio: float = 0.9
    color_jitter: float = 0.0
    aa: str | None = None
    train_interpolation: str = "bicubic"
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1


def parse_multi_scale(spec: str | list[int] | None) -> tuple[int, int] | None:
    """``"192_280"`` or ``[192, 280]`` -> ``(192, 280)``: (early image size, epoch from which the full size is
    used). Unquoted ``192_280`` is the integer 192280 in YAML, hence the hint."""
    if spec is None or spec == "":
        return None
    parts = spec if isinstance(spec, (list, tuple)) else str(spec).split("_")
    try:
        size, epoch = (int(part) for part in parts)
    except ValueError:
        raise UsageError(f"multi_scale must be 'SIZE_EPOCH' (quoted in YAML: augment.multi_scale=\"'192_280'\") or "
                         f"[SIZE, EPOCH], got {spec!r}") from None
    check_image_size(size)
    return size, epoch


def check_image_size(size: int, stride: int = 32) -> None:
    """Every PartialNet variant halves the map 5 times and its channel attention needs >= 2 positions."""
    if size < stride or size % stride:
        raise UsageError(f"image size {size} is not a positive multiple of the network stride {stride}; "
                         f"use e.g. {max(stride, round(size / stride) * stride)}")


def imagenet_transforms(aug: AugmentConfig, size: int | None = None, training: bool = True) -> Any:
    from timm.data import create_transform

    size = size or aug.image_size
    if training:
        return create_transform(input_size=size, is_training=True, color_jitter=aug.color_jitter,
                                auto_augment=aug.aa, interpolation=aug.train_interpolation, re_prob=aug.reprob,
                                re_mode=aug.remode, re_count=aug.recount, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return create_transform(input_size=size, is_training=False, interpolation="bicubic",
                            crop_pct=aug.test_crop_ratio, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only: two models trained with the same seed
    see the same data order (whatever their initialisation consumed from the global RNG), and a resumed run
    continues with the order it would have had. The single-process counterpart of ``DistributedSampler``."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=gen).tolist())

    def __len__(self) -> int:
        return self.length


class MultiScaleSampler(Sampler[int]):
    """Wraps a sampler; ``set_epoch`` (called by the Trainer before each epoch) also switches the dataset's
    transform to the early, smaller size before ``switch_epoch`` (official ``multi_scale: 192_280``)."""

    def __init__(self, sampler: Sampler[int], dataset: Any, early_transform: Any, late_transform: Any,
                 switch_epoch: int) -> None:
        self.sampler, self.dataset = sampler, dataset
        self.early, self.late, self.switch_epoch = early_transform, late_transform, switch_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.transform = self.early if epoch < self.switch_epoch else self.late
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def imagenet_loaders(root: str, aug: AugmentConfig, batch_size: int, eval_batch_size: int, workers: int,
                     distributed: bool, seed: int = 0) -> tuple[DataLoader, DataLoader, int]:
    """Train / val loaders on ``<root>/{train,val}/<class>/*``; returns them and the class count."""
    check_image_size(aug.image_size)
    late = imagenet_transforms(aug, training=True)
    train_set = imagenet_folder(root, "train", late)
    val_set = imagenet_folder(root, "val", imagenet_transforms(aug, training=False))
    if len(train_set.classes) != len(val_set.classes):
        raise UsageError(f"{root}: train has {len(train_set.classes)} classes but val {len(val_set.classes)}")
    base: Sampler[int] = (DistributedSampler(train_set, seed=seed) if distributed
                          else EpochSeededSampler(len(train_set), seed))
    schedule = parse_multi_scale(aug.multi_scale)
    sampler: Sampler[int] = base
    if schedule is not None:
        early = imagenet_transforms(aug, size=schedule[0], training=True)
        sampler = MultiScaleSampler(base, train_set, early, late, schedule[1])
    val_sampler = DistributedSampler(val_set, shuffle=False) if distributed else SequentialSampler(val_set)
    pin = torch.cuda.is_available()
    train = DataLoader(train_set, batch_size, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=True,
                       persistent_workers=False)
    val = DataLoader(val_set, eval_batch_size, sampler=val_sampler, num_workers=workers, pin_memory=pin)
    return train, val, len(train_set.classes)


# ----------------------------------------------------------------------------------------------------------
# MNIST-100 (CPU miniature)
# ----------------------------------------------------------------------------------------------------------
class PaddedMnist100(Dataset):
    """MNIST-100 as normalised float ``[1, 32, 64]`` tensors (background padding), labels 0..99."""

    def __init__(self, split: str, size: int | None = None, seed: int = 0) -> None:
        images, labels = mnist100(split, size=size, seed=seed)
        pixels = images.float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
        pad_value = -MNIST_MEAN / MNIST_STD  # a black pixel after normalisation
        self.images = F.pad(pixels.unsqueeze(1), (4, 4, 2, 2), value=pad_value)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def random_shift(images: Tensor, max_shift: int) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (the classic MNIST augmentation), filling with the
    border (background) value. Draws from the global torch RNG, which training checkpoints save."""
    if max_shift <= 0:
        return images
    batch = images.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, 2)).tolist()
    out = torch.empty_like(images)
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    height, width = images.shape[-2:]
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, :, max_shift + dy: max_shift + dy + height, max_shift + dx: max_shift + dx + width]
    return out


def mnist100_loaders(train_size: int, test_size: int, batch_size: int, seed: int,
                     distributed: bool = False) -> tuple[DataLoader, DataLoader]:
    """MNIST-100 train (pairs from MNIST train) / test (pairs from MNIST test) loaders; the pairs are fixed,
    the order per epoch depends on ``(seed, epoch)`` only."""
    train_set = PaddedMnist100("train", size=train_size, seed=0)
    test_set = PaddedMnist100("test", size=test_size, seed=0)
    sampler: Sampler[int] = (DistributedSampler(train_set, seed=seed) if distributed
                             else EpochSeededSampler(len(train_set), seed))
    train = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True)
    test = DataLoader(test_set, 500, shuffle=False)
    return train, test
