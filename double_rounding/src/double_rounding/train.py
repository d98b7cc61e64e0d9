"""Training stages: FP32 pre-training, one-shot multi-precision QAT (Alg. A.2 with ALRS), mixed-precision
SuperNet with HASB (Alg. A.3), plus the post-hoc switching baseline. Single process or torchrun DDP, resumable
(``effrepro.train.Trainer`` writes ``last.pt`` every epoch).

Under DDP the quantised stages average gradients themselves instead of wrapping the model in
``DistributedDataParallel``: every precision step uses a different subset of parameters (the activation
scales and BN copies of that bit-width), which DDP's reducer does not allow without ``find_unused_parameters``.
All ranks run the same bit-widths in the same order, so the all-reduce of the gradients that exist is the
DDP gradient; BN buffers are broadcast from rank 0 before every step (DDP's ``broadcast_buffers``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from effrepro.config import config_to_dict
from effrepro.quant import (
    calibrate,
    clamp_scales_,
    export_int8,
    graph_of,
    save_int8,
    scale_groups,
    set_bits,
    split_parameters,
)
from effrepro.quant.modules import SwitchableNorm
from effrepro.train import DistInfo, Trainer, load_state_dict_checked
from torch import Tensor, nn

from double_rounding.config import Config, TrainConfig
from double_rounding.data import calibration_batch
from double_rounding.double_rounding import ALRS, BitSampler, sigma_at
from double_rounding.models import build_float_model, build_quant_model


# ---- small pieces ----------------------------------------------------------------------------------------
def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    """Cosine decay to 0 over ``total_steps`` optimizer iterations, no warm-up (the paper's schedule)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def make_optimizers(model: nn.Module, tc: TrainConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam on the weights (wd 5e-5) and a separate Adam on the scales / zero points (wd 0, ALRS LR)."""
    weights, scales = split_parameters(model)
    return (torch.optim.Adam(weights, lr=tc.lr, weight_decay=tc.weight_decay),
            torch.optim.Adam(scales, lr=tc.lr, weight_decay=0.0))


def soft_cross_entropy(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()


def sync_gradients(params: Iterable[nn.Parameter], dist: DistInfo) -> None:
    """Average the existing gradients over ranks (one flat all-reduce)."""
    if dist.world_size <= 1 or not torch_dist.is_initialized():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch_dist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: nn.Module, dist: DistInfo) -> None:
    if dist.world_size <= 1 or not torch_dist.is_initialized():
        return
    floats = [b for b in model.buffers() if b.is_floating_point()]
    flat = torch.cat([b.flatten() for b in floats])
    torch_dist.broadcast(flat, 0)
    offset = 0
    for b in floats:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast_model(model: nn.Module, dist: DistInfo) -> None:
    if dist.world_size <= 1 or not torch_dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            torch_dist.broadcast(tensor.data, 0)


def no_ddp(dist: DistInfo) -> DistInfo:
    """The same ranks, but tell the Trainer not to wrap the model in DDP (we sync gradients ourselves)."""
    return replace(dist, distributed=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, config: int | Mapping[str, int] | None = None,
             device: torch.device | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and NLL on ``loader`` at ``config`` (None: as the model is set)."""
    if config is not None:
        set_bits(model, config)
    device = device or next(model.parameters()).device
    model.eval()
    correct1 = correct5 = 0
    nll, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        nll += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(1).sum())
        count += len(y)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "nll": nll / count, "n": count}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], config: int | Mapping[str, int],
                   device: torch.device | None = None) -> None:
    """Re-estimate the running statistics of the BN copies active at ``config`` (cumulative average)."""
    set_bits(model, config)
    active = [m.norms[m.active] for m in model.modules() if isinstance(m, SwitchableNorm)]
    momenta = [bn.momentum for bn in active]
    for bn in active:
        bn.reset_running_stats()
        bn.momentum = None
    device = device or next(model.parameters()).device
    model.train()
    for x, _ in batches:
        model(x.to(device))
    for bn, momentum in zip(active, momenta):
        bn.momentum = momentum
    model.eval()


# ---- the precision step (multi-precision and SuperNet) ----------------------------------------------------
class PrecisionStep:
    """One mini-batch: for each bit-width b (descending), forward at b (or at a HASB sample around b), backward,
    and (``per_precision``) step the weights with the scheduled LR and the scales with the ALRS LR.

    ``accumulate`` is Algorithm A.1: the n losses' gradients are summed and one step is taken at the end.
    Resumable through ``state_dict`` (scale optimizer, ALRS counters, step counter).
    """

    def __init__(self, model: nn.Module, opt_scales: torch.optim.Optimizer, tc: TrainConfig, bits: list[int],
                 dist: DistInfo, sampler: BitSampler | None = None, sigma0: float = 1.0,
                 steps_per_epoch: int = 1, seed: int = 0, sandwich: bool = False) -> None:
        self.model, self.opt_scales, self.tc, self.dist, self.seed = model, opt_scales, tc, dist, seed
        self.sandwich = sandwich
        self.bits = sorted(bits, reverse=True)
        self.alrs = ALRS(tc.alrs, graph_of(model).bits[0])
        self.sampler, self.sigma0, self.steps_per_epoch = sampler, sigma0, max(steps_per_epoch, 1)
        self.step_count = 0
        self.clamped_scales = 0  # scales pushed below zero by a step (reported; should stay 0)

    def state_dict(self) -> dict[str, Any]:
        return {"opt_scales": self.opt_scales.state_dict(), "alrs": self.alrs.state_dict(), "steps": self.step_count,
                "clamped_scales": self.clamped_scales}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_scales.load_state_dict(state["opt_scales"])
        self.alrs.load_state_dict(state["alrs"])
        self.step_count = int(state["steps"])
        self.clamped_scales = int(state.get("clamped_scales", 0))

    def _config(self, bits: int) -> int | dict[str, int]:
        """Uniform ``bits``, or a HASB sample around it (with ``sandwich``, only for the bit-widths between the
        highest and the lowest, which stay uniform). The sampler's generator is seeded by (seed, step, bits):
        identical on every DDP rank and after a resume."""
        if self.sampler is None or (self.sandwich and bits in (self.bits[0], self.bits[-1])):
            return bits
        epoch = self.step_count // self.steps_per_epoch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step_count * 16 + bits)
        return self.sampler.sample(bits, sigma_at(epoch, self.tc.epochs, self.sigma0), gen)

    def _loss(self, logits: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        if teacher is None:
            return F.cross_entropy(logits, y)
        return soft_cross_entropy(logits, teacher)

    def _step(self, optimizer: torch.optim.Optimizer, bits: int) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scales = [p for group in self.opt_scales.param_groups for p in group["params"]]
        sync_gradients(params + scales, self.dist)
        base_lr = optimizer.param_groups[0]["lr"]
        grads = ([p.grad for p in group] for group in scale_groups(self.model))
        scale_lr = self.alrs.scale_lr(base_lr, bits, grads)
        for group in self.opt_scales.param_groups:
            group["lr"] = scale_lr
        optimizer.step()
        self.opt_scales.step()
        self.clamped_scales += clamp_scales_(self.model)

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer) -> dict:
        x, y = batch
        broadcast_buffers(model, self.dist)
        teacher: Tensor | None = None
        metrics: dict[str, float] = {}
        accumulate = self.tc.update_mode == "accumulate"
        optimizer.zero_grad(set_to_none=True)
        self.opt_scales.zero_grad(set_to_none=True)
        for index, bits in enumerate(self.bits):
            set_bits(model, self._config(bits))
            logits = model(x)
            loss = self._loss(logits, y, teacher if self.tc.kd != "none" else None)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at {bits} bits, step {self.step_count}")
            if self.tc.kd == "recursive" or (self.tc.kd == "from_highest" and index == 0):
                teacher = logits.detach()
            loss.backward()
            if not accumulate:
                self._step(optimizer, bits)
                optimizer.zero_grad(set_to_none=True)
                self.opt_scales.zero_grad(set_to_none=True)
            metrics[f"loss_w{bits}"] = float(loss.detach())
        if accumulate:
            self._step(optimizer, self.bits[0])
        self.step_count += 1
        return metrics


# ---- stages -----------------------------------------------------------------------------------------------
def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, tc: TrainConfig, out_dir: Path,
             dist: DistInfo, config: dict, progress: bool, steps: int, **kwargs: Any) -> Trainer:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(steps))
    return Trainer(model, optimizer, loader, epochs=tc.epochs, out_dir=out_dir, scheduler=scheduler,
                   scheduler_step="step", dist=dist, config=config, progress=progress, log_every=tc.log_every,
                   **kwargs)


def train_fp32(cfg: Config, train_loader: Any, out_dir: Path, dist: DistInfo,
               progress: bool = True, resume: bool = True) -> tuple[nn.Module, dict]:
    """The FP32 model every quantised run starts from (the paper starts from a pre-trained FP32 model)."""
    model = build_float_model(cfg.model)
    tc = cfg.fp32
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(m(batch[0]), batch[1])}

    trainer = _trainer(model, optimizer, train_loader, tc, out_dir, dist, {"stage": "fp32", **config_to_dict(cfg)},
                       progress, tc.epochs * len(train_loader), loss_fn=loss_fn, resume=resume)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = trainer.fit()
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    model = trainer.model.module if isinstance(trainer.model, nn.parallel.DistributedDataParallel) else trainer.model
    return model, result


def quant_model_from_fp32(cfg: Config, fp32_state: Mapping[str, Tensor], bits: list[int], tie_mode: str,
                          calib: Tensor, bn_mode: str = "per_bit", device: torch.device | str = "cpu",
                          ) -> nn.Module:
    """Build the switchable model from FP32 weights and initialise its scales (every bit in ``bits``)."""
    float_model = build_float_model(cfg.model)
    load_state_dict_checked(float_model, dict(fp32_state), "the FP32 checkpoint")
    model = build_quant_model(cfg.model, bits, tie_mode, bn_mode, float_model=float_model,
                              weight_scales=cfg.quant.weight_scales).to(device)
    for _, layer in graph_layers(model):
        layer.lsq_grad_scale = cfg.quant.lsq_grad_scale
    calibrate(model, calib.to(device), scale_init=cfg.quant.scale_init)
    return model


def graph_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, model.get_submodule(name)) for name in graph_of(model).layers]


def optimizer_steps(tc: TrainConfig, batches: int, precisions: int) -> int:
    """Optimizer steps of a multi-precision run of ``batches`` per epoch: one per trained precision per batch
    (``per_precision``, Algorithm A.2), else one per batch (``accumulate``, A.1)."""
    return tc.epochs * batches * (precisions if tc.update_mode == "per_precision" else 1)


def train_quantized(cfg: Config, model: nn.Module, tc: TrainConfig, train_loader: Any, out_dir: Path,
                    dist: DistInfo, stage: str, sampler: BitSampler | None = None,
                    progress: bool = True, resume: bool = True) -> dict:
    """Multi-precision QAT (``sampler=None``) or the mixed-precision SuperNet (HASB / uniform sampler)."""
    bits = list(tc.train_bits or graph_of(model).bits)
    model.to(dist.device)
    opt_w, opt_s = make_optimizers(model, tc)
    broadcast_model(model, dist)  # calibration saw rank-local batches: start every rank from rank 0's state
    step = PrecisionStep(model, opt_s, tc, bits, dist, sampler, cfg.mixed.sigma0, len(train_loader), cfg.seed,
                         cfg.mixed.sandwich)
    trainer = _trainer(model, opt_w, train_loader, tc, out_dir, no_ddp(dist),
                       {"stage": stage, **config_to_dict(cfg)}, progress, tc.epochs * len(train_loader),
                       step_fn=step, extra_state={"precision_step": step}, resume=resume)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = trainer.fit()
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start  # less sensitive to other processes on the machine
    broadcast_buffers(model, dist)  # the last step's BN statistics are rank-local: keep rank 0's everywhere
    result["alrs_clamp_rate"] = step.alrs.clamp_rate()
    result["clamped_scales"] = step.clamped_scales
    set_bits(model, graph_of(model).bits[0])
    return result


def posthoc_switch(model: nn.Module, cfg: Config, calib: Tensor, bn_batches: list[tuple[Tensor, Tensor]],
                   trained: int) -> list[int]:
    """The post-hoc baseline: a model trained at ``trained`` bits only gets its other bit-widths without any
    gradient step: weights by double rounding of its codes, activation scales initialised from one batch,
    each BN copy started from the trained one and its statistics re-estimated on ``bn_batches``."""
    graph = graph_of(model)
    others = [b for b in graph.bits if b != trained]
    device = next(model.parameters()).device
    calibrate(model, calib.to(device), bits=others, scale_init=cfg.quant.scale_init, weights=False)
    for module in model.modules():
        if isinstance(module, SwitchableNorm):
            for b in others:
                module.norms[str(b)].load_state_dict(module.norms[str(trained)].state_dict())
    for b in others:
        recalibrate_bn(model, bn_batches, b)
    return list(graph.bits)


def export_model(model: nn.Module, cfg: Config, path: Path, available_bits: list[int], extra: dict | None = None,
                 ) -> Path:
    """Write the int8 artefact with what is needed to rebuild the architecture (``meta``)."""
    meta = {"model": config_to_dict(cfg.model), "quant": config_to_dict(cfg.quant), **(extra or {})}
    return save_int8(path, export_int8(model, meta, available_bits))


def first_batches(loader: Iterable, count: int) -> list[tuple[Tensor, Tensor]]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) >= count:
            break
    return out


def calib_inputs(cfg: Config, loader: Any) -> Tensor:
    return calibration_batch(loader, cfg.quant.calib_images)


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
