"""Training with the official recipes on one process or under ``torchrun`` (DDP via ``effrepro.train``).

Recipe: SGD (momentum 0.9, no Nesterov), weight decay on *all* parameters (BN, biases and the static
attentions included, as official; ``wd_static_attn=false`` is the flagged deviation), linear warm-up
``lr·(e+1)/W`` then cosine to ``eta_min``, stepped once per epoch; plain cross-entropy. ``batch_size`` is the
total batch (divided by the number of ranks under DDP, as the official script does). Every epoch sees the
whole training set (the official ``train()`` has a stray ``break`` that trains one batch per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from effrepro.config import config_to_dict
from effrepro.errors import UsageError
from effrepro.train import DistInfo, Trainer, dist_setup, load_checkpoint, load_state_dict_checked, seed_everything
from torch import nn

from kerneldna.convert import check_sharing, sharing_groups
from kerneldna.data import (
    SMALL_DATASETS,
    TensorBatches,
    cifar_transforms,
    dataset_shape,
    imagenet_transforms,
    small_dataset,
)
from kerneldna.eval import evaluate
from kerneldna.models import build_model


@dataclass
class TrainConfig:
    arch: str = "resnet18"
    variant: str = "kerneldna"
    dataset: str = "imagenet"
    data: str | None = None  # ImageNet / CIFAR-100 root (or $KERNELDNA_DATA)
    epochs: int = 90
    warmup_epochs: int = 0
    batch_size: int = 256  # total over all ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    wd_static_attn: bool = True  # official: static attentions are decayed like everything else
    eta_min: float = 0.0
    schedule_per: str = "epoch"  # official: the cosine steps once per epoch; "step": per iteration (miniature)
    seed: int = 0
    workers: int = 8
    image_size: int = 224
    eval_resize: int = 256
    amp: bool = False
    train_size: int = 20000  # miniature datasets only
    test_size: int = 5000
    mini_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    mini_stem_stride: int = 1
    out: str = "runs/kerneldna"
    init: str | None = None  # weights to fine-tune from, e.g. `kerneldna convert`'s output (a state dict)
    log_every: int = 50
    progress: bool = True
    eval_every: int = 1  # evaluate after every n-th epoch and after the last (the miniature's curve: n = 1)

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs < epochs, got {self.epochs}, "
                             f"{self.warmup_epochs}")
        if self.schedule_per not in ("epoch", "step"):
            raise ValueError(f"schedule_per must be 'epoch' or 'step', got {self.schedule_per!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("batch_size and lr must be positive, weight_decay non-negative")


def warmup_cosine(warmup_epochs: int, epochs: int, base_lr: float, eta_min: float = 0.0) -> Callable[[int], float]:
    """The official ``WarmupCosineAnnealingLR`` as a ``LambdaLR`` factor of the epoch (or iteration) index."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
        return (eta_min + (base_lr - eta_min) * 0.5 * (1 + math.cos(math.pi * progress))) / base_lr

    return factor


def is_static_attn(name: str) -> bool:
    return "static_filter_attn" in name or "static_spatial_attn" in name


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over the unique parameters (shared parents once; named_parameters de-duplicates)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.wd_static_attn:
        groups = [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay}]
    else:
        groups = [{"params": [p for n, p in params if not is_static_attn(n)], "weight_decay": cfg.weight_decay},
                  {"params": [p for n, p in params if is_static_attn(n)], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def model_for(cfg: TrainConfig) -> nn.Module:
    in_chans, classes = dataset_shape(cfg.dataset)
    extra: dict[str, Any] = {}
    if cfg.arch == "mini":
        extra = {"widths": tuple(cfg.mini_widths), "stem_stride": cfg.mini_stem_stride}
    return build_model(cfg.arch, cfg.variant, num_classes=classes, in_chans=in_chans, **extra)


def _data_root(cfg: TrainConfig) -> str:
    import os

    root = cfg.data or os.environ.get("KERNELDNA_DATA")
    if not root:
        raise UsageError(f"dataset {cfg.dataset} needs a path: pass --data /path (or set KERNELDNA_DATA)")
    return root


def _folder_loader(dataset: Any, batch: int, train: bool, cfg: TrainConfig, dist: DistInfo) -> Any:
    sampler = None
    if dist.distributed and train:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=cfg.seed)
    elif dist.distributed:  # exact sharding for evaluation: every sample counted once
        dataset = torch.utils.data.Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=train and sampler is None,
                                       sampler=sampler, num_workers=cfg.workers, pin_memory=True,
                                       drop_last=False, persistent_workers=cfg.workers > 0)


