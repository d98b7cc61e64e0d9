"""The official ImageNet recipes as :class:`~kerneldna.train.TrainConfig` (``configs/<arch>_imagenet.yaml`` hold
the same values); used by the ``train`` command and by ``reproduce --scale full``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from effrepro.config import load_config
from effrepro.errors import UsageError

if TYPE_CHECKING:  # imported in recipe_config: the CLI lists RECIPES in its --help without loading torch
    from kerneldna.train import TrainConfig

RECIPES: dict[str, dict] = {
    "resnet18": {"arch": "resnet18", "epochs": 90, "warmup_epochs": 0, "lr": 0.1, "weight_decay": 1e-4},
    "resnet50": {"arch": "resnet50", "epochs": 300, "warmup_epochs": 20, "lr": 0.1, "weight_decay": 1e-4},
    "mobilenetv2_100": {"arch": "mobilenetv2_100", "epochs": 150, "warmup_epochs": 0, "lr": 0.05,
                        "weight_decay": 4e-5},
    "mobilenetv2_050": {"arch": "mobilenetv2_050", "epochs": 150, "warmup_epochs": 0, "lr": 0.05,
                        "weight_decay": 4e-5},
}
COMMON = {"dataset": "imagenet", "batch_size": 256, "momentum": 0.9, "eta_min": 0.0, "variant": "kerneldna"}


def recipe_config(arch: str, overrides: list[str] | None = None) -> TrainConfig:
    """The official recipe of ``arch`` as a :class:`TrainConfig`, with ``key=value`` overrides."""
    if arch not in RECIPES:
        raise UsageError(f"no official recipe for {arch!r}; use one of {', '.join(RECIPES)} or --config FILE")
    from kerneldna.train import TrainConfig

    return load_config({**COMMON, **RECIPES[arch]}, TrainConfig, overrides)
