"""Drafting cost per cycle: Jakiro's hybrid schedule vs EAGLE-2's, paired and interleaved (``effrepro.bench``).

The paper's speed argument: at the same depth Jakiro runs one fewer sequential draft forward per
cycle (the last level comes from the contrastive branch), and its MoE experts are narrower than EAGLE's dense
FFN. This benchmark isolates the drafting part of a cycle on the target's real widths: every proposer is primed
with the same context, then each timed call drafts one tree from 3 new positions (a typical accepted length) and
crops the draft KV back, so repeats are identical. Reported: median ms per drafted tree, ratios to EAGLE-2, the
sequential draft forwards per tree and each head's trainable parameters. Weights do not change the cost (random
heads unless trained ones are given).
"""

from __future__ import annotations

from typing import Any

import torch
from effrepro.bench import cuda_sync, paired_benchmark
from effrepro.specdec import SamplingConfig, TreeConfig

from jakiro.eval import proposer_builder
from jakiro.train import build_head

SCHEDULES = {
    "eagle2": ("eagle2", {}),
    "jakiro": ("jakiro", {}),
    "jakiro_forward_last": ("jakiro", {"last_level": "forward"}),  # same MoE head, EAGLE-2 schedule
    "jakiro_star": ("jakiro_star", {"sampling": SamplingConfig(temperature=1.0)}),
}


def draft_cost_benchmark(target_model: Any, tree: TreeConfig, context: int = 256, repeats: int = 21,
                         warmup: int = 3, heads: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Median seconds per drafted tree for each schedule (module docstring); ``heads`` overrides random heads."""
    torch.manual_seed(seed)
    device = target_model.get_input_embeddings().weight.device
    dtype = target_model.get_input_embeddings().weight.dtype
    hidden = target_model.config.hidden_size
    lm_head = target_model.get_output_embeddings().weight.detach()
    features = torch.randn(context + 3, hidden, device=device, dtype=dtype)
    features = features / features.norm(dim=-1, keepdim=True) * hidden ** 0.5  # post-norm scale
    next_ids = torch.randint(0, lm_head.shape[0], (context + 3,), device=device)
    proposers, forwards, params = {}, {}, {}
    for name, (method, options) in SCHEDULES.items():
        head = (heads or {}).get(method) or build_head(method, target_model)
        head = head.to(device, dtype).eval()
        proposer = proposer_builder(head)(head, lm_head.to(dtype), tree, max_length=context + 64, **options)
        proposer.propose(features[:context], next_ids[:context])  # prime the context KV
        proposers[name] = proposer
        params[name] = sum(p.numel() for p in head.parameters() if p.requires_grad)

    def draft(name: str):
        proposer = proposers[name]

        def run() -> None:
            proposer.propose(features[context:], next_ids[context:])
            proposer.cache.crop(context)

        return run

    with torch.no_grad():
        for name in proposers:
            draft(name)()
            forwards[name] = proposers[name].last_forwards
        stats = paired_benchmark({name: draft(name) for name in proposers}, warmup=warmup, repeats=repeats,
                                 sync=cuda_sync if device.type == "cuda" else None)
    base = stats["eagle2"].median
    return {
        "ms_per_tree": {name: 1e3 * s.median for name, s in stats.items()},
        "ratio_to_eagle2": {name: s.median / base for name, s in stats.items()},
        "draft_forwards": forwards,
        "trainable_params": params,
        "tree": {"top_k": tree.top_k, "depth": tree.depth, "total_tokens": tree.total_tokens},
        "context": context, "repeats": repeats, "device": str(device), "dtype": str(dtype),
    }
