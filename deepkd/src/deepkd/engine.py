"""The training step shared by every arm: one forward, then one, two or three gradients into the optimizer.

* ``sgd``: the losses are summed and back-propagated once into ``torch.optim.SGD`` (KD, DKD, ... as
  published);
* ``dot``: task gradient and KD gradient into :func:`deepkd.deepkd.dot_optimizer`;
* ``deepkd``: TOG / TCG / NCG gradients into :func:`deepkd.deepkd.deepkd_optimizer`.

For ``dot`` / ``deepkd`` the component gradients come from :func:`effrepro.optim.component_grads` (several
reverse passes or one batched VJP at the student logits). Under DDP they are computed inside ``no_sync``
and averaged with one flat all-reduce (DDP's hooks expect one backward per forward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from effrepro.optim import all_reduce_grads, component_grads
from torch import Tensor, nn

from deepkd.config import SolverConfig, TrainConfig
from deepkd.deepkd import group_losses
from deepkd.distillers import Distiller, student_outputs


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def lr_factor(epoch: int, solver: SolverConfig) -> float:
    """LR multiplier for a 1-indexed epoch, set once per epoch as in the released code.

    step: ``decay_rate ** (number of decay epochs < epoch)`` (epoch 151 is the first at 0.1x for 150);
    cosine: linear warm-up from ``warmup_factor`` over ``warmup_epochs``, then cosine down to ``min_lr``.
    """
    if solver.lr_schedule == "step":
        return solver.decay_rate ** sum(epoch > m for m in solver.decay_epochs)
    if epoch < solver.warmup_epochs:
        start = solver.warmup_factor
        return start + (1.0 - start) * epoch / solver.warmup_epochs
    span = max(solver.epochs - solver.warmup_epochs, 1)
    progress = (epoch - solver.warmup_epochs) / span
    lr = solver.min_lr + 0.5 * (solver.lr - solver.min_lr) * (1.0 + math.cos(math.pi * progress))
    return lr / solver.lr


def build_scheduler(optimizer: torch.optim.Optimizer, solver: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR calls the function with the number of finished epochs; the epoch being trained is that + 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda finished: lr_factor(finished + 1, solver))


class StepCounter:
    """Global step, saved with the checkpoint: gives the 1-indexed epoch inside the step function."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch, self.step = max(int(steps_per_epoch), 1), 0

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch + 1

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step = int(state["step"])


def _unpack(batch: Any) -> tuple[Any, Tensor, Any]:
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    image, target = batch
    return image, target, None


def accuracy(logits: Tensor, target: Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent (k capped at the class count)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, 1).indices
    hits = pred.eq(target.reshape(-1, 1))
    return [100.0 * hits[:, :min(k, maxk)].any(1).float().mean().item() for k in topk]


class DistillStep:
    """``step_fn`` for :class:`effrepro.train.Trainer`: forward the distiller, then update with ``method``."""

    def __init__(self, cfg: TrainConfig, counter: StepCounter, topk: Callable[[float], int]) -> None:
        self.method, self.grad_method = cfg.solver.method, cfg.solver.grad_method
        self.weights = cfg.solver.loss_weights
        self.counter, self.topk = counter, topk
        self.amp = cfg.amp

    def _forward(self, model: nn.Module, batch: Any) -> tuple[Any, dict[str, Tensor], Tensor]:
        image, target, teacher_logits = _unpack(batch)
        epoch = self.counter.epoch
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp and target.is_cuda
                    else contextlib.nullcontext())
        with autocast:
            logits, losses = model(image, target, epoch=epoch, teacher_logits=teacher_logits, topk=self.topk(epoch))
        return logits, {k: v.float() for k, v in losses.items()}, target

    def __call__(self, model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        distiller: Distiller = unwrap(model)
        params = distiller.learnable_parameters()
        if self.method == "sgd":
            logits, losses, target = self._forward(model, batch)
            total = group_losses(losses, "sgd", self.weights)["total"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            total = total.detach()
        else:
            sync_off = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) \
                else contextlib.nullcontext()
            with sync_off:
                logits, losses, target = self._forward(model, batch)
                groups = group_losses(losses, self.method, self.weights)
                total = sum(groups.values()).detach()
                grads = component_grads(groups, params, method=self.grad_method, outputs=student_outputs(logits))
            all_reduce_grads(grads, params)
            optimizer.step(grads)
        self.counter.step += 1
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {self.counter.step}: {float(total)}")
        top1 = accuracy(student_outputs(logits)[0].detach(), target, (1,))[0]
        return {"loss": float(total), "top1": top1, **{k: float(v.detach()) for k, v in losses.items()}}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (%) and CE loss of ``model`` (a student, or a distiller in eval mode) over ``loader``.

    Under DDP each rank evaluates its shard and the counts are summed over ranks.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for batch in loader:
        image, target = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = model(image).float()
        top1, top5 = accuracy(logits, target)
        n = target.numel()
        sums += torch.tensor([top1 * n / 100, top5 * n / 100,
                              float(nn.functional.cross_entropy(logits, target, reduction="sum")), n],
                             dtype=torch.float64, device=device)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    model.train(was_training)
    count = max(sums[3].item(), 1.0)
    return {"top1": 100 * sums[0].item() / count, "top5": 100 * sums[1].item() / count,
            "loss": sums[2].item() / count}
