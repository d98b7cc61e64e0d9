"""Datasets for KernelDNA runs: ImageNet / CIFAR-100 (local paths) and the real-digit miniature tasks.

* ``mnist100``: two real MNIST digits side by side (28x56, 100 classes) from ``effrepro.data``.
* ``clutter``: *digits-in-clutter* (the paper's synthetic gating task, built from real MNIST digits): a 3x32x32
  image whose channels each hold one digit at a random position; one random channel holds the target digit,
  the other two distractor digits of other classes. The informative channel is marked only by a global cue, a
  +0.3 offset over the whole channel. Finding it needs a per-sample, per-channel decision, which an
  input-dependent channel gate makes directly and a static network has to emulate.
* ``clutter16``: the same task at half resolution (3x16x16, each digit 2x2-average-pooled to 14x14, shifts of
  0-2 px): a quarter of the pixels, so the CPU miniature can train every arm and seed to its plateau.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from effrepro.errors import UsageError
from torch import Tensor

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CLUTTER_CANVAS, CLUTTER_CUE = 32, 0.3
SMALL_DATASETS = ("mnist100", "clutter", "clutter16")
CLUTTER_SCALES = {"clutter": 1, "clutter16": 2}  # digit and canvas downsampling of each variant


def _generator(name: str, split: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"kerneldna/{name}/{split}/{seed}".encode()))


def clutter_digits(split: str, size: int, seed: int = 0, scale: int = 1) -> tuple[Tensor, Tensor]:
    """Digits-in-clutter from the MNIST ``split``: ``(float32 [N,3,32,32] in [0,1.3], int64 labels [N])``;
    ``scale=2``: digits and canvas at half resolution (``[N,3,16,16]``, its own random stream)."""
    from effrepro.data import load_mnist

    mnist = load_mnist()
    if split not in mnist:
        raise UsageError(f"unknown split {split!r} for clutter; use one of: {', '.join(mnist)}")
    digits, labels = mnist[split]
    if scale not in (1, 2):
        raise UsageError(f"clutter scale must be 1 or 2, got {scale}")
    gen = _generator("clutter" if scale == 1 else f"clutter/{scale}", split, seed)
    n = int(size)
    target = torch.randint(len(labels), (n,), generator=gen)
    y = labels[target]
    # distractors: redraw until their class differs from the target's (a few rounds suffice)
    distractors = torch.randint(len(labels), (n, 2), generator=gen)
    for _ in range(50):
        clash = labels[distractors] == y[:, None]
        if not clash.any():
            break
        distractors[clash] = torch.randint(len(labels), (int(clash.sum()),), generator=gen)
    informative = torch.randint(3, (n,), generator=gen)
    channel_digits = distractors.new_empty(n, 3)
    rest = torch.ones(n, 3, dtype=torch.bool)
    rest[torch.arange(n), informative] = False
    channel_digits[~rest] = target
    channel_digits[rest] = distractors.reshape(-1)
    side, canvas = 28 // scale, CLUTTER_CANVAS // scale
    pad = canvas - side
    shifts = torch.randint(pad + 1, (n, 3, 2), generator=gen)
    images = torch.zeros(n, 3, canvas, canvas)
    for dy in range(pad + 1):  # paste per offset: vectorised over samples sharing one shift
        for dx in range(pad + 1):
            hit = (shifts[..., 0] == dy) & (shifts[..., 1] == dx)
            idx = hit.nonzero(as_tuple=True)
            glyphs = digits[channel_digits[idx]].float() / 255.0
            if scale > 1:
                glyphs = torch.nn.functional.avg_pool2d(glyphs[:, None], scale)[:, 0]
            images[idx[0], idx[1], dy:dy + side, dx:dx + side] = glyphs
    images[torch.arange(n), informative] += CLUTTER_CUE
    return images, y


def small_dataset(name: str, split: str, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Normalised float images and labels of a miniature task (``mnist100``, ``clutter`` or ``clutter16``)."""
    if size <= 0:
        raise UsageError(f"dataset size must be positive, got {size}")
    if name == "mnist100":
        from effrepro.data import mnist100

        images, labels = mnist100(split, size=size, seed=seed)
        return (images.float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)).unsqueeze(1), labels
    if name in CLUTTER_SCALES:
        images, labels = clutter_digits(split, size, seed, CLUTTER_SCALES[name])
        return images.sub_(MNIST_MEAN).div_(MNIST_STD), labels
    raise UsageError(f"unknown miniature dataset {name!r}; use one of: {', '.join(SMALL_DATASETS)}")


def dataset_shape(name: str) -> tuple[int, int]:
    """``(input channels, classes)`` of a dataset."""
    shapes = {"mnist100": (1, 100), "clutter": (3, 10), "clutter16": (3, 10), "imagenet": (3, 1000),
              "cifar100": (3, 100)}
    if name not in shapes:
        raise UsageError(f"unknown dataset {name!r}; use one of: {', '.join(shapes)}")
    return shapes[name]


@dataclass
class TensorBatches:
    """Mini-batches of in-memory tensors, reshuffled every epoch from ``(seed, epoch)``; sharded under DDP.

    Every sample is visited once per epoch (the last batch may be smaller unless ``drop_last``): the
    official script's stray ``break`` (one batch per epoch) has no counterpart here.
    """

    images: Tensor
    labels: Tensor
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    epoch: int = 0

    @property
    def sampler(self) -> TensorBatches:  # the Trainer calls loader.sampler.set_epoch(epoch)
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.labels), self.world_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._indices()
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


def imagenet_transforms(train: bool, image_size: int = 224, resize: int = 256) -> Callable:
    """Official ImageNet preprocessing: RandomResizedCrop + flip / resize 256 + center-crop 224."""
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])


def cifar_transforms(train: bool) -> Callable:
    from torchvision import transforms as T

    norm = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    if train:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.ToTensor(), norm])
