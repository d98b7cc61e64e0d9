"""Verification of a draft tree against the target's tree logits (greedy and lossless sampling); issue 6."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effrepro.specdec.tree import DraftTree


@dataclass
class SamplingConfig:
    """Target sampling: ``temperature`` 0 = greedy; ``top_p`` / ``top_k`` (0 = off) applied on every branch."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class Verdict:
    """Result of one verification: accepted node ids (root first), the bonus token, accepted draft tokens."""

    nodes: torch.Tensor  # [1 + accepted] node ids along the accepted path, root first
    bonus_token: int
    accepted: int  # draft tokens accepted (len(nodes) - 1)


def greedy_verify(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    raise NotImplementedError


def sample_verify(tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig,
                  generator: torch.Generator | None = None) -> Verdict:
    raise NotImplementedError
