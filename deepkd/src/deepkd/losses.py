"""Logit-distillation losses: KD, the DKD decomposition (TCKD / NCKD), the top-k mask, MLKD and CRLD.

All per-sample losses here are multiplied by T^2 and left unreduced ([B]); the distillers reduce them.

DKD identity (per sample, exact): ``KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD`` where TCKD is the KL of the
binary (target, rest) distributions and NCKD the KL of the distributions renormalised over the non-target
classes. We compute the binary log-probabilities with log-sum-exp over the two groups (no ``log`` of a sum
of softmax entries, so a saturated student gives finite values); the released code takes ``log`` of the
summed probabilities, which is the same number wherever it is finite.

Masking follows the released code: excluded classes get ``-1000`` added to their *temperature-scaled*
logit before the softmax, so their probability is ``exp(-1000) = 0`` exactly (float32 and float64) and the
student's excluded logits receive exactly zero gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from effrepro.errors import UsageError
from torch import Tensor
from torch.nn import functional as F

MASK_OFFSET = 1000.0


def kl_per_sample(log_p_student: Tensor, p_teacher: Tensor) -> Tensor:
    """``sum_c p_t (log p_t - log p_s)`` per row (``0 log 0 = 0``)."""
    return F.kl_div(log_p_student, p_teacher, reduction="none").sum(1)


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton KD per sample: ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, shape [B]."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return kl_per_sample(log_p_s, p_t) * temperature**2


def target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean [B, C], True at the target class."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)


def topk_mask(teacher: Tensor, target: Tensor, k: int) -> Tensor:
    """Classes excluded from the masked NCKD: everything outside the teacher's top-``k`` logits, plus the target.

    The ranking includes the target (as released): when the teacher ranks the target inside its top-k,
    ``k - 1`` non-target classes survive, otherwise ``k``. ``k >= C`` excludes only the target (plain NCKD).
    The same mask is applied to teacher and student.
    """
    num_classes = teacher.shape[1]
    if k < 1:
        raise UsageError(f"top-k mask needs k >= 1, got {k}")
    if k >= num_classes:
        return target_mask(teacher, target)
    top = teacher.topk(k, dim=1).indices
    keep = torch.zeros_like(teacher, dtype=torch.bool).scatter_(1, top, True)
    return ~keep | target_mask(teacher, target)


def _binary_log_probs(scaled: Tensor, is_target: Tensor) -> Tensor:
    """``[log p_y, log (1 - p_y)]`` per row from scaled logits, by log-sum-exp over the two groups."""
    neg_inf = torch.finfo(scaled.dtype).min
    log_z = scaled.logsumexp(1)
    log_target = scaled.masked_fill(~is_target, neg_inf).logsumexp(1) - log_z
    log_rest = scaled.masked_fill(is_target, neg_inf).logsumexp(1) - log_z
    return torch.stack([log_target, log_rest], dim=1)


def tckd_loss(student: Tensor, teacher: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Target-class KD per sample: ``T^2 KL(b_t || b_s)`` with ``b = [p_y, 1 - p_y]``, shape [B]."""
    is_target = target_mask(student, target)
    log_b_s = _binary_log_probs(student / temperature, is_target)
    b_t = _binary_log_probs(teacher / temperature, is_target).exp()
    return kl_per_sample(log_b_s, b_t) * temperature**2


def nckd_loss(student: Tensor, teacher: Tensor, excluded: Tensor, temperature: float) -> Tensor:
    """Non-target KD per sample over the classes not in ``excluded`` (target, and outside top-k), shape [B]."""
    offset = MASK_OFFSET * excluded.to(student.dtype)
    log_p_s = F.log_softmax(student / temperature - offset, dim=1)
    p_t = F.softmax(teacher / temperature - offset, dim=1)
    return kl_per_sample(log_p_s, p_t) * temperature**2


def teacher_target_prob(teacher: Tensor, target: Tensor, temperature: float) -> Tensor:
    """``p_t[y]`` at temperature T, shape [B] (the NCKD weight of the KD identity is ``1 - p_t[y]``)."""
    return F.softmax(teacher / temperature, dim=1).gather(1, target.reshape(-1, 1)).squeeze(1)


def dkd_parts(student: Tensor, teacher: Tensor, target: Tensor, temperature: float, topk: int = 0
              ) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD); ``topk > 0`` restricts NCKD to the teacher's top-k classes (DTM)."""
    excluded = topk_mask(teacher, target, topk) if topk > 0 else target_mask(student, target)
    return tckd_loss(student, teacher, target, temperature), nckd_loss(student, teacher, excluded, temperature)


def class_consistency_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """MLKD class-level term: squared difference of the C x C class-correlation matrices, per class [C]."""
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    num_classes = teacher.shape[1]
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum(0) / num_classes


def batch_consistency_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """MLKD batch-level term: squared difference of the B x B sample-correlation matrices, per sample [B]."""
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    batch = teacher.shape[0]
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum(0) / batch


