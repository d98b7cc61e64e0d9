"""DeepKD (decoupled momentum knowledge distillation): the method in one place.

DeepKD splits the distillation gradient into three components of the same forward pass: the task gradient
(TOG, cross-entropy), the target-class gradient (TCG) and the non-target-class gradient (NCG) of a decoupled
KD loss, and gives each its own momentum buffer, with coefficients set from the components' gradient
signal-to-noise ratio (higher GSNR, more momentum). On top, a dynamic top-k mask (DTM) restricts the
non-target part to the teacher's K most likely classes and grows K during training (easy -> hard).

* :func:`deepkd_optimizer`: the three buffers on :class:`effrepro.optim.MultiMomentumSGD`;
  :func:`dot_optimizer`: DOT's two buffers (the baseline DeepKD generalises);
* :func:`group_losses`: the distiller's named losses -> one scalar per optimizer component;
  :func:`build_optimizer`: the solver config -> SGD, DOT or DeepKD;
* :class:`TopKSchedule`, :func:`static_topk`, :func:`topk_schedule`: the DTM curriculum ``K(epoch)``.

DTM's curve is our reconstruction: the released code has only a static K (``SOLVER.DEEPKD.TOPK``, off in
every config) while the paper describes a K that starts small and grows::

    s(e) = clip((e - e0) / (e1 - e0), 0, 1)          e = 1-indexed epoch
    K(e) = min(C, K0 + ceil((C - K0) * f(s)))         f = linear (s), cosine ((1 - cos(pi s)) / 2) or step

Defaults when not given: K0 = ceil(0.1 C), e0 = end of the KD warm-up, e1 = first LR decay epoch (cosine: 60 % of
training), and e1 >= e0 + 1.
K is kept >= 3: K = 2 with a correct teacher leaves one class (NCKD = 0) and K = 1 masks every class, which
with the -1000 offset silently turns NCKD into the unmasked all-class KD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from effrepro.errors import UsageError
from effrepro.optim import MultiMomentumSGD
from torch import Tensor, nn

from deepkd.distillers import COMPONENT_OF

if TYPE_CHECKING:  # annotations only: config.validate calls topk_schedule, so a runtime import would be a cycle
    from deepkd.config import SolverConfig, TrainConfig


# ---- the decoupled momenta -------------------------------------------------------------------------------
def dot_optimizer(
    params: Iterable[Any], lr: float, momentum: float = 0.9, delta: float = 0.075, weight_decay: float = 0.0,
    implementation: str = "auto",
) -> MultiMomentumSGD:
    """DOT (Zhao et al., ICCV 2023): task buffer mu - delta carrying the weight decay, KD buffer mu + delta.

    Components ``"task"`` then ``"kd"`` (the released order). The released code gives a parameter that
    receives only one of the two gradients the mean coefficient (and, for KD-only parameters, the decay in
    the KD buffer); here such a parameter keeps its buffer's own coefficient and the decay moves to the
    gradient it has. In logit distillation every student parameter receives both gradients, so the two
    rules never differ there.
    """
    return MultiMomentumSGD(
        params, lr=lr, momenta={"task": momentum - delta, "kd": momentum + delta},
        weight_decay=weight_decay, weight_decay_on="task", order=("task", "kd"), implementation=implementation,
    )


DEEPKD_MODES = ("code", "paper")


def deepkd_optimizer(
    params: Iterable[Any],
    lr: float,
    momentum: float = 0.9,
    delta_tog: float = 0.075,
    delta_tcg: float = -0.075,
    delta_ncg: float = 0.05,
    weight_decay: float = 0.0,
    mode: str = "code",
    weight_decay_on: str = "tcg",
    implementation: str = "auto",
) -> MultiMomentumSGD:
    """DeepKD's three buffers TOG / TCG / NCG with coefficients ``momentum + delta_k``.

    ``mode="code"`` is the released optimizer: the TOG buffer decays with mu_TCG (mu_TOG is never used for a
    parameter that receives a TCG gradient, i.e. every student parameter), the buffers are applied in the
    order TOG, NCG, TCG, and the weight decay enters only through the TCG buffer. ``mode="paper"`` gives each
    buffer its own coefficient (mu_TOG = 0.975 with the default deltas), as the paper describes the method;
    update order and weight-decay placement stay as released unless ``weight_decay_on`` says otherwise.
    ``implementation="auto"`` runs the fused step (:mod:`effrepro.kernels.momentum`); ``"reference"`` the
    component-by-component loop (identical parameters on CPU).
    """
    if mode not in DEEPKD_MODES:
        raise ValueError(f"unknown DeepKD momentum mode {mode!r}; use one of {DEEPKD_MODES}")
    momenta = {"tog": momentum + delta_tog, "tcg": momentum + delta_tcg, "ncg": momentum + delta_ncg}
    tied = {"tog": ("tcg", "ncg")} if mode == "code" else {}
    return MultiMomentumSGD(
        params, lr=lr, momenta=momenta, weight_decay=weight_decay, weight_decay_on=weight_decay_on,
        order=("tog", "ncg", "tcg"), tied_momenta=tied, implementation=implementation,
    )


DEEPKD_COMPONENT = {"task": "tog", "tcg": "tcg", "ncg": "ncg"}


def group_losses(losses: Mapping[str, Tensor], method: str, weights: Mapping[str, float] | None = None
                 ) -> dict[str, Tensor]:
    """The scalar loss of each optimizer component: ``{"total"}``, ``{"task", "kd"}`` or ``{"tog","tcg","ncg"}``."""
    weights = weights or {}
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise UsageError(f"solver.loss_weights names unknown losses {unknown}; this distiller returns "
                         f"{sorted(losses)}")
    groups: dict[str, Tensor] = {}
    for name, value in losses.items():
        tag = COMPONENT_OF.get(name)
        if tag is None:
            raise ValueError(f"loss {name!r} has no component tag")
        if method == "sgd":
            key = "total"
        elif method == "dot":
            key = "task" if tag == "task" else "kd"
        else:
            if tag == "kd":
                raise UsageError(f"DeepKD needs the decoupled distiller (got an undecomposed {name!r})")
            key = DEEPKD_COMPONENT[tag]
        weighted = value * weights.get(name, 1.0)
        groups[key] = groups[key] + weighted if key in groups else weighted
    return groups


def build_optimizer(params: list[nn.Parameter], solver: SolverConfig) -> torch.optim.Optimizer:
    if solver.method == "sgd":
        return torch.optim.SGD(params, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    if solver.method == "dot":
        return dot_optimizer(params, lr=solver.lr, momentum=solver.momentum, delta=solver.dot_delta,
                             weight_decay=solver.weight_decay)
    return deepkd_optimizer(params, lr=solver.lr, momentum=solver.momentum, delta_tog=solver.delta_tog,
                            delta_tcg=solver.delta_tcg, delta_ncg=solver.delta_ncg,
                            weight_decay=solver.weight_decay, mode=solver.momentum_mode,
                            weight_decay_on=solver.weight_decay_on)


# ---- DTM: the dynamic top-k mask --------------------------------------------------------------------------------
CURVES = ("linear", "cosine", "step")
MIN_K = 3


@dataclass(frozen=True)
class TopKSchedule:
    """``K(epoch)`` for the non-target mask; ``K(e <= e0) = K0``, ``K(e >= e1) = num_classes``."""

    num_classes: int
    k0: int
    start_epoch: float
    end_epoch: float
    curve: str = "linear"

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise UsageError(f"unknown top-k curve {self.curve!r}; use one of: {', '.join(CURVES)}")
        if self.k0 > self.num_classes:
            raise UsageError(f"mask K0={self.k0} is larger than the class count {self.num_classes}; "
                             f"use K0 <= {self.num_classes}")
        if self.k0 < MIN_K:
            raise UsageError(f"mask K0={self.k0} is degenerate (K <= 2 zeroes or breaks NCKD); use K0 >= {MIN_K}")
        if self.end_epoch <= self.start_epoch:
            raise UsageError(f"mask schedule needs end_epoch > start_epoch, got {self.start_epoch} .. {self.end_epoch}")

    def progress(self, epoch: float) -> float:
        s = min(max((epoch - self.start_epoch) / (self.end_epoch - self.start_epoch), 0.0), 1.0)
        if self.curve == "cosine":
            return (1.0 - math.cos(math.pi * s)) / 2.0
        if self.curve == "step":
            return 1.0 if s >= 1.0 else 0.0
        return s

    def __call__(self, epoch: float) -> int:
        grow = math.ceil((self.num_classes - self.k0) * self.progress(epoch) - 1e-9)
        return min(self.num_classes, self.k0 + grow)


def static_topk(k: int, num_classes: int) -> int:
    """Validate a static K (0 = off)."""
    if k == 0:
        return 0
    if k > num_classes:
        raise UsageError(f"mask K={k} is larger than the class count {num_classes}; use K <= {num_classes} or 0")
    if k < MIN_K:
        raise UsageError(f"mask K={k} is degenerate; use K >= {MIN_K} (or 0 for no mask)")
    return k


def topk_schedule(cfg: TrainConfig) -> Callable[[float], int]:
    """Epoch -> K of the non-target mask (0 = off); the dynamic schedule's defaults are the module docstring's."""
    mask, classes = cfg.mask, cfg.classes
    if mask.mode == "off":
        return lambda epoch: 0
    if mask.mode == "static":
        k = static_topk(mask.k, classes)
        return lambda epoch: k
    warmup = cfg.distiller.warmup if cfg.distiller.warmup is not None else 20
    if cfg.solver.lr_schedule == "step" and cfg.solver.decay_epochs:
        default_end = min(cfg.solver.decay_epochs)
    else:
        default_end = 0.6 * cfg.solver.epochs
    start = mask.start_epoch if mask.start_epoch is not None else warmup
    end = mask.end_epoch if mask.end_epoch is not None else max(default_end, start + 1)  # short runs: >= 1 epoch
    return TopKSchedule(classes, mask.k0 if mask.k0 is not None else math.ceil(0.1 * classes), start, end,
                        mask.curve)
