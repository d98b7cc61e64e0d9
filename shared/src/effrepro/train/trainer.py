"""The generic training loop: single process or torchrun DDP, AMP on GPU, clipping, EMA, resumable."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effrepro.errors import UsageError
from effrepro.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, to_plain
from effrepro.train.distributed import DistInfo, dist_setup
from effrepro.train.metrics import MetricsLogger

LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
StepFn = Callable[[nn.Module, Any, torch.optim.Optimizer], Mapping[str, float]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Epoch loop shared by every paper project.

    Give either ``loss_fn(model, batch) -> {"loss": total, **parts}`` (the trainer back-propagates
    ``"loss"``, clips, steps, updates EMA) or ``step_fn(model, batch, optimizer) -> {name: float}`` for
    methods that run their own backward/step (several losses back-propagated separately, one step per
    bit-width...). After every epoch the full state (model, optimizer, scheduler, EMA, AMP scaler,
    ``extra_state`` objects, epoch, RNG, config) is written atomically to ``out_dir/last.pt``; a new
    Trainer on the same ``out_dir`` resumes there, and the result equals an uninterrupted run.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Any,
        loss_fn: LossFn | None = None,
        epochs: int = 1,
        out_dir: str | os.PathLike | None = None,
        scheduler: Any = None,
        grad_clip: float | None = None,
        amp: bool = False,
        ema_decay: float | None = None,
        eval_fn: EvalFn | None = None,
        step_fn: StepFn | None = None,
        config: Mapping[str, Any] | None = None,
        log_every: int = 50,
        scheduler_step: str = "epoch",
        dist: DistInfo | None = None,
        progress: bool = True,
        extra_state: Mapping[str, Any] | None = None,
        resume: bool = True,
    ) -> None:
        if (loss_fn is None) == (step_fn is None):
            raise ValueError("give exactly one of loss_fn or step_fn")
        if scheduler_step not in ("epoch", "step"):
            raise ValueError("scheduler_step must be 'epoch' or 'step'")
        self.dist = dist or dist_setup()
        self.device = self.dist.device
        model.to(self.device)
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.optimizer, self.train_loader, self.scheduler = optimizer, train_loader, scheduler
        self.loss_fn, self.step_fn, self.eval_fn = loss_fn, step_fn, eval_fn
        self.epochs, self.grad_clip, self.log_every = int(epochs), grad_clip, max(1, int(log_every))
        self.scheduler_step, self.progress = scheduler_step, progress
        self.config = dict(config or {})
        self.extra_state = dict(extra_state or {})
        self.amp = bool(amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = self._make_ema(ema_decay)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.logger = MetricsLogger(self.out_dir / "metrics.jsonl", enabled=self.dist.is_main) if self.out_dir else None
        self.start_epoch, self.global_step, self.history = 0, 0, []
        if self.out_dir is not None and resume and (self.out_dir / "last.pt").is_file():
            self._resume(self.out_dir / "last.pt")

    # ---- state -------------------------------------------------------------------------------------
    def _make_ema(self, decay: float | None) -> Any:
        if decay is None:
            return None
        try:
            from timm.utils import ModelEmaV3
        except ImportError as exc:  # pragma: no cover - timm is in the vision extra
            raise UsageError("EMA needs timm: pip install timm") from exc
        return ModelEmaV3(_unwrap(self.model), decay=decay, device=self.device)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        state = {
            "kind": "train-state",
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "epoch": epoch,
            "global_step": self.global_step,
            "history": self.history,
            "rng": rng_state(),
            "config": self.config,
        }
        return state

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device, required=("model", "optimizer", "epoch", "rng"),
                                expect="train-state")
        current = to_plain(self.config)  # as it was stored (paths as strings, NumPy values as numbers)
        if current and state.get("config") and state["config"] != current:
            changed = sorted(k for k in set(current) | set(state["config"])
                             if current.get(k) != state["config"].get(k))
            raise UsageError(
                f"{path.parent} holds a run with a different config (differs in: {', '.join(changed[:5])}); "
                f"use a new output directory, or delete {path} to start over"
            )
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        for key, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][key])
        self.start_epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history = list(state.get("history", []))
        set_rng_state(state["rng"])
        if self.dist.is_main:  # stderr: stdout stays the command's result
            print(f"resuming from epoch {self.start_epoch} of {self.epochs} ({path}; --no-resume starts over)",
                  file=sys.stderr, flush=True)

    # ---- loop --------------------------------------------------------------------------------------
    def _train_step(self, batch: Any) -> dict[str, float]:
        if self.step_fn is not None:
            return dict(self.step_fn(self.model, batch, self.optimizer))
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with autocast:
            losses = self.loss_fn(self.model, batch)
        if "loss" not in losses:
            raise ValueError("loss_fn must return a dict with key 'loss'")
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _iterate(self, epoch: int) -> Any:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if not (self.progress and self.dist.is_main):
            return self.train_loader
        from tqdm.auto import tqdm

        return tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, mininterval=2.0)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in self._iterate(epoch):
            metrics = self._train_step(_to_device(batch, self.device))
            if self.ema is not None:
                self.ema.update(_unwrap(self.model), step=self.global_step)
            if self.scheduler is not None and self.scheduler_step == "step":
                self.scheduler.step()
            self.global_step += 1
            count += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            if self.logger is not None and self.global_step % self.log_every == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                self.logger.log(step=self.global_step, epoch=epoch + 1, lr=lr, **metrics)
        if self.scheduler is not None and self.scheduler_step == "epoch":
            self.scheduler.step()
        return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluation should use: the EMA weights when EMA is on, else the trained model."""
        return self.ema.module if self.ema is not None else _unwrap(self.model)

    def fit(self) -> dict[str, Any]:
        """Train from the resumed epoch to ``epochs``; returns ``{"history": [...], "final": {...}}``."""
        for epoch in range(self.start_epoch, self.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if self.eval_fn is not None:
                self.eval_model.eval()
                with torch.no_grad():
                    row.update({f"eval_{k}": float(v) for k, v in self.eval_fn(self.eval_model).items()})
            self.history.append(row)
            if self.logger is not None:
                self.logger.log(**row)
            if self.out_dir is not None and self.dist.is_main:
                save_checkpoint(self.out_dir / "last.pt", self.state_dict(epoch + 1))
        return {"history": self.history, "final": self.history[-1] if self.history else {}}
