"""Draft-head training data: target features over chat conversations, cached on disk; issue 6."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effrepro.specdec.protocol import DraftBatch


@dataclass
class DraftDataConfig:
    """What the feature cache is keyed by (hashed): target, sources, sizes, template, self-generation settings."""

    target: str = "smollm2-135m"
    sharegpt: int = 500  # ShareGPT conversations to encode (0 = none)
    self_generated: int = 0  # prompts answered by the target itself (self-distillation)
    max_len: int = 2048
    self_max_new_tokens: int = 256
    self_temperature: float = 0.0
    seed: int = 42


def chat_example(tokenizer: Any, conversation: list[dict], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [L], loss_mask [L])`` in the tokenizer's chat template; mask 1 on assistant tokens."""
    raise NotImplementedError


def generate_draft_data(model: Any, tokenizer: Any, config: DraftDataConfig,
                        cache_root: Path | None = None) -> Path:
    """Encode conversations with the target and store ``input_ids``, ``hidden_state``, ``loss_mask``; the dir."""
    raise NotImplementedError


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, root: Path, split: str = "train", holdout: float = 0.05) -> None:
        raise NotImplementedError


class DraftCollator:
    """Pads, shifts and noises samples into a ``DraftBatch`` (uniform noise ``(U-0.5)*std*512/L``)."""

    def __init__(self, noise_std: float = 0.2, noise: str = "uniform", train: bool = True) -> None:
        self.noise_std, self.noise, self.train = noise_std, noise, train

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> DraftBatch:
        raise NotImplementedError
