"""The three router losses of FTP (paper Eq. 5-6): sparsity hinge, guide (static-router) BCE, distillation.

``L = λ_g(step) L_guide + λ_s L_sparse + λ_d L_distill`` with equal weights (paper) and the guide
weight decaying linearly to 0 at half of training [RECONSTRUCTION of the decay shape].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp(min=1.0)


def realized_sparsity(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Soft realised sparsity ``ŝ_i = 1 - mean_t p_{i,t}`` over the real tokens [RECONSTRUCTION]."""
    return 1.0 - _masked_mean(probs, valid)


def sparsity_loss(
    probs: Sequence[torch.Tensor], targets: Sequence[float], valid: torch.Tensor, symmetric: bool = False
) -> torch.Tensor:
    """``Σ_i max(s_i - ŝ_i, 0)`` (paper Eq. 5): one-sided, it only punishes skipping too few tokens.

    ``symmetric=True`` is the ablation ``Σ_i (s_i - ŝ_i)^2``.
    """
    terms = []
    for p, target in zip(probs, targets):
        gap = float(target) - realized_sparsity(p, valid)
        terms.append(gap.pow(2) if symmetric else gap.clamp(min=0.0))
    return torch.stack(terms).sum()


def guide_loss(probs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between the router probability and the static router's keep decision."""
    terms = [_masked_mean(F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), g.to(p.dtype), reduction="none"), valid)
             for p, g in zip(probs, guides)]
    return torch.stack(terms).mean()


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` at temperature 1, averaged over the real positions."""
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return _masked_mean(kl, valid)


def distill_hidden_mse(teacher_hidden: torch.Tensor, student_hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ``distill_on="final_hidden_mse"`` alternative: MSE of the final-norm hidden states."""
    return _masked_mean((teacher_hidden.float() - student_hidden.float()).pow(2).mean(-1), valid)


def guide_weight(step: int, total_steps: int, decay_fraction: float = 0.5) -> float:
    """``λ_g = 1 - step / T_decay`` with ``T_decay = decay_fraction * total``, then 0."""
    horizon = max(decay_fraction * total_steps, 1e-9)
    return max(0.0, 1.0 - step / horizon)
