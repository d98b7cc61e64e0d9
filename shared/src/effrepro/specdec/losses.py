"""The EAGLE training loss pieces every head reuses (official EAGLE recipe).

``feature_losses(pred, batch, lm_head, shift)`` compares a prediction made at position t with the target feature
``T_{t+shift} = f_{t+1+shift}`` under the mask ``M_{t+shift}``, over ``t < L - shift``: ``shift=0`` is the
ordinary next-feature loss, ``shift=1`` Jakiro's contrastive branch (f_{t+2}), ``shift=2+i`` Gumiho's MLP head i.
Both terms are sums over positions divided by ``(sum of the mask + 1e-5)``, as the official code does:

* regression: per-position mean over the hidden dimension of SmoothL1 (beta 1);
* classification: soft cross-entropy against the teacher ``softmax(W_lm T)`` (no grad), in float32.

Rows whose mask is 0 (prompt, padding, the last position) are dropped before either term is computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effrepro.specdec.batch import DraftBatch, LossContext

EPS = 1e-5


def _shifted(pred: torch.Tensor, batch: DraftBatch, shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = batch.target_features.shape[1]
    if shift < 0 or shift >= length:
        raise ValueError(f"shift {shift} out of range for sequences of length {length}")
    pred = pred[:, : length - shift]
    target = batch.target_features[:, shift:]
    mask = batch.loss_mask[:, shift:].to(torch.float32)
    return pred, target, mask


def feature_losses(
    pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, shift: int = 0, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(regression, classification)`` for ``pred [B, L, H]`` against ``f_{t+1+shift}`` (see module docstring).

    The teacher softmax and the log-softmax run in float32 in chunks of ``chunk`` rows, so a 128k vocabulary
    does not need the whole ``[B, L, V]`` at once (it would not fit in memory at that vocabulary).
    """
    pred, target, mask = _shifted(pred, batch, shift)
    denom = mask.sum() + EPS
    # Both terms run only on the supervised rows (prompt and padding rows are skipped, not computed and zeroed).
    keep = mask.reshape(-1) > 0
    rows_pred = pred.reshape(-1, pred.shape[-1])[keep]
    rows_target = target.reshape(-1, target.shape[-1])[keep]
    rows_mask = mask.reshape(-1)[keep]
    reg = (F.smooth_l1_loss(rows_pred.float(), rows_target.float(), reduction="none").mean(-1)
           * rows_mask).sum() / denom
    cls = pred.new_zeros((), dtype=torch.float32)
    head = lm_head.to(pred.dtype)
    for start in range(0, rows_pred.shape[0], chunk):
        sl = slice(start, start + chunk)
        with torch.no_grad():
            teacher = torch.softmax((rows_target[sl].to(head.dtype) @ head.t()).float(), dim=-1)
        logp = torch.log_softmax((rows_pred[sl] @ head.t()).float(), dim=-1)
        cls = cls - ((teacher * logp).sum(-1) * rows_mask[sl]).sum()
    return reg, cls / denom


def eagle_loss(pred: torch.Tensor, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
    """EAGLE's ``v_w * L_reg + p_w * L_cls`` on a ``[B, L, H]`` prediction of f_{t+1} (v_w 1.0, p_w 0.1)."""
    reg, cls = feature_losses(pred, batch, ctx.lm_head, shift=0)
    loss = ctx.weights.get("v_w", 1.0) * reg + ctx.weights.get("p_w", 0.1) * cls
    return {"loss": loss, "reg": reg.detach(), "cls": cls.detach()}


@torch.no_grad()
def topk_accuracy(pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, k: int = 1,
                  shift: int = 0) -> tuple[float, float]:
    """``(hits, count)``: whether the target's argmax token at t+1+shift is in the draft's top-k, masked."""
    pred, target, mask = _shifted(pred, batch, shift)
    keep = mask.reshape(-1) > 0  # only supervised rows go through the LM head
    pred = pred.reshape(-1, pred.shape[-1])[keep]
    target = target.reshape(-1, target.shape[-1])[keep].to(pred.dtype)
    mask = mask.reshape(-1)[keep]
    head = lm_head.to(pred.dtype)
    want = (target @ head.t()).argmax(-1)
    top = (pred @ head.t()).topk(k, dim=-1).indices
    hit = (top == want[..., None]).any(-1).float() * mask
    return float(hit.sum()), float(mask.sum())
