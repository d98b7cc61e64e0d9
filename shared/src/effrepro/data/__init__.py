"""The data registry: embedded real assets (no network) and the full-scale local loaders (DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from effrepro.data.assets import ASSET_PACKAGES, asset_file, cache_dir
from effrepro.data.coco_digits import DIGIT_CLASSES, write_coco_digits
from effrepro.data.images import (
    TensorImageDataset,
    cifar100,
    imagenet_folder,
    load_mnist,
    mnist100,
    sklearn_digits,
)
from effrepro.data.llm import EMBEDDED_MODELS, embedded_model_dir, load_target, resolve_model_dir
from effrepro.data.text import mtbench_questions, sharegpt_conversations, text_corpus
from effrepro.errors import UsageError

__all__ = [
    "ASSET_PACKAGES", "EMBEDDED_MODELS", "TensorImageDataset", "asset_file", "cache_dir", "cifar100",
    "embedded_model_dir", "get_dataset", "imagenet_folder", "load_mnist", "load_target", "mnist100",
    "mtbench_questions", "resolve_model_dir", "sharegpt_conversations", "sklearn_digits", "text_corpus",
    "DATASETS", "DIGIT_CLASSES", "write_coco_digits",
]


def _mnist(split: str, transform: Any = None, **_: Any) -> TensorImageDataset:
    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r} for mnist; use train, val or test")
    images, labels = load_mnist()[split]
    return TensorImageDataset(images, labels, transform)


def _mnist100(split: str, transform: Any = None, size: int | None = None, seed: int = 0, **_: Any) -> Any:
    images, labels = mnist100(split, size=size, seed=seed)
    return TensorImageDataset(images, labels, transform)


def _imagenet(split: str, root: str | None = None, transform: Any = None, **_: Any) -> Any:
    if not root:
        raise UsageError("ImageNet needs a path: pass --data /path/to/imagenet (train/ and val/ inside)")
    return imagenet_folder(root, split, transform)


def _cifar100(split: str, root: str | None = None, transform: Any = None, **_: Any) -> Any:
    if not root:
        raise UsageError("CIFAR-100 needs a path: pass --data /path/containing/cifar-100-python")
    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r} for cifar100; use train or test")
    return cifar100(root, train=split == "train", transform=transform)


DATASETS: dict[str, Callable[..., Any]] = {
    "mnist": _mnist,
    "mnist100": _mnist100,
    "imagenet": _imagenet,
    "cifar100": _cifar100,
}


def get_dataset(name: str, split: str, **kwargs: Any) -> Any:
    """A torch Dataset by registry name (``mnist``, ``mnist100``, ``imagenet``, ``cifar100``)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](split, **kwargs)
