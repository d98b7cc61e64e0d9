"""Gumiho's training loss (spec §1.4): SmoothL1 on features + 0.1 soft cross-entropy, per-head decaying weights.

Recipe of ``train/main_deepspeed.py`` (the one ``scripts/train.sh`` runs), the default::

    L = 1.0 L_reg^T + 0.1 L_cls^T + (1/9) sum_i 0.8^(i+1) (1.0 L_reg^(i) + w_p(epoch) L_cls^(i))

with ``w_p = 0`` during the first two epochs (``--mlp_p_w 100``) and ``0.1`` after. The older accelerate script
(``train/main.py``) weighs every head 1 with CE on from the start: ``LossWeights.accelerate()``.

Alignment (teacher forcing). With ``f_t`` the target's post-norm feature and ``x_t`` the tokens, the batch is
shifted so that position t holds ``(f_t, x_{t+1})`` and the target ``f_{t+1}``; the Transformer output ``h_t``
regresses ``f_{t+1}`` under mask ``M_t``; MLP head i regresses ``f_{t+S+1+i}`` under ``M_{t+S+i}``
(``pred[:, :-(S+i)]`` against ``target[:, S+i:]``), which leaves out every position ``torch.roll`` wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gumiho.model import GumihoDraft


@dataclass
class LossWeights:
    """Every coefficient of the loss; the defaults are the deepspeed recipe."""

    v_w: float = 1.0  # Transformer feature regression
    p_w: float = 0.1  # Transformer soft cross-entropy
    mlp_v_w: float = 1.0  # MLP feature regression
    mlp_p_w: float = 0.1  # MLP soft cross-entropy once the warm-up is over
    mlp_ce_warmup_epochs: int = 2  # MLP CE is switched off for epochs < this (official --mlp_p_w 100)
    mlp_loss_decay: float = 0.8  # head i is weighted decay^(i+1) / denom
    mlp_loss_denom: float = 9.0

    @classmethod
    def accelerate(cls) -> LossWeights:
        """The accelerate script (``train/main.py``): uniform heads, no divisor, CE on from the start."""
        return cls(mlp_ce_warmup_epochs=0, mlp_loss_decay=1.0, mlp_loss_denom=1.0)

    def head_weight(self, head: int) -> float:
        return self.mlp_loss_decay ** (head + 1) / self.mlp_loss_denom

    def mlp_ce_weight(self, epoch: int) -> float:
        return 0.0 if epoch < self.mlp_ce_warmup_epochs else self.mlp_p_w


def combine(components: dict[str, torch.Tensor], weights: LossWeights, epoch: int, mlp_num: int) -> torch.Tensor:
    """The weighted total from ``reg_T``/``cls_T`` (absent when S = 0) and ``reg_{i}``/``cls_{i}`` per MLP head."""
    total = torch.zeros((), device=next(iter(components.values())).device)
    if "reg_T" in components:
        total = total + weights.v_w * components["reg_T"] + weights.p_w * components["cls_T"]
    ce_weight = weights.mlp_ce_weight(epoch)
    for i in range(mlp_num):
        head = weights.mlp_v_w * components[f"reg_{i}"] + ce_weight * components[f"cls_{i}"]
        total = total + weights.head_weight(i) * head
    return total


def add_feature_noise(features: torch.Tensor, lengths: torch.Tensor, std: float = 0.2) -> torch.Tensor:
    """EAGLE's uniform input noise ``(U(0,1) - 0.5) * std * 512 / L`` with L each sequence's own length (pitfall 7)."""
    scale = std * 512.0 / lengths.clamp(min=1).to(features.dtype)
    return features + (torch.rand_like(features) - 0.5) * scale[:, None, None]


def shift_batch(
    input_ids: torch.Tensor, features: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Stored ``(x_t, f_t, M_t)`` -> training pairs: ``next_ids[t] = x_{t+1}``, ``target[t] = f_{t+1}``.

    The last real position of every sequence gets mask 0 (its target would be padding).
    """
    next_ids = torch.roll(input_ids, -1, dims=1)
    next_ids[:, -1] = 0
    target = torch.roll(features, -1, dims=1)
    target[:, -1] = 0
    mask = loss_mask.clone().to(features.dtype)
    lengths = attention_mask.sum(dim=1).long()
    mask[torch.arange(len(mask)), (lengths - 1).clamp(min=0)] = 0
    mask = mask * attention_mask.to(mask.dtype)
    next_ids = next_ids * attention_mask.long()
    return {"next_ids": next_ids, "target": target, "mask": mask, "lengths": lengths}


