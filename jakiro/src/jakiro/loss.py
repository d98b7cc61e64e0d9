"""The Jakiro training objective (official ``jakiro/train/main.py``), on the engine's loss pieces.

The engine's ``DraftCollator`` builds the official pairing (draft input ``(f_t + noise, x_{t+1})``, target
``T_t = f_{t+1}``, mask ``M_t`` with the last real position zeroed, uniform noise ``(U - 0.5) * 0.2 * 512 / L``
on the inputs only). ``effrepro.specdec.feature_losses(pred, batch, lm_head, shift)`` gives, for a prediction at
t against ``T_{t+shift}`` under ``M_{t+shift}``::

    L_reg = sum_t M mean_d SmoothL1(pred_t - T_{t+shift}) / (sum M + 1e-5)
    L_cls = -sum_t M sum_v P(v) log softmax(W_lm pred_t)(v) / (sum M + 1e-5),   P = softmax(W_lm T_{t+shift})

Jakiro uses it twice::

    branch 0 (MoE)          shift 0: at t -> f_{t+1}, mask M_t
    branch 1 (contrastive)  shift 1: at t -> f_{t+2}, mask M_{t+1}     (the +1 shift: one token further)
    L = v_w (L_reg0 + c L_reg1) + p_w (L_cls0 + c L_cls1),   v_w = 1.0, p_w = 0.1, c = const = 0.5

Jakiro* and the no-contrastive ablation (``const = 0``) use branch 0 only. No router load-balancing loss.

Speed: only rows with ``M > 0`` (assistant tokens, about 40 % of the ShareGPT tokens) reach the vocabulary-sized
LM head here (:func:`masked_feature_losses`); unmasked rows contribute exactly 0 to both sums, so the value is the
official one (tested against ``feature_losses`` on the full batch) at a fraction of the cost on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from effrepro.specdec import DraftBatch, DraftHead, LossContext, feature_losses, topk_accuracy

DEFAULT_WEIGHTS = {"v_w": 1.0, "p_w": 0.1, "const": 0.5}


def masked_feature_losses(
    pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, shift: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``feature_losses(pred, batch, lm_head, shift)`` computed on the supervised rows only (same value)."""
    length = batch.target_features.shape[1]
    keep = batch.loss_mask[:, shift:] > 0
    rows = pred[:, : length - shift][keep][None]  # [1, M, H]
    targets = batch.target_features[:, shift:][keep][None]
    weights = batch.loss_mask[:, shift:][keep][None]
    ids = torch.zeros(weights.shape, dtype=torch.long, device=weights.device)
    compact = DraftBatch(input_ids=ids, features=targets, next_ids=ids, target_features=targets, loss_mask=weights,
                         attention_mask=torch.ones_like(ids))
    if rows.shape[1] == 0:
        zero = pred.sum() * 0.0  # keeps the graph (and DDP) connected
        return zero, zero
    return feature_losses(rows, compact, lm_head, shift=0)


def eagle_masked_loss(head: DraftHead, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
    """The engine's EAGLE loss (``v_w L_reg + p_w L_cls``) via :func:`masked_feature_losses`: a ``train_head``
    ``loss_fn`` for the EAGLE-2 baseline so every head pays the same LM-head cost per supervised token."""
    pred = head.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    reg, cls = masked_feature_losses(pred, batch, ctx.lm_head, 0)
    loss = ctx.weights.get("v_w", 1.0) * reg + ctx.weights.get("p_w", 0.1) * cls
    return {"loss": loss, "reg": reg.detach(), "cls": cls.detach()}


def jakiro_loss(
    pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, weights: Mapping[str, float] | None = None,
    with_accuracy: bool = False,
) -> dict[str, torch.Tensor]:
    """The official objective. ``pred`` is ``[2, B, L, H]`` (both branches) or ``[B, L, H]`` (branch 0 only).

    Returns ``loss`` (back-propagated) and the detached parts ``reg0, cls0`` (+ ``reg1, cls1``); with
    ``with_accuracy`` also the top-1 agreement with the target's argmax token ``acc0`` (+ ``acc1``).
    """
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    two_branches = pred.dim() == 4
    moe = pred[0] if two_branches else pred
    reg0, cls0 = masked_feature_losses(moe, batch, lm_head, shift=0)
    out = {"reg0": reg0.detach(), "cls0": cls0.detach()}
    reg, cls = reg0, cls0
    if two_branches and w["const"] != 0:
        reg1, cls1 = masked_feature_losses(pred[1], batch, lm_head, shift=1)
        reg, cls = reg0 + w["const"] * reg1, cls0 + w["const"] * cls1
        out.update(reg1=reg1.detach(), cls1=cls1.detach())
    if with_accuracy:
        hits, count = topk_accuracy(moe.detach(), batch, lm_head, k=1, shift=0)
        out["acc0"] = torch.tensor(hits / max(count, 1.0))
        if two_branches:
            hits, count = topk_accuracy(pred[1].detach(), batch, lm_head, k=1, shift=1)
            out["acc1"] = torch.tensor(hits / max(count, 1.0))
    out["loss"] = w["v_w"] * reg + w["p_w"] * cls
    return out