def make_loaders(cfg: TrainConfig, dist: DistInfo) -> tuple[Any, Any]:
    """``(train_loader, eval_loader)``; per-rank batch = total batch / world size."""
    per_rank = max(1, cfg.batch_size // dist.world_size)
    if cfg.dataset in SMALL_DATASETS:
        x, y = small_dataset(cfg.dataset, "train", cfg.train_size, seed=cfg.seed)
        xt, yt = small_dataset(cfg.dataset, "test", cfg.test_size, seed=0)
        train = TensorBatches(x, y, per_rank, True, cfg.seed, dist.rank, dist.world_size)
        test = TensorBatches(xt, yt, 512, False, 0, dist.rank, dist.world_size)
        return train, test
    from effrepro.data import get_dataset

    root = _data_root(cfg)
    if cfg.dataset == "imagenet":
        train_tf, eval_tf = imagenet_transforms(True, cfg.image_size), imagenet_transforms(False, cfg.image_size,
                                                                                           cfg.eval_resize)
        train_set = get_dataset("imagenet", "train", root=root, transform=train_tf)
        eval_set = get_dataset("imagenet", "val", root=root, transform=eval_tf)
    else:
        train_set = get_dataset(cfg.dataset, "train", root=root, transform=cifar_transforms(True))
        eval_set = get_dataset(cfg.dataset, "test", root=root, transform=cifar_transforms(False))
    return (_folder_loader(train_set, per_rank, True, cfg, dist),
            _folder_loader(eval_set, per_rank, False, cfg, dist))


def cross_entropy_loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    images, labels = batch
    return {"loss": F.cross_entropy(model(images), labels)}


def run_config(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint/resume identity of a run: the config plus the model's sharing groups."""
    config = {**config_to_dict(cfg), "progress": None, "log_every": None}
    if config.get("init") is None:  # runs without init keep the identity they had before the field existed
        config.pop("init", None)
    if config.get("eval_every") == 1:  # likewise for the evaluation interval (it does not change the training)
        config.pop("eval_every", None)
    return config


def train(cfg: TrainConfig, resume: bool = True) -> dict[str, Any]:
    """Train ``cfg`` to the end (resuming ``cfg.out/last.pt`` if present); returns history and final metrics."""
    dist = dist_setup()
    seed_everything(cfg.seed + dist.rank)
    model = model_for(cfg)
    if cfg.init:
        load_init(model, cfg.init)
    train_loader, eval_loader = make_loaders(cfg, dist)
    optimizer = make_optimizer(model, cfg)
    # the official schedule counts epochs; the miniature (a few epochs) may count iterations instead, so that
    # the cosine reaches eta_min at the end of training as it does over 90-300 ImageNet epochs
    units = len(train_loader) if cfg.schedule_per == "step" else 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_epochs * units, cfg.epochs * units, cfg.lr, cfg.eta_min))
    config = {**run_config(cfg), "sharing": sharing_groups(model)}

    def eval_fn(m: nn.Module) -> dict[str, float]:
        epoch = len(trainer.history) + 1  # the epoch that just ended (the row is appended after the evaluation)
        due = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        return evaluate(m, eval_loader, dist.device) if due else {}

    trainer = Trainer(
        model, optimizer, train_loader, loss_fn=cross_entropy_loss, epochs=cfg.epochs, out_dir=Path(cfg.out),
        scheduler=scheduler, amp=cfg.amp, eval_fn=eval_fn,
        config=config, log_every=cfg.log_every, scheduler_step=cfg.schedule_per, dist=dist, progress=cfg.progress,
        resume=resume,
    )
    result = trainer.fit()
    result["model"] = trainer.eval_model
    result["steps_per_epoch"] = len(train_loader)
    result["global_step"] = trainer.global_step
    return result


def load_init(model: nn.Module, path: str | Path) -> None:
    """Start from the weights in ``path`` (a state dict: ``kerneldna convert``'s output); a classifier of another size
    is left at its initialisation (fine-tuning on another dataset), any other mismatch is an error."""
    state = load_checkpoint(path, expect="state-dict")
    own = model.state_dict()
    heads = ("fc.", "classifier.")  # the ResNets' and MobileNetV2's classifiers
    state = {k: v for k, v in state.items()
             if not (k.startswith(heads) and k in own and tuple(v.shape) != tuple(own[k].shape))}
    for key in own:
        if key.startswith(heads) and key not in state:
            state[key] = own[key]
    load_state_dict_checked(model, state, source=f"init weights {path}")


def load_trained(path: str | Path, use_ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with (``last.pt`` of ``kerneldna train``) and load it.

    Raises :class:`UsageError` for a missing/corrupt file, a checkpoint of another project, different sharing
    groups (naming the layer) and missing/unexpected keys or shape mismatches.
    """
    state = load_checkpoint(path, required=("model", "config"), expect="train-state")
    config = dict(state["config"])
    sharing = config.pop("sharing", None)
    known = set(TrainConfig.__dataclass_fields__)
    if sharing is None or not {"arch", "variant", "dataset"} <= set(config):
        raise UsageError(f"checkpoint {path} was not written by `kerneldna train` (no arch/variant/sharing in it)")
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known and v is not None})
    model = model_for(cfg)
    check_sharing(sharing, model, source=f"checkpoint {path}")
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    load_state_dict_checked(model, weights, source=f"checkpoint {path}")
    return model, config
