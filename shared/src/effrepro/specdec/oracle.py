"""A draft that knows the answer: proposes the target's known greedy continuation as the best child at every
level, plus one distractor. Every tree it proposes is fully accepted, so it pins down what the engine does at
perfect acceptance (equivalence tests, the tree tuner's replay)."""

from __future__ import annotations

import torch

from effrepro.specdec.protocol import LevelProposer
from effrepro.specdec.tree import DraftLevel


class OracleProposer(LevelProposer):
    """Proposes ``future`` (the target's greedy tokens after a prompt of ``prompt_len``) ``depth`` levels deep."""

    def __init__(self, future: list[int], prompt_len: int, depth: int, vocab: int) -> None:
        self.future, self.prompt_len, self.depth, self.vocab = future, prompt_len, depth, vocab
        self.total_tokens = 2 * depth + 1
        self.reset()

    def reset(self) -> None:
        self.seen = 0

    @property
    def context_length(self) -> int:
        return self.seen

    def propose_levels(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> list[DraftLevel]:
        self.seen += next_ids.numel()
        emitted = self.seen - self.prompt_len + 1  # tokens generated so far, the root included
        levels = []
        for d in range(self.depth):
            true = self.future[min(emitted + d, len(self.future) - 1)]
            parents = torch.tensor([-1, -1]) if d == 0 else torch.tensor([0, 0])
            levels.append(DraftLevel(torch.tensor(self.pair(true)), torch.tensor([-0.1, -5.0]) * (d + 1), parents))
        return levels

    def pair(self, true: int) -> tuple[int, int]:
        """The level's two drafts: the target's greedy token first, then a distractor."""
        return true, (true + 1) % self.vocab
