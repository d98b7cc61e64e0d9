"""Gumiho's training loss: SmoothL1 on features + 0.1 soft cross-entropy, per-head decaying weights.

Recipe of ``train/main_deepspeed.py`` (the one ``scripts/train.sh`` runs), the default::

    L = 1.0 L_reg^T + 0.1 L_cls^T + (1/9) sum_i 0.8^(i+1) (1.0 L_reg^(i) + w_p(epoch) L_cls^(i))

with ``w_p = 0`` during the first two epochs (``--mlp_p_w 100``) and ``0.1`` after. The older accelerate script
(``train/main.py``) weighs every head 1 with CE on from the start: ``LossWeights.accelerate()``.

Alignment (teacher forcing, ``effrepro.specdec.DraftBatch``): position t holds ``(f_t, x_{t+1})`` and the target
``f_{t+1}``. The Transformer output ``h_t`` regresses ``f_{t+1}`` under ``M_t``; MLP head i regresses
``f_{t+S+1+i}`` under ``M_{t+S+i}`` (``pred[:, :-(S+i)]`` against ``target[:, S+i:]``, the engine's
``feature_losses(..., shift=S+i)``), which leaves out every position ``torch.roll`` wrapped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.specdec import DraftBatch

EPS = 1e-5


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

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> LossWeights:
        """From ``HeadTrainConfig.loss_weights``; missing keys keep the defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown Gumiho loss weight(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: (int(v) if k == "mlp_ce_warmup_epochs" else float(v)) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

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


class _SharedTeacher:
    """The masked rows of a batch and their teacher ``log softmax(W f_{t+1})``, computed once for every head.

    Equal to ``effrepro.specdec.feature_losses`` term by term (``test_gumiho_loss`` checks it), but with up to
    7 heads per position it matters that (a) the ``[rows, V]`` teacher is computed once instead of once per
    head and (b) only rows with mask 1 go through the LM head (the others add exactly zero to both sums): at
    V = 49152 on a CPU the LM head is most of the training time.
    """

    def __init__(self, batch: DraftBatch, lm_head: torch.Tensor) -> None:
        self.mask = batch.loss_mask.float()
        self.target = batch.target_features
        self.batch_idx, self.pos_idx = torch.nonzero(self.mask > 0, as_tuple=True)
        self.lm_head = lm_head
        with torch.no_grad():
            rows = self.target[self.batch_idx, self.pos_idx].float()
            self.logp = torch.log_softmax(rows @ lm_head.float().t(), dim=-1)
            self.token = self.logp.argmax(dim=-1)  # the target's greedy next token at each row

    def losses(self, pred: torch.Tensor, shift: int, with_cls: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """SmoothL1 and soft CE of a prediction at t against ``f_{t+1+shift}`` under ``M_{t+shift}``."""
        keep = self.pos_idx >= shift
        denominator = self.mask[:, shift:].sum() + EPS
        pred_rows = pred[self.batch_idx[keep], self.pos_idx[keep] - shift].float()
        target_rows = self.target[self.batch_idx[keep], self.pos_idx[keep]].float()
        reg = F.smooth_l1_loss(pred_rows, target_rows, reduction="none").mean(-1).sum() / denominator
        if not with_cls:  # weight 0 (MLP CE warm-up): skipping the [rows, V] logits changes nothing but the time
            return reg, torch.zeros((), device=reg.device)
        logq = torch.log_softmax(pred_rows @ self.lm_head.float().t(), dim=-1)
        cls = -(self.logp[keep].exp() * logq).sum() / denominator
        return reg, cls

    @torch.no_grad()
    def top1(self, pred: torch.Tensor, shift: int) -> float:
        """Fraction of masked rows where the prediction's argmax token equals the target's (teacher-forced)."""
        keep = self.pos_idx >= shift
        if not bool(keep.any()):
            return float("nan")
        rows = pred[self.batch_idx[keep], self.pos_idx[keep] - shift].float()
        return float(((rows @ self.lm_head.float().t()).argmax(-1) == self.token[keep]).float().mean())


def gumiho_loss(
    draft, batch: DraftBatch, lm_head: torch.Tensor, epoch: int, weights: LossWeights | None = None,
    accuracy: bool = False,
) -> dict[str, torch.Tensor]:
    """The full loss of one ``DraftBatch``: ``loss`` plus every component (detached).

    During the MLP-CE warm-up the MLP heads' CE terms are not computed (reported as 0). With ``accuracy`` the
    teacher-forced top-1 agreement of every head with the target's greedy token is added (``top1_T``, ``top1_i``).
    """
    weights = weights or LossWeights()
    hidden, mlp_preds = draft.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    teacher = _SharedTeacher(batch, lm_head)
    components: dict[str, torch.Tensor] = {}
    if hidden is not None:
        components["reg_T"], components["cls_T"] = teacher.losses(hidden, 0)
    steps = draft.config.serial_steps
    mlp_cls = weights.mlp_ce_weight(epoch) != 0
    for i in range(mlp_preds.shape[2]):
        components[f"reg_{i}"], components[f"cls_{i}"] = teacher.losses(mlp_preds[:, :, i], steps + i, mlp_cls)
    loss = combine(components, weights, epoch, mlp_preds.shape[2])
    out = {"loss": loss, **{k: v.detach() for k, v in components.items()}}
    if accuracy:
        if hidden is not None:
            out["top1_T"] = torch.tensor(teacher.top1(hidden, 0))
        for i in range(mlp_preds.shape[2]):
            out[f"top1_{i}"] = torch.tensor(teacher.top1(mlp_preds[:, :, i], steps + i))
    return out
