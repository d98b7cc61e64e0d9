"""Greedy generation with or without a KV cache (explicit position ids, so per-block caches may differ)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def greedy_generate(
    model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True
) -> tuple[torch.Tensor, Any]:
    """``(B, L + max_new_tokens)`` token ids and the cache (None without one).

    Position ids are always passed explicitly: under token skipping each block's cache holds only the
    tokens it computed, so a cache length is not the sequence length.
    """
    from transformers import DynamicCache

    tokens = input_ids
    cache = DynamicCache(config=model.config) if use_cache else None
    step_ids = tokens
    start = 0
    for _ in range(max_new_tokens):
        positions = torch.arange(start, tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
        logits = model(input_ids=step_ids, position_ids=positions, past_key_values=cache, use_cache=use_cache).logits
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        if use_cache:
            start, step_ids = tokens.shape[1] - 1, next_token
        else:
            step_ids = tokens
    return tokens, cache
