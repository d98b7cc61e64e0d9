"""Distillers in the mdistiller style: ``forward_train(image, target, epoch=...) -> (student_logits, losses)``.

Each loss carries a *component* tag (:data:`COMPONENT_OF`): ``task`` (cross-entropy and other task-side
terms, DeepKD's TOG), ``tcg`` / ``ncg`` (the target-class and non-target-class KD parts, DeepKD's TCG / NCG)
or ``kd`` (an undecomposed distillation term). The training method decides how components meet the
optimizer: one SGD buffer for their sum, DOT's two buffers (task / everything else) or DeepKD's three
(which needs a ``decoupled`` distiller, i.e. no ``kd``-tagged term).

With ``decoupled=True`` a distiller returns the split that DeepKD's ``deepkd_plugin`` produces in the
released code: ``loss_task``, ``loss_tckd``, ``loss_nckd``. ``release_quirks=True`` keeps the released
deviations from the exact decomposition (KD-style NCKD weight as a product of batch means; MLKD / CRLD
confidence masks applied as a scalar fraction of an already averaged loss); ``False`` uses the exact
per-sample forms. See the README for the full list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from effrepro.errors import UsageError
from torch import Tensor, nn
from torch.nn import functional as F

from deepkd.losses import (
    crld_losses,
    crld_masks,
    dkd_parts,
    kd_loss,
    masked_reduce,
    mlkd_losses,
    mlkd_masks,
    teacher_target_prob,
)

COMPONENT_OF = {
    "loss_ce": "task", "loss_task": "task",
    "loss_kd": "kd", "loss_cc": "kd", "loss_bc": "kd", "loss_kd_wv": "kd", "loss_kd_cv": "kd",
    "loss_tckd": "tcg", "loss_nckd": "ncg",
}
MLKD_TEMPERATURES = (None, 3.0, 5.0, 2.0, 6.0)  # None = the configured temperature (4 on CIFAR)


def warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """Linear KD warm-up ``min(e / E_w, 1)`` with a 1-indexed epoch (so epoch 1 of 20 gives 0.05)."""
    return 1.0 if warmup_epochs <= 0 else min(float(epoch) / warmup_epochs, 1.0)


class Distiller(nn.Module):
    """Student + frozen teacher. In training mode ``forward`` returns ``(student_logits, {name: loss})``.

    ``teacher_logits`` may be given to skip the teacher forward (the teacher is frozen and in eval mode, so
    cached logits of un-augmented inputs are the same numbers). ``topk`` > 0 restricts NCKD to the teacher's
    top-k classes (DeepKD's mask); the training loop passes the value of its schedule.
    """

    two_views = False
    uses_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
        elif self.uses_teacher:
            raise UsageError(f"{type(self).__name__} needs a teacher model")

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN running statistics of the teacher stay frozen
        return self

    def learnable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    @torch.no_grad()
    def run_teacher(self, image: Tensor) -> Tensor:
        return self.teacher(image)

    def forward(self, image: Any, target: Tensor | None = None, epoch: float = 1.0,
                teacher_logits: Any = None, topk: int = 0) -> Any:
        if not self.training:
            return self.student(image[0] if isinstance(image, (tuple, list)) else image)
        if target is None:
            raise ValueError("training forward needs the target labels")
        return self.forward_train(image, target, epoch=epoch, teacher_logits=teacher_logits, topk=topk)

    def forward_train(self, image: Any, target: Tensor, epoch: float, teacher_logits: Any, topk: int
                      ) -> tuple[Any, dict[str, Tensor]]:
        raise NotImplementedError


class Vanilla(Distiller):
    """Plain cross-entropy training (teachers, and the CE-only baseline arm)."""

    uses_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, **_: Any) -> None:
        super().__init__(student, None)

    def forward_train(self, image, target, epoch, teacher_logits, topk):
        logits = self.student(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


class _DecoupledMixin:
    """The released ``deepkd_plugin``: per-sample (TCKD, NCKD) in DKD style or KD style."""

    temperature: float
    alpha: float
    beta: float
    warmup: float
    plugin: str
    release_quirks: bool

    def split_kd(self, student: Tensor, teacher: Tensor, target: Tensor, epoch: float, topk: int,
                 temperature: float | None = None) -> tuple[Tensor, Tensor]:
        temp = self.temperature if temperature is None else temperature
        tckd, nckd = dkd_parts(student, teacher, target, temp, topk)
        if self.plugin == "dkd":  # alpha * r(e) * TCKD, beta * r(e) * NCKD
            ramp = warmup_factor(epoch, self.warmup)
            return self.alpha * ramp * tckd, self.beta * ramp * nckd
        # KD style: TCKD + (1 - p_t[y]) NCKD, no alpha / beta / warm-up (the KD identity)
        weight = 1.0 - teacher_target_prob(teacher, target, temp)
        if self.release_quirks:  # released: mean(1 - p_t[y]) * mean(NCKD), a product of batch means
            weight = weight.mean().expand_as(weight)
        return tckd, weight * nckd


class KD(_DecoupledMixin, Distiller):
    """Hinton et al. KD: ``ce_weight * CE + kd_weight * T^2 KL``. Decoupled: TCKD and weighted NCKD.

    In the released KD-style DeepKD path ``kd_weight`` is ignored (TCKD and NCKD enter with weight 1);
    ``release_quirks=False`` keeps ``kd_weight`` on both parts so they sum to exactly the KD loss.
    """

    def __init__(self, student, teacher, ce_weight: float = 0.1, kd_weight: float = 0.9, temperature: float = 4.0,
                 decoupled: bool = False, release_quirks: bool = True, **_: Any) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.decoupled, self.release_quirks, self.plugin = decoupled, release_quirks, "kd"
        self.alpha = self.beta = 1.0
        self.warmup = 0.0

    def forward_train(self, image, target, epoch, teacher_logits, topk):
        logits = self.student(image)
        teacher = self.run_teacher(image) if teacher_logits is None else teacher_logits
        loss_ce = self.ce_weight * F.cross_entropy(logits, target)
        if not self.decoupled:
            if topk:
                raise UsageError("the top-k mask acts on NCKD; use it with a decoupled distiller (DeepKD)")
            return logits, {"loss_ce": loss_ce, "loss_kd": self.kd_weight * kd_loss(logits, teacher,
                                                                                       self.temperature).mean()}
        tckd, nckd = self.split_kd(logits, teacher, target, epoch, topk)
        weight = 1.0 if self.release_quirks else self.kd_weight
        return logits, {"loss_task": loss_ce, "loss_tckd": weight * tckd.mean(), "loss_nckd": weight * nckd.mean()}


class DKD(_DecoupledMixin, Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022): ``CE + r(e) (alpha TCKD + beta NCKD)``, r = linear warm-up."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0, warmup: float = 20, decoupled: bool = False, **_: Any) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.alpha, self.beta = ce_weight, alpha, beta
        self.temperature, self.warmup, self.decoupled = temperature, warmup, decoupled
        self.plugin, self.release_quirks = "dkd", False

    def forward_train(self, image, target, epoch, teacher_logits, topk):
        logits = self.student(image)
        teacher = self.run_teacher(image) if teacher_logits is None else teacher_logits
        tckd, nckd = self.split_kd(logits, teacher, target, epoch, topk)
        ce_name = "loss_task" if self.decoupled else "loss_ce"
        return logits, {ce_name: self.ce_weight * F.cross_entropy(logits, target),
                        "loss_tckd": tckd.mean(), "loss_nckd": nckd.mean()}


def _views(image: Any, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(image, (tuple, list)) or len(image) != 2:
        raise UsageError(f"{name} needs two views per batch (weak, strong); enable data.two_views")
    return image[0], image[1]


class MLKD(_DecoupledMixin, Distiller):
    """Multi-level logit distillation (Jin et al., CVPR 2023) on a weak and a strong view.

    Instance-level KD at temperatures {T, 3, 5, 2, 6}, class-level and batch-level consistency; the weak
    view's terms are kept only for samples (classes) whose teacher confidence is at most the batch median.
    Base form as released (the LS-KD / DeepKD code): masks as scalar fractions, and the "strong" KD terms
    at T=2 and T=6 computed on the weak logits; the strong-view consistency terms are computed and dropped
    there, so we do not compute them. Decoupled (DeepKD): ``loss_task`` = CE(both views) + weak consistency
    terms, ``loss_tckd`` / ``loss_nckd`` = the split KD terms of both views at the five temperatures.
    """

    two_views = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, kd_weight: float = 1.0, temperature: float = 4.0,
                 alpha: float = 1.0, beta: float = 8.0, warmup: float = 20, plugin: str = "dkd",
                 decoupled: bool = False, release_quirks: bool = True, **_: Any) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.alpha, self.beta, self.warmup, self.plugin = alpha, beta, warmup, plugin
        self.decoupled, self.release_quirks = decoupled, release_quirks

    def _temps(self) -> list[float]:
        return [self.temperature if t is None else t for t in MLKD_TEMPERATURES]

    def forward_train(self, image, target, epoch, teacher_logits, topk):
        weak, strong = _views(image, "MLKD")
        s_weak, s_strong = self.student(weak), self.student(strong)
        if teacher_logits is None:
            t_weak, t_strong = self.run_teacher(weak), self.run_teacher(strong)
        else:
            t_weak, t_strong = teacher_logits
        loss_ce = self.ce_weight * (F.cross_entropy(s_weak, target) + F.cross_entropy(s_strong, target))
        scalar, w = self.release_quirks, self.kd_weight
        base = mlkd_losses(s_weak, s_strong, t_weak, t_strong, self._temps(), w, scalar)
        if not self.decoupled:
            if topk:
                raise UsageError("the top-k mask acts on NCKD; use it with a decoupled distiller (DeepKD)")
            return (s_weak, s_strong), {"loss_ce": loss_ce, **base}
        sample_mask, _ = mlkd_masks(t_weak)
        tckd = nckd = 0.0
        for t in self._temps():
            tc_w, nc_w = self.split_kd(s_weak, t_weak, target, epoch, topk, temperature=t)
            tc_s, nc_s = self.split_kd(s_strong, t_strong, target, epoch, topk, temperature=t)
            tckd = tckd + w * (masked_reduce(tc_w, sample_mask, scalar) + tc_s.mean())
            nckd = nckd + w * (masked_reduce(nc_w, sample_mask, scalar) + nc_s.mean())
        return (s_weak, s_strong), {"loss_task": loss_ce + base["loss_cc"] + base["loss_bc"], "loss_tckd": tckd,
                                    "loss_nckd": nckd}


class CRLD(_DecoupledMixin, Distiller):
    """Cross-view consistency regularisation (Zhang et al., ACM MM 2024) on a weak and a strong view.

    Within-view KD (teacher weak -> student weak, teacher strong -> student strong) on samples whose
    weak-view teacher confidence is >= tau_w, cross-view KD (teacher weak -> student strong and vice versa)
    on samples whose strong-view teacher confidence is >= tau_s. Base form: per-sample masks (as released);
    decoupled form: the released DeepKD path applies them as scalar fractions unless ``release_quirks=False``.
    """

    two_views = True

    def __init__(self, student, teacher, ce_weight: float = 1.0, wv_weight: float = 2.0, cv_weight: float = 0.5,
                 temperature: float = 4.0, tau_w: float = 0.9, tau_s: float = 0.2, alpha: float = 1.0,
                 beta: float = 8.0, warmup: float = 20, plugin: str = "dkd", decoupled: bool = False,
                 release_quirks: bool = True, **_: Any) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.wv_weight, self.cv_weight, self.temperature = ce_weight, wv_weight, cv_weight, temperature
        self.tau_w, self.tau_s = tau_w, tau_s
        self.alpha, self.beta, self.warmup, self.plugin = alpha, beta, warmup, plugin
        self.decoupled, self.release_quirks = decoupled, release_quirks

    def forward_train(self, image, target, epoch, teacher_logits, topk):
        weak, strong = _views(image, "CRLD")
        s_weak, s_strong = self.student(weak), self.student(strong)
        if teacher_logits is None:
            t_weak, t_strong = self.run_teacher(weak), self.run_teacher(strong)
        else:
            t_weak, t_strong = teacher_logits
        loss_ce = self.ce_weight * (F.cross_entropy(s_weak, target) + F.cross_entropy(s_strong, target))
        if not self.decoupled:
            if topk:
                raise UsageError("the top-k mask acts on NCKD; use it with a decoupled distiller (DeepKD)")
            return (s_weak, s_strong), {"loss_ce": loss_ce, **crld_losses(
                s_weak, s_strong, t_weak, t_strong, self.temperature, self.wv_weight, self.cv_weight, self.tau_w,
                self.tau_s)}
        mask_w, mask_s = crld_masks(t_weak, t_strong, self.tau_w, self.tau_s)
        within = [(s_weak, t_weak), (s_strong, t_strong)]
        cross = [(s_strong, t_weak), (s_weak, t_strong)]
        scalar = self.release_quirks
        parts = {"tckd": 0.0, "nckd": 0.0}
        for pairs, mask, weight in ((within, mask_w, self.wv_weight), (cross, mask_s, self.cv_weight)):
            split = [self.split_kd(s, t, target, epoch, topk) for s, t in pairs]
            for index, key in enumerate(("tckd", "nckd")):
                per_sample = sum(pair[index] for pair in split)
                parts[key] = parts[key] + weight * masked_reduce(per_sample, mask, scalar)
        return (s_weak, s_strong), {"loss_task": loss_ce, "loss_tckd": parts["tckd"], "loss_nckd": parts["nckd"]}


DISTILLERS: dict[str, type[Distiller]] = {"none": Vanilla, "kd": KD, "dkd": DKD, "mlkd": MLKD, "crld": CRLD}


def build_distiller(name: str, student: nn.Module, teacher: nn.Module | None, **options: Any) -> Distiller:
    """A distiller by name (``none``, ``kd``, ``dkd``, ``mlkd``, ``crld``) with its options."""
    key = name.lower()
    if key not in DISTILLERS:
        raise UsageError(f"unknown distiller {name!r}; choose one of: {', '.join(DISTILLERS)}")
    return DISTILLERS[key](student, teacher, **options)


def student_outputs(logits: Any) -> Sequence[Tensor]:
    """The student logits tensors a distiller's losses are computed from (one or two views)."""
    return tuple(logits) if isinstance(logits, (tuple, list)) else (logits,)
