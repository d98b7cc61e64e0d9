"""The Jakiro training objective (spec §1.4, official ``jakiro/train/main.py``).

Per sequence with target features ``f_0..f_{L-1}`` (post-final-norm last hidden states), tokens ``x_0..x_{L-1}``
and an assistant-token mask, the draft input at t is ``(f_t + noise, x_{t+1})`` and::

    T_t = f_{t+1}                 regression target (last row zero-padded)
    P_t = softmax(W_lm T_t)       teacher distribution (the target's distribution of x_{t+2})
    M_t = loss_mask[t], M_{L-1} = 0

    branch 0 (MoE)          at t -> T_t,     mask M_t
    branch 1 (contrastive)  at t -> T_{t+1}, mask M_{t+1}    (two steps ahead: the +1 shift, pitfall 10)

    L_reg = sum_t M_t mean_d SmoothL1(pred_t - T_t) / (sum M + 1e-5)
    L_cls = -sum_t M_t sum_v P_t(v) log softmax(W_lm pred_t)(v) / (sum M + 1e-5)
    L = v_w (L_reg0 + c L_reg1) + p_w (L_cls0 + c L_cls1),  v_w = 1.0, p_w = 0.1, c = 0.5

Jakiro* and the no-contrastive ablation use branch 0 only (``c = 0``). There is no router load-balancing loss.
Input-feature noise: ``F += (U(0,1) - 0.5) * std * 512 / L`` with std 0.2 and L the sample's length
(pitfall 16), training split only; targets stay clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    v_w: float = 1.0  # regression weight
    p_w: float = 0.1  # soft cross-entropy weight
    const: float = 0.5  # weight of the contrastive branch (0 = ablation without it)


@dataclass
class ShiftedBatch:
    """Draft inputs and targets after the official shift (``[B, L, ...]``; padding rows carry mask 0)."""

    features: torch.Tensor  # f_t                  [B, L, H]
    next_ids: torch.Tensor  # x_{t+1} (0 at end)   [B, L]
    target: torch.Tensor  # f_{t+1} (0 at end)     [B, L, H]
    loss_mask: torch.Tensor  # M_t                 [B, L] float
    attention_mask: torch.Tensor  # 1 = real token [B, L]


def shift_batch(
    hidden_states: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> ShiftedBatch:
    """Build the official ``(f_t, x_{t+1}) -> f_{t+1}`` pairing from a right-padded batch.

    The last real position of every row has no successor, so its mask is zeroed (official ``loss_mask[-1] = 0``
    applied before padding).
    """
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(torch.long)
    zero_id = torch.zeros(batch, 1, dtype=input_ids.dtype, device=input_ids.device)
    next_ids = torch.cat([input_ids[:, 1:], zero_id], dim=1)
    zero_feat = torch.zeros_like(hidden_states[:, :1])
    target = torch.cat([hidden_states[:, 1:], zero_feat], dim=1)
    has_next = torch.cat([attention_mask[:, 1:], torch.zeros_like(attention_mask[:, :1])], dim=1)
    mask = loss_mask.to(hidden_states.dtype) * has_next.to(hidden_states.dtype) * attention_mask.to(hidden_states.dtype)
    return ShiftedBatch(hidden_states, next_ids * attention_mask.to(next_ids.dtype), target, mask, attention_mask)


def uniform_feature_noise(
    features: torch.Tensor, lengths: torch.Tensor, std: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Official ``AddUniformNoise``: ``(U(0,1) - 0.5) * std * 512 / L`` with L the sample's own length."""
    amplitude = std * 512.0 / lengths.to(features.dtype).clamp(min=1)
    uniform = torch.rand(features.shape, generator=generator, dtype=features.dtype, device=features.device)
    return features + (uniform - 0.5) * amplitude[:, None, None]


def branch_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lm_head_weight: torch.Tensor,
    chunk_rows: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_reg, L_cls, top-1 accuracy)`` of one branch whose positions are already aligned with ``target``.

    Only masked rows reach the (vocabulary-sized) LM head, in chunks of ``chunk_rows`` rows so the logits never
    need ``B * L * V`` memory; the result equals the official dense formula (unmasked rows contribute 0).
    """
    denom = mask.sum() + 1e-5
    reg = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(-1)
    l_reg = (reg * mask).sum() / denom
    rows = mask.reshape(-1) > 0
    pred_rows = pred.reshape(-1, pred.shape[-1])[rows]
    target_rows = target.reshape(-1, target.shape[-1])[rows]
    weight_rows = mask.reshape(-1)[rows]
    cls_sum = pred.new_zeros(())
    correct = pred.new_zeros(())
    for start in range(0, pred_rows.shape[0], chunk_rows):
        p_chunk = pred_rows[start:start + chunk_rows]
        with torch.no_grad():
            teacher_logits = F.linear(target_rows[start:start + chunk_rows], lm_head_weight)
            teacher = teacher_logits.softmax(-1)
        logp = F.linear(p_chunk, lm_head_weight).log_softmax(-1)
        w = weight_rows[start:start + chunk_rows]
        cls_sum = cls_sum - (w * (teacher * logp).sum(-1)).sum()
        with torch.no_grad():
            correct = correct + (w * (logp.argmax(-1) == teacher_logits.argmax(-1)).to(w.dtype)).sum()
    return l_reg, cls_sum / denom, correct / denom


def jakiro_loss(
    pred: torch.Tensor, batch: ShiftedBatch, lm_head_weight: torch.Tensor, weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """The official objective. ``pred`` is ``[2, B, L, H]`` (both branches) or ``[B, L, H]`` (branch 0 only).

    Returns ``loss`` (back-propagated) and the detached parts ``reg0, cls0, acc0`` (+ ``reg1, cls1, acc1``).
    """
    weights = weights or LossWeights()
    two_branches = pred.dim() == 4
    moe = pred[0] if two_branches else pred
    reg0, cls0, acc0 = branch_terms(moe, batch.target, batch.loss_mask, lm_head_weight)
    out = {"reg0": reg0.detach(), "cls0": cls0.detach(), "acc0": acc0}
    reg, cls = reg0, cls0
    if two_branches and weights.const != 0:
        # position t of the contrastive branch predicts T_{t+1} = f_{t+2}; mask M[:, 1:]
        reg1, cls1, acc1 = branch_terms(pred[1][:, :-1], batch.target[:, 1:], batch.loss_mask[:, 1:], lm_head_weight)
        reg, cls = reg0 + weights.const * reg1, cls0 + weights.const * cls1
        out.update(reg1=reg1.detach(), cls1=cls1.detach(), acc1=acc1)
    out["loss"] = weights.v_w * reg + weights.p_w * cls
    return out
