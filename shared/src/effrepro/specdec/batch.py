"""The training batch and the loss context: what a head's loss reads (shared by the protocol, the losses, the
trainer and the collator, so none of them imports another for these types)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftBatch:
    """A collated training batch (``DraftCollator``), ``B`` sequences padded to ``L``.

    * ``input_ids [B, L]``: x_0..x_{L-1}.
    * ``features [B, L, H]``: f_t plus the uniform training noise (the draft input).
    * ``next_ids [B, L]``: x_{t+1} (0 after the end), the token paired with f_t.
    * ``target_features [B, L, H]``: f_{t+1} without noise (zero after the end): what the output at t regresses.
    * ``loss_mask [B, L]``: M_t, 1 on assistant tokens, 0 on the last real position and on padding.
    * ``attention_mask [B, L]``: 1 on real tokens.
    """

    input_ids: torch.Tensor
    features: torch.Tensor
    next_ids: torch.Tensor
    target_features: torch.Tensor
    loss_mask: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DraftBatch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        return DraftBatch(*(move(getattr(self, name)) for name in self.__dataclass_fields__))


@dataclass
class LossContext:
    """What a ``compute_loss`` hook may read besides the batch: the frozen target LM head and training progress.

    ``weights`` holds the loss weights of the training config (``v_w``, ``p_w`` and any per-method keys given in
    ``HeadTrainConfig.loss_weights``).
    """

    lm_head: torch.Tensor  # [V, H], frozen
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    weights: dict[str, float] = field(default_factory=lambda: {"v_w": 1.0, "p_w": 0.1})
