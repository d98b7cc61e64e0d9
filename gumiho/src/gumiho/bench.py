"""Draft-phase latency: one steady-state draft round of Gumiho (2 serial passes + 1 batched MLP call) and its
variants against EAGLE-2 (one serial pass per level), paired and interleaved (``effrepro.bench``).

Weights are random (latency does not depend on them); widths come from a target config (SmolLM2-135M by default,
or e.g. ``--hidden 4096`` for a 7B-sized draft). A round = the context pass over ``new_tokens`` accepted positions
after ``context`` cached ones, the serial tree steps, the MLP call and the engine's re-ranking into a tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from effrepro.bench import cuda_sync, paired_benchmark
from effrepro.specdec.eagle import EagleProposer, build_eagle_head
from transformers import LlamaConfig

from gumiho.config import GumihoTreeConfig
from gumiho.eval import eagle_tree_for
from gumiho.gumiho import GumihoDraft, make_proposer
from gumiho.train import VARIANTS


def draft_round_benchmark(target_config: Any, tree: GumihoTreeConfig, context: int = 128, new_tokens: int = 3,
                          variants: tuple[str, ...] = tuple(VARIANTS), repeats: int = 21, warmup: int = 3,
                          device: str = "cpu", seed: int = 0) -> dict[str, dict[str, float]]:
    """Median seconds per draft round and sequential draft forwards per round, for EAGLE-2 and each variant."""
    from gumiho.config import GumihoRunConfig

    torch.manual_seed(seed)
    hidden, vocab = target_config.hidden_size, target_config.vocab_size
    lm_head = torch.randn(vocab, hidden, device=device) * hidden ** -0.5
    features = torch.randn(context + new_tokens, hidden, device=device)
    ids = torch.randint(0, vocab, (context + new_tokens,), device=device)
    proposers: dict[str, Any] = {}
    eagle = build_eagle_head(target_config).to(device).eval()
    proposers["eagle2"] = EagleProposer(eagle, lm_head, eagle_tree_for(tree))
    for name in variants:
        run = GumihoRunConfig(structure=VARIANTS[name], tree=tree)
        draft = GumihoDraft(run.draft_config(target_config)).to(device).eval()
        for p in draft.mlp.parameters():  # zero-init heads would make every candidate tie
            torch.nn.init.normal_(p, std=hidden ** -0.5)
        proposers[name] = make_proposer(draft, lm_head, tree.tree(), **tree.options())
    fns: dict[str, Callable[[], object]] = {}
    forwards: dict[str, int] = {}
    for name, proposer in proposers.items():
        proposer.reset()
        proposer.propose(features[:context], ids[:context])
        length = proposer.context_length

        def round_fn(p=proposer, n=length) -> None:
            p.propose(features[context:], ids[context:])
            p.cache.crop(n)

        round_fn()
        forwards[name] = int(proposer.last_forwards)
        fns[name] = round_fn
    with torch.no_grad():
        stats = paired_benchmark(fns, warmup=warmup, repeats=repeats,
                                 sync=cuda_sync if device.startswith("cuda") else None)
    base = stats["eagle2"].median
    return {name: {"seconds": s.median, "vs_eagle2": s.median / base, "serial_forwards": forwards[name]}
            for name, s in stats.items()}


def sized_config(hidden: int, vocab: int | None = None) -> LlamaConfig:
    """A LLaMA-shaped config for latency only: Vicuna-7B widths at ``hidden`` 4096, scaled otherwise."""
    heads = max(1, hidden // 128)
    return LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 64 * 64,
                       num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab or 32000,
                       head_dim=hidden // heads)