def masked_reduce(values: Tensor, mask: Tensor, scalar: bool, reduce: str = "mean") -> Tensor:
    """Apply a 0/1 selection ``mask`` to per-entry losses ``values``.

    ``scalar=True`` reduces first, then multiplies by the selected fraction (MLKD's released code, and the DeepKD
    release for MLKD and CRLD); ``scalar=False`` selects entries before reducing (CRLD's code). Equal when all
    entries are selected.
    """
    agg = values.mean() if reduce == "mean" else values.sum()
    if scalar:
        return agg * mask.to(values.dtype).mean()
    picked = values * mask.to(values.dtype)
    return picked.mean() if reduce == "mean" else picked.sum()


def mlkd_masks(teacher_weak: Tensor) -> tuple[Tensor, Tensor]:
    """MLKD's confidence masks from the weak view's teacher: samples whose top probability, and classes whose
    summed probability over the batch, are at most the batch median (the uncertain half gets the extra terms)."""
    p_teacher = F.softmax(teacher_weak, dim=1)
    confidence = p_teacher.max(1).values
    class_conf = p_teacher.sum(0)
    return (confidence <= torch.quantile(confidence.float(), 0.5).to(confidence.dtype),
            class_conf <= torch.quantile(class_conf.float(), 0.5).to(class_conf.dtype))


def mlkd_losses(student_weak: Tensor, student_strong: Tensor, teacher_weak: Tensor, teacher_strong: Tensor,
                temperatures: Sequence[float], kd_weight: float = 1.0, scalar_masks: bool = True) -> dict[str, Tensor]:
    """Multi-level logit distillation (Jin et al., CVPR 2023) without its cross-entropy: ``loss_kd`` (instance
    level), ``loss_cc`` (class level), ``loss_bc`` (batch level), each summed over ``temperatures``.

    Weak view: KD, class and batch consistency, masked by :func:`mlkd_masks`. Strong view: KD unmasked at the
    first three temperatures; as released, the last two "strong" KD terms use the weak logits, and the strong-view
    consistency terms (computed and dropped there) are left out. ``scalar_masks`` as in :func:`masked_reduce`.
    """
    sample_mask, class_mask = mlkd_masks(teacher_weak)
    temps = list(temperatures)
    kd_weak = sum(masked_reduce(kd_loss(student_weak, teacher_weak, t), sample_mask, scalar_masks) for t in temps)
    strong_pairs = [(student_strong, teacher_strong)] * 3 + [(student_weak, teacher_weak)] * (len(temps) - 3)
    kd_strong = sum(kd_loss(s, te, t).mean() for (s, te), t in zip(strong_pairs, temps))
    cc = sum(masked_reduce(class_consistency_loss(student_weak, teacher_weak, t), class_mask, scalar_masks, "sum")
             for t in temps)
    bc = sum(masked_reduce(batch_consistency_loss(student_weak, teacher_weak, t), sample_mask, scalar_masks, "sum")
             for t in temps)
    return {"loss_kd": kd_weight * (kd_weak + kd_strong), "loss_cc": kd_weight * cc, "loss_bc": kd_weight * bc}


def crld_masks(teacher_weak: Tensor, teacher_strong: Tensor, tau_w: float, tau_s: float) -> tuple[Tensor, Tensor]:
    """CRLD's confidence masks: weak-view teacher top probability >= ``tau_w`` (within-view terms), strong-view
    teacher top probability >= ``tau_s`` (cross-view terms)."""
    return (F.softmax(teacher_weak, dim=1).max(1).values >= tau_w,
            F.softmax(teacher_strong, dim=1).max(1).values >= tau_s)


def crld_losses(student_weak: Tensor, student_strong: Tensor, teacher_weak: Tensor, teacher_strong: Tensor,
                temperature: float, wv_weight: float = 2.0, cv_weight: float = 0.5, tau_w: float = 0.9,
                tau_s: float = 0.2) -> dict[str, Tensor]:
    """Cross-view consistency regularisation (Zhang et al., ACM MM 2024) without its cross-entropy.

    ``loss_kd_wv``: within-view KD (teacher weak -> student weak plus teacher strong -> student strong) on the
    samples the weak-view teacher is confident about; ``loss_kd_cv``: cross-view KD (teacher weak -> student strong
    plus teacher strong -> student weak) on the samples the strong-view teacher is confident about; per-sample
    masks, averaged over the whole batch (as the CRLD code).
    """
    mask_w, mask_s = crld_masks(teacher_weak, teacher_strong, tau_w, tau_s)
    within = kd_loss(student_weak, teacher_weak, temperature) + kd_loss(student_strong, teacher_strong, temperature)
    cross = kd_loss(student_strong, teacher_weak, temperature) + kd_loss(student_weak, teacher_strong, temperature)
    return {"loss_kd_wv": wv_weight * masked_reduce(within, mask_w, scalar=False),
            "loss_kd_cv": cv_weight * masked_reduce(cross, mask_s, scalar=False)}
