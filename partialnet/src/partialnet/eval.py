"""``partialnet eval``: ImageNet top-1 / top-5 of a checkpoint (ours, or the official Lightning / ``.pth`` files),
in the training form or the fused deploy form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from effrepro.data import imagenet_folder
from effrepro.errors import UsageError
from effrepro.train import load_checkpoint, load_state_dict_checked
from torch import nn
from torch.utils.data import DataLoader

from partialnet.data import AugmentConfig, check_image_size, imagenet_transforms
from partialnet.deploy import deploy_copy
from partialnet.models import checkpoint_filter_fn
from partialnet.train import accuracy_counts, build_model


def checkpoint_state(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights in a checkpoint (``partialnet train``'s ``last.pt``, a bare state dict, or an official
    one) and the training config stored with it (empty if none)."""
    obj = load_checkpoint(path, expect=("train-state", "state-dict"))
    if not isinstance(obj, dict):
        raise UsageError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    if use_ema:
        if not isinstance(obj.get("ema"), dict):
            raise UsageError(f"checkpoint {path} has no EMA weights (trained without ema_decay); drop --ema")
        return obj["ema"], config
    return checkpoint_filter_fn(obj), config


def load_model(name: str, checkpoint: str | Path | None, num_classes: int, use_ema: bool = False,
               **model_kwargs: Any) -> nn.Module:
    """Build ``name`` and load ``checkpoint`` into it; a checkpoint of another variant is a clear error."""
    state: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {}
    if checkpoint is not None:
        state, config = checkpoint_state(checkpoint, use_ema)
        trained = config.get("model")
        if trained and trained != name:
            raise UsageError(f"checkpoint {checkpoint} was trained as {trained}, not {name}; pass --model {trained}")
        model_kwargs = {**config.get("model_kwargs", {}), **model_kwargs}
        classifier = state.get("classifier.weight")
        if classifier is not None and classifier.shape[0] != num_classes:
            raise UsageError(f"checkpoint {checkpoint} has {classifier.shape[0]} classes but the data has "
                             f"{num_classes}; evaluate it on the dataset it was trained on")
    model = build_model(name, num_classes, **model_kwargs)
    if checkpoint is not None:
        load_state_dict_checked(model, state, source=f"checkpoint {checkpoint}")
    return model.eval()


def evaluate_imagenet(name: str, data: str, checkpoint: str | None = None, deploy: bool = False, use_ema: bool = False,
                      image_size: int = 224, crop_ratio: float = 0.9, batch_size: int = 256, workers: int = 8,
                      device: str | None = None) -> dict[str, Any]:
    """Top-1 / top-5 on ``<data>/val`` with the official eval transform (bicubic resize to size / crop_ratio,
    centre crop)."""
    check_image_size(image_size)
    aug = AugmentConfig(image_size=image_size, test_crop_ratio=crop_ratio)
    dataset = imagenet_folder(data, "val", imagenet_transforms(aug, training=False))
    model = load_model(name, checkpoint, len(dataset.classes), use_ema)
    if deploy:
        model = deploy_copy(model)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = DataLoader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda")
    result = accuracy_counts(model.to(dev), loader, dev)
    return {"model": name, "checkpoint": checkpoint, "deploy": deploy, "ema": use_ema, **result}
