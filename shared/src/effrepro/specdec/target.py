"""Target adapter: any plain HF causal LM (Llama family first) driven through transformers' public interfaces.

Written next (issue 6): ``TargetAdapter(model, max_length)`` with ``prefill``, ``verify``, ``commit``,
``decode``, ``reset``; features after the final norm, 4D tree masks, tree position ids, a pre-allocated KV cache
with compaction of the accepted path.
"""

from __future__ import annotations

from typing import Any

import torch


class TargetAdapter:
    """Wraps a causal LM for speculative decoding (signatures stable; implementation lands in issue 6)."""

    def __init__(self, model: Any, max_length: int = 2048) -> None:
        raise NotImplementedError("effrepro.specdec.TargetAdapter is being written (issue 6)")

    def reset(self) -> None: ...

    @property
    def length(self) -> int: ...

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids [n]`` -> ``(logits [n, V], features [n, H])``; the cache then holds n positions."""
        raise NotImplementedError

    def decode(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``token_ids [m]`` causally -> ``(logits [m, V], features [m, H])``."""
        raise NotImplementedError

    def verify(self, tree: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One tree-masked pass over ``tree.tokens`` -> ``(logits [N, V], features [N, H])`` (tree KV appended)."""
        raise NotImplementedError

    def commit(self, nodes: torch.Tensor) -> None:
        """Keep the KV of the accepted tree ``nodes`` (root first) after the prefix, drop the other tree rows."""
        raise NotImplementedError
