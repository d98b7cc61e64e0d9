"""Model registry: CIFAR-100 zoo, ImageNet models and the MNIST-100 miniature models, by family and name."""

from __future__ import annotations

from collections.abc import Callable

from effrepro.errors import UsageError
from torch import nn

from deepkd.models.cifar import CIFAR_MODELS
from deepkd.models.imagenet import IMAGENET_MODELS, MobileNetV1
from deepkd.models.mnist import MNIST_MODELS

FAMILIES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "cifar": CIFAR_MODELS, "imagenet": IMAGENET_MODELS, "mnist": MNIST_MODELS,
}
DATASET_FAMILY = {"cifar100": "cifar", "imagenet": "imagenet", "mnist100": "mnist"}


def family_of(dataset: str) -> str:
    if dataset not in DATASET_FAMILY:
        raise UsageError(f"unknown dataset {dataset!r}; use one of: {', '.join(DATASET_FAMILY)}")
    return DATASET_FAMILY[dataset]


def build_model(name: str, num_classes: int, family: str = "cifar") -> nn.Module:
    """A model by name from a family (``cifar``, ``imagenet``, ``mnist``); unknown names list the choices."""
    if family not in FAMILIES:
        raise UsageError(f"unknown model family {family!r}; use one of: {', '.join(FAMILIES)}")
    zoo = FAMILIES[family]
    if name not in zoo:
        raise UsageError(f"unknown {family} model {name!r}; choose one of: {', '.join(zoo)}")
    return zoo[name](num_classes=num_classes)


__all__ = ["CIFAR_MODELS", "DATASET_FAMILY", "FAMILIES", "IMAGENET_MODELS", "MNIST_MODELS", "MobileNetV1",
           "build_model", "family_of"]
