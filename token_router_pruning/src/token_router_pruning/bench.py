"""Prefill latency of several plans on the same model, interleaved in one process (``effrepro.bench``).

Prefill = one forward over a ``seq_len``-token prompt producing the next-token logits (``logits_to_keep=1``,
as generation's prefill does), batch ``batch_size``, median of ``repeats`` after ``warmup`` calls; the
plans run round-robin with rotating order so machine drift hits them alike.
"""

from __future__ import annotations

from typing import Any

import torch
from effrepro.bench import cuda_sync, paired_benchmark
from torch import nn

from token_router_pruning.ftp import SkipPlan, TokenSkipper


@torch.no_grad()
def prefill_latency(
    model: nn.Module, skipper: TokenSkipper, plans: dict[str, SkipPlan | None], tokenizer: Any, bench: Any
) -> dict[str, dict[str, float]]:
    """``{name: {"median_s", "mean_s", "min_s", "max_s", "repeats"}}`` for each plan (None = dense)."""
    from token_router_pruning.eval import text_windows

    device = next(model.parameters()).device
    ids = text_windows(tokenizer, bench.seq_len, "eval", bench.batch_size).to(device)

    def runner(plan: SkipPlan | None):
        def call() -> None:
            with skipper.use(plan):
                model(input_ids=ids, logits_to_keep=1)
        return call

    stats = paired_benchmark({name: runner(plan) for name, plan in plans.items()}, warmup=bench.warmup,
                             repeats=bench.repeats, sync=cuda_sync)
    return {name: s.as_dict() for name, s in stats.items()}
