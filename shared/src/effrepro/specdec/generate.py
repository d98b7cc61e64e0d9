"""The generate loops: speculative (draft -> verify -> commit) and plain autoregressive; issue 6."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from effrepro.specdec.protocol import Proposer
from effrepro.specdec.target import TargetAdapter
from effrepro.specdec.verify import SamplingConfig

Streamer = Callable[[list[int]], None]  # called with the newly emitted token ids of each cycle


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclass
class GenerationResult:
    """Emitted tokens and the counters the harness turns into tau / speed metrics."""

    tokens: list[int]
    cycles: int = 0  # target forwards after the prefill (verification passes, or AR steps)
    accept_lengths: list[int] = field(default_factory=list)  # accepted draft tokens per cycle
    draft_time: float = 0.0
    verify_time: float = 0.0
    wall_time: float = 0.0
    draft_forwards: int = 0
    stopped_by: str = ""  # "eos" | "max_new_tokens" | "max_length"

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)


def speculative_generate(target: TargetAdapter, proposer: Proposer, input_ids: torch.Tensor,
                         config: GenerationConfig, streamer: Streamer | None = None) -> GenerationResult:
    raise NotImplementedError


def autoregressive_generate(target: TargetAdapter, input_ids: torch.Tensor, config: GenerationConfig,
                            streamer: Streamer | None = None) -> GenerationResult:
    raise NotImplementedError
