"""``partialnet train``: the official ImageNet recipe (``cfg/PartialNet_*.yaml``) with timm's data / loss /
optimizer / scheduler utilities on ``effrepro.train.Trainer`` (single process or torchrun DDP, AMP on GPU,
resumable from ``<out_dir>/last.pt``). Works for ``partialnet_*`` and timm's ``fasternet_*`` alike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as torch_dist
from effrepro.config import config_to_dict, load_config
from effrepro.errors import UsageError
from effrepro.train import DistInfo, Trainer, dist_setup, seed_everything
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

import partialnet.models  # noqa: F401  (registers the timm models)
from partialnet.data import AugmentConfig, imagenet_loaders, mnist100_loaders, random_shift
from partialnet.models import budget_multiplier, dpconv_layers, freeze_gates, split_summary
from partialnet.splits import load_splits, save_splits

DATASETS = ("imagenet", "mnist100")


@dataclass
class TrainConfig:
    """One training run. Field names follow the official yaml where one exists."""

    model: str = "partialnet_t2"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. in_chans, patch_size, embed_dim
    dataset: str = "imagenet"
    data: str | None = None
    out_dir: str = "runs/partialnet_t2"
    epochs: int = 300
    batch_size: int = 4096  # global; the official lr comment "for bs=4096" (M, L: 2048)
    eval_batch_size: int = 256
    workers: int = 8
    opt: str = "adamw"
    lr: float = 0.004
    lr_base_batch: int = 4096  # lr is scaled linearly by batch_size / lr_base_batch
    weight_decay: float = 0.02
    momentum: float = 0.9  # SGD only
    decay_norm_and_bias: bool = True  # official: timm create_optimizer on bare parameters decays all of them
    warmup_epochs: float = 20
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    sched_unit: str = "epoch"  # official: per-epoch (pl_bolts LinearWarmupCosineAnnealingLR); "step" for short runs
    clip_grad: float | None = None
    amp: bool = True  # official ``precision: 16`` (GPU only)
    smoothing: float = 0.1
    mixup: float = 0.1
    cutmix: float = 1.0
    cutmix_minmax: list[float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    drop_path_rate: float | None = None  # None: the variant's own
    ema_decay: float | None = None  # not in the official configs
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    dpconv_budget_div: float = 4.0
    dpconv_alpha: float = 0.01
    dpconv_warmup_epochs: float = 1.0  # a DPConv search holds every split at n_div for this long (official pre_epoch)
    splits: str | None = None  # a DPConv search's splits.json: every block's learnt n_div (fixed-split PATConv model)
    seed: int = 42
    log_every: int = 50
    mnist100_train_size: int = 50000
    mnist100_test_size: int = 10000
    mnist100_shift: int = 2

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.sched_unit not in ("epoch", "step"):
            raise UsageError(f"sched_unit must be 'epoch' or 'step', got {self.sched_unit!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch_size must be positive")


# cfg/PartialNet_<v>.yaml: the fields that differ between variants (everything else is TrainConfig's default).
RECIPES: dict[str, dict[str, Any]] = {
    "t0": {"weight_decay": 0.005, "mixup": 0.05, "augment": {"aa": None}},
    "t1": {"weight_decay": 0.01, "mixup": 0.1, "augment": {"aa": "rand-m3-mstd0.5-inc1"}},
    "t2": {"weight_decay": 0.02, "mixup": 0.1, "augment": {"aa": "rand-m5-mstd0.5-inc1"}},
    "s": {"weight_decay": 0.03, "mixup": 0.3, "augment": {"aa": "rand-m7-mstd0.5-inc1"}},
    "m": {"weight_decay": 0.05, "mixup": 0.5, "lr": 0.002, "lr_base_batch": 2048, "batch_size": 2048,
          "clip_grad": 1.0, "augment": {"aa": "rand-m7-mstd0.5-inc1"}},
    "l": {"weight_decay": 0.05, "mixup": 0.7, "lr": 0.002, "lr_base_batch": 2048, "batch_size": 2048,
          "clip_grad": 0.01, "augment": {"aa": "rand-m7-mstd0.5-inc1"}},
}


def recipe(model: str) -> dict[str, Any]:
    """The official ImageNet recipe of ``partialnet_<v>`` (also used for ``fasternet_<v>``, same recipe)."""
    variant = model.split("_", 1)[-1]
    if variant not in RECIPES:
        raise UsageError(f"no recipe for {model!r}; use partialnet_<v> or fasternet_<v> with v in {', '.join(RECIPES)}")
    return {"model": model, "out_dir": f"runs/{model}", **copy.deepcopy(RECIPES[variant])}  # overrides edit in place


def known_models() -> list[str]:
    return timm.list_models("partialnet_*") + timm.list_models("fasternet_*")


def build_model(name: str, num_classes: int, drop_path_rate: float | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` restricted to the PartialNet and FasterNet families, with a clear error."""
    if name not in known_models():
        raise UsageError(f"unknown model {name!r}; use one of {', '.join(known_models())}")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot build {name} with {kwargs}: {exc}") from None


