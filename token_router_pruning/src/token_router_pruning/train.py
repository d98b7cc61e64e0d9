"""Stage 2: training the global dynamic router with the frozen LLM (paper §3.3, Eq. 6).

Per step: a dense teacher forward (no grad), then a routed student forward in which every block keeps
its top-``k_i`` tokens by router probability and blends the kept rows with the gate (MoD-style; see
:mod:`token_router_pruning.routing`), then ``λ_g(step) L_guide + λ_s L_sparse + λ_d L_distill``.
Only the router's 385 parameters train; the loop is :class:`effrepro.train.Trainer` (atomic, resumable
checkpoints in ``out_dir``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.train import Trainer, seed_everything
from torch import nn

from token_router_pruning.losses import (
    distill_hidden_mse,
    distill_kl,
    guide_loss,
    guide_weight,
    realized_sparsity,
    sparsity_loss,
)
from token_router_pruning.routers import DynamicRouter
from token_router_pruning.routing import SkipPlan, TokenSkipper

DISTILL = ("logits_kl", "final_hidden_mse")


@dataclass
class RouterTrainConfig:
    """[RECONSTRUCTION] defaults (spec §4): AdamW lr 1e-3, wd 0, cosine, batch 1, equal loss weights."""

    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1
    guide_decay: float = 0.5  # λ_g reaches 0 at this fraction of the steps
    lambda_guide: float = 1.0
    lambda_sparse: float = 1.0
    lambda_distill: float = 1.0
    symmetric_sparse: bool = False
    distill_on: str = "logits_kl"
    gate: str = "soft"
    steps_per_epoch: int = 50  # checkpoint interval
    seed: int = 0
    hidden: int = 64
    attn_feature: str = "received"
    attn_scale: str = "length"
    scope: str = "block"

    def __post_init__(self) -> None:
        if self.distill_on not in DISTILL:
            raise UsageError(f"distill_on {self.distill_on!r} unknown; use one of {', '.join(DISTILL)}")
        if self.steps < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise UsageError("router training needs steps, batch_size and steps_per_epoch >= 1")


class _StepLoader:
    """Deterministic stream of training steps; epoch ``e`` yields steps ``e*S .. (e+1)*S - 1``."""

    def __init__(self, windows: torch.Tensor, n_schedules: int, cfg: RouterTrainConfig) -> None:
        self.windows, self.n_schedules, self.cfg = windows, n_schedules, cfg
        self.order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        self.epoch = 0
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.cfg.steps_per_epoch, self.cfg.steps - self.epoch * self.cfg.steps_per_epoch)

    def __iter__(self):
        cfg = self.cfg
        for j in range(len(self)):
            step = self.epoch * cfg.steps_per_epoch + j
            picks = [int(self.order[(step * cfg.batch_size + b) % len(self.order)]) for b in range(cfg.batch_size)]
            yield {"step": step, "input_ids": self.windows[picks], "schedule": step % self.n_schedules}


class RouterObjective(nn.Module):
    """Holds the router (the only registered, trainable module) and computes the three losses."""

    def __init__(self, model: nn.Module, skipper: TokenSkipper, router: DynamicRouter,
                 schedules: Sequence[Sequence[float]], cfg: RouterTrainConfig) -> None:
        super().__init__()
        self.router = router
        object.__setattr__(self, "_model", model)  # not a registered sub-module: the frozen LLM is not saved
        self._skipper = skipper
        self.schedules = [tuple(float(v) for v in s) for s in schedules]
        self.cfg = cfg

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, model, skipper = self.cfg, self._model, self._skipper
        ids = batch["input_ids"]
        step = int(batch["step"])
        schedule = self.schedules[int(batch["schedule"])]
        plan = SkipPlan(name="train", sparsity=schedule, router=self.router, scope=cfg.scope)
        if cfg.distill_on == "final_hidden_mse":  # the final-norm hidden state
            with torch.no_grad(), skipper.use(None):
                teacher = model.model(input_ids=ids).last_hidden_state
            with skipper.use(plan), skipper.training(cfg.gate):
                student = model.model(input_ids=ids).last_hidden_state
        else:
            with torch.no_grad(), skipper.use(None):
                teacher = model(input_ids=ids).logits
            with skipper.use(plan), skipper.training(cfg.gate):
                student = model(input_ids=ids).logits
        records = skipper.last_state.records
        blocks = sorted(records)
        probs = [records[i].probs for i in blocks]
        guides = [records[i].guide for i in blocks]
        targets = [schedule[i] for i in blocks]
        valid = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        l_sparse = sparsity_loss(probs, targets, valid, symmetric=cfg.symmetric_sparse)
        l_guide = guide_loss(probs, guides, valid)
        if cfg.distill_on == "final_hidden_mse":
            l_distill = distill_hidden_mse(teacher, student, valid)
        else:
            l_distill = distill_kl(teacher, student, valid)
        lam_g = guide_weight(step, cfg.steps, cfg.guide_decay) * cfg.lambda_guide
        loss = lam_g * l_guide + cfg.lambda_sparse * l_sparse + cfg.lambda_distill * l_distill
        soft = torch.stack([realized_sparsity(p, valid) for p in probs]).mean().detach()
        return {"loss": loss, "guide": l_guide.detach(), "sparse": l_sparse.detach(),
                "distill": l_distill.detach(), "lambda_guide": torch.tensor(lam_g),
                "soft_sparsity": soft, "target_sparsity": torch.tensor(sum(schedule) / len(schedule))}


def make_router(cfg: RouterTrainConfig, dtype: torch.dtype = torch.float32) -> DynamicRouter:
    seed_everything(cfg.seed)
    return DynamicRouter(hidden=cfg.hidden, attn_feature=cfg.attn_feature, attn_scale=cfg.attn_scale).to(dtype)


def train_router(
    model: nn.Module,
    skipper: TokenSkipper,
    schedules: Sequence[Sequence[float]],
    windows: torch.Tensor,
    cfg: RouterTrainConfig,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[DynamicRouter, dict[str, Any]]:
    """Train a router for the given per-block schedules (several: steps cycle through them)."""
    if not schedules:
        raise UsageError("router training needs at least one per-block sparsity schedule")
    dtype = next(model.parameters()).dtype
    router = make_router(cfg, dtype)
    objective = RouterObjective(model, skipper, router, schedules, cfg)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))
    loader = _StepLoader(windows, len(schedules), cfg)
    epochs = math.ceil(cfg.steps / cfg.steps_per_epoch)
    config = {**asdict(cfg), "schedules": [list(s) for s in objective.schedules], "windows": list(windows.shape)}
    try:
        trainer = Trainer(objective, optimizer, loader, loss_fn=lambda module, batch: module.losses(batch),
                          epochs=epochs, out_dir=out_dir, scheduler=scheduler, scheduler_step="step",
                          config=config, log_every=10, progress=progress)
        summary = trainer.fit()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    router.eval()
    return router, summary
