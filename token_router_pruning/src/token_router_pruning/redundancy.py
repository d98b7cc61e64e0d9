"""Token redundancy analysis (paper §3.1, Fig. 2) and ShortGPT's block influence, from the same hooks.

For every block ``i`` and token ``t``: ``cos(X^i_t, X^{i+1}_t)`` between the block's input and output
hidden state (fp32). A token is redundant in a block when the cosine exceeds 0.8. Token 0 (the
attention sink, with massive activations) is excluded from the shares by default; ShortGPT's block
influence ``BI_i = 1 - E_t cos`` averages over every token, as ShortGPT does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from token_router_pruning.ftp import decoder_layers


@dataclass
class RedundancyReport:
    cosines: torch.Tensor  # (N, sequences, L)
    threshold: float
    edge: int
    skip_first: bool

    def _cos(self) -> torch.Tensor:
        return self.cosines[:, :, 1:] if self.skip_first else self.cosines

    @property
    def share_per_block(self) -> list[float]:
        return (self._cos() > self.threshold).float().flatten(1).mean(1).tolist()

    @property
    def overall_share(self) -> float:
        return float((self._cos() > self.threshold).float().mean())

    def _group_share(self, blocks: list[int]) -> float:
        if not blocks:  # a model too shallow to have both edge and middle blocks
            return float("nan")
        return float((self._cos()[blocks] > self.threshold).float().mean())

    @property
    def edge_blocks(self) -> list[int]:
        n = self.cosines.shape[0]
        return sorted(set(range(min(self.edge, n))) | set(range(max(n - self.edge, 0), n)))

    @property
    def edge_share(self) -> float:
        return self._group_share(self.edge_blocks)

    @property
    def middle_share(self) -> float:
        middle = [i for i in range(self.cosines.shape[0]) if i not in self.edge_blocks]
        return self._group_share(middle)

    @property
    def block_influence(self) -> list[float]:
        return (1.0 - self.cosines.flatten(1).mean(1)).tolist()

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "edge": self.edge, "skip_first_token": self.skip_first,
                "share_per_block": self.share_per_block, "overall_share": self.overall_share,
                "edge_share": self.edge_share, "middle_share": self.middle_share,
                "block_influence": self.block_influence}


@torch.no_grad()
def block_cosines(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """(N blocks, sequences, L) cosine between each block's input and output hidden states."""
    layers = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, tuple) else output
            captured[index] = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)
        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    chunks = []
    try:
        device = next(model.parameters()).device
        for start in range(0, windows.shape[0], batch_size):
            captured.clear()
            model.model(input_ids=windows[start:start + batch_size].to(device))
            chunks.append(torch.stack([captured[i] for i in range(len(layers))]))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(chunks, dim=1).cpu()


def redundancy(model: nn.Module, windows: torch.Tensor, threshold: float = 0.8, edge: int = 3,
               skip_first: bool = True, batch_size: int = 8) -> RedundancyReport:
    return RedundancyReport(block_cosines(model, windows, batch_size), threshold, edge, skip_first)
