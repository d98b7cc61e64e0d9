"""The draft-head trainer shared by EAGLE-2, Jakiro and Gumiho; issue 6."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from effrepro.specdec.protocol import DraftBatch, DraftHead, LossContext

LossHook = Callable[[DraftHead, DraftBatch, LossContext], dict[str, torch.Tensor]]


@dataclass
class HeadTrainConfig:
    """Official recipe defaults (EAGLE/Jakiro accelerate scripts); scale ``epochs``/``lr`` for miniatures."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 9e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 2000
    schedule: str = "cosine"  # "cosine" | "linear" | "constant"
    clip_value: float = 0.5  # clip_grad_value_, not by norm (jakiro pitfall 17)
    noise: str = "uniform"
    noise_std: float = 0.2
    max_len: int = 2048
    max_steps: int = 0  # > 0 stops early (miniatures)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"v_w": 1.0, "p_w": 0.1})
    seed: int = 0
    num_workers: int = 0
    bf16: bool = False


def train_head(head: DraftHead, lm_head: torch.Tensor, data_dir: Path, config: HeadTrainConfig,
               out_dir: Path, loss_fn: LossHook | None = None) -> dict:
    """Train ``head`` on a feature cache; ``loss_fn`` defaults to ``head.compute_loss``. Resumable."""
    raise NotImplementedError