class WarmupCosine:
    """timm's ``CosineLRScheduler`` (linear warm-up from ``warmup_lr``, then cosine to ``min_lr``) behind the
    no-argument ``step()`` the Trainer calls, per epoch or per optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        per = 1 if cfg.sched_unit == "epoch" else steps_per_epoch
        total, warmup = cfg.epochs * per, int(round(cfg.warmup_epochs * per))
        warmup = min(warmup, total - 1)
        self.unit, self.count = cfg.sched_unit, 0
        self.sched = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=cfg.min_lr,
                                       warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, warmup_prefix=True,
                                       t_in_epochs=self.unit == "epoch")

    def _apply(self) -> None:
        if self.unit == "epoch":
            self.sched.step(self.count)
        else:
            self.sched.step_update(self.count)

    def step(self) -> None:
        self.count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.sched.load_state_dict(state["sched"])
        self._apply()


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """Official ``build_criterion``: soft-target CE under mixup/cutmix (smoothing inside Mixup), else LS-CE."""
    if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    if not (cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=cfg.smoothing, num_classes=num_classes)


@torch.no_grad()
def accuracy_counts(model: nn.Module, loader: Any, device: torch.device, amp: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE loss; summed over ranks under DDP."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda")
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            logits = model(images)
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5.eq(labels[:, None])
        totals += torch.stack([hits[:, 0].sum(), hits.any(1).sum(),
                               nn.functional.cross_entropy(logits.float(), labels, reduction="sum"),
                               torch.tensor(labels.numel(), device=device)]).double()
    if torch_dist.is_initialized():
        torch_dist.all_reduce(totals)
    count = max(float(totals[3]), 1.0)
    return {"top1": 100 * float(totals[0]) / count, "top5": 100 * float(totals[1]) / count,
            "loss": float(totals[2]) / count, "images": count}


def _loaders(cfg: TrainConfig, dist: DistInfo) -> tuple[Any, Any, int]:
    per_rank = max(1, cfg.batch_size // dist.world_size)
    if cfg.dataset == "imagenet":
        if not cfg.data:
            raise UsageError("ImageNet training needs a path: pass --data /path/to/imagenet (train/ and val/ inside)")
        return imagenet_loaders(cfg.data, cfg.augment, per_rank, cfg.eval_batch_size, cfg.workers,
                                dist.distributed, cfg.seed)
    train, test = mnist100_loaders(cfg.mnist100_train_size, cfg.mnist100_test_size, per_rank, cfg.seed,
                                   dist.distributed)
    return train, test, 100


def resolve_splits(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its splits file read into ``model_kwargs.layer_n_div`` (stored with the checkpoint's config, so
    the model rebuilds without the file)."""
    if cfg.splits is None:
        return cfg
    if cfg.model_kwargs.get("dynamic_split"):
        raise UsageError("splits= retrains fixed splits; drop model_kwargs.dynamic_split (that is the search)")
    return dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs,
                                                  "layer_n_div": load_splits(cfg.splits, cfg.model)})


def train(cfg: TrainConfig, dist: DistInfo | None = None, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one training; returns the Trainer history and the final evaluation. A DPConv search
    (``model_kwargs.dynamic_split``) also writes its learnt per-layer splits to ``<out_dir>/splits.json``."""
    cfg = resolve_splits(cfg)
    dist = dist or dist_setup()
    seed_everything(cfg.seed + dist.rank)
    train_loader, val_loader, num_classes = _loaders(cfg, dist)
    model = build_model(cfg.model, num_classes, cfg.drop_path_rate, **cfg.model_kwargs)
    lr = cfg.lr * cfg.batch_size / cfg.lr_base_batch
    extra = {"momentum": cfg.momentum} if cfg.opt.lower() in ("sgd", "momentum", "nesterov") else {}
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    filter_bias_and_bn=not cfg.decay_norm_and_bias, **extra)
    scheduler = WarmupCosine(optimizer, cfg, len(train_loader))
    mixup, criterion = build_mixup(cfg, num_classes), build_criterion(cfg)
    shift = cfg.mnist100_shift if cfg.dataset == "mnist100" else 0
    per_epoch = len(train_loader) if cfg.sched_unit == "step" else 1  # scheduler.count: steps or epochs done

    def loss_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch
        if shift:
            images = random_shift(images, shift)
        if mixup is not None:
            images, targets = mixup(images, targets)
        freeze_gates(net, scheduler.count < cfg.dpconv_warmup_epochs * per_epoch)  # resumes with the schedule
        loss = criterion(net(images), targets)
        multiplier = budget_multiplier(dpconv_layers(net), cfg.dpconv_budget_div, cfg.dpconv_alpha)
        if multiplier is not None:
            return {"loss": loss * multiplier, "task_loss": loss.detach(), "budget": multiplier.detach()}
        return {"loss": loss}

    amp = cfg.amp and dist.device.type == "cuda"
    trainer = Trainer(model, optimizer, train_loader, loss_fn=loss_fn, epochs=cfg.epochs, out_dir=cfg.out_dir,
                      scheduler=scheduler, scheduler_step=cfg.sched_unit, grad_clip=cfg.clip_grad, amp=amp,
                      ema_decay=cfg.ema_decay, eval_fn=lambda net: accuracy_counts(net, val_loader, dist.device, amp),
                      config=config_to_dict(cfg), log_every=cfg.log_every, dist=dist, progress=progress,
                      resume=resume)
    result = trainer.fit()
    result["num_classes"] = num_classes
    if dpconv_layers(model):
        result["final"]["dpconv_splits"] = split_summary(model)  # the learnt C / G per layer
        if dist.rank == 0:
            result["splits_file"] = str(save_splits(model, cfg.model, Path(cfg.out_dir) / "splits.json"))
    result["out_dir"] = str(Path(cfg.out_dir))
    return result


def load_train_config(source: str | Path | dict | None, overrides: list[str] | None = None) -> TrainConfig:
    cfg = load_config(source, TrainConfig, overrides)
    if isinstance(cfg.augment, dict):  # pragma: no cover - load_config builds nested dataclasses
        cfg = dataclasses.replace(cfg, augment=AugmentConfig(**cfg.augment))
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise UsageError(f"lr must be a positive number, got {cfg.lr}")
    return cfg