def _head_losses(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lm_head: torch.Tensor, offset: int,
    target_logp: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], with_cls: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothL1 and soft CE of one head whose prediction at t is compared with ``target[t + offset]``.

    Only the rows with mask 1 go through the LM head (the others add exactly zero to both sums), which keeps the
    ``[rows, V]`` logits small for large vocabularies (pitfall 9). The soft label ``p = softmax(W target)`` was
    computed once for all masked rows (``target_logp``) and is shared by every head.
    """
    batch_idx, pos_idx = rows
    keep = pos_idx >= offset
    denominator = mask[:, offset:].sum() + 1e-5
    pred_rows = pred[batch_idx[keep], pos_idx[keep] - offset]
    target_rows = target[batch_idx[keep], pos_idx[keep]]
    reg = F.smooth_l1_loss(pred_rows, target_rows, reduction="none").mean(-1).sum() / denominator
    if not with_cls:  # weight 0 (MLP CE warm-up): skipping the [rows, V] logits changes nothing but the time
        return reg, torch.zeros((), device=reg.device)
    logq = torch.log_softmax(pred_rows.float() @ lm_head.float().t(), dim=-1)
    cls = -(target_logp[keep].exp() * logq).sum() / denominator
    return reg, cls


def gumiho_loss(
    draft: GumihoDraft,
    input_ids: torch.Tensor,
    features: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    lm_head: torch.Tensor,
    epoch: int,
    weights: LossWeights | None = None,
    noise_std: float = 0.2,
) -> dict[str, torch.Tensor]:
    """The full loss of one batch of stored samples; returns ``loss`` plus every component (detached).

    During the MLP-CE warm-up the MLP heads' CE terms are not computed (they are reported as 0).

    ``input_ids [B, L]``, ``features [B, L, H]`` (post-norm ``f_t``), ``loss_mask [B, L]`` (1 on assistant
    tokens), ``attention_mask [B, L]`` (1 on real tokens, right padding), ``lm_head [V, H]`` (frozen target W).
    """
    weights = weights or LossWeights()
    shifted = shift_batch(input_ids, features, loss_mask, attention_mask)
    inputs = add_feature_noise(features, shifted["lengths"], noise_std) if noise_std > 0 else features
    hidden, mlp_preds = draft.train_forward(inputs, shifted["next_ids"], attention_mask)
    target, mask = shifted["target"], shifted["mask"]
    rows = torch.nonzero(mask > 0, as_tuple=True)
    with torch.no_grad():
        target_logp = torch.log_softmax(target[rows].float() @ lm_head.float().t(), dim=-1)
    components: dict[str, torch.Tensor] = {}
    if hidden is not None:
        components["reg_T"], components["cls_T"] = _head_losses(hidden, target, mask, lm_head, 0, target_logp, rows)
    steps = draft.config.serial_steps
    mlp_cls = weights.mlp_ce_weight(epoch) != 0
    for i in range(draft.config.mlp_num):
        components[f"reg_{i}"], components[f"cls_{i}"] = _head_losses(
            mlp_preds[:, :, i], target, mask, lm_head, steps + i, target_logp, rows, mlp_cls
        )
    loss = combine(components, weights, epoch, draft.config.mlp_num)
    return {"loss": loss, **{k: v.detach() for k, v in components.items()}}
