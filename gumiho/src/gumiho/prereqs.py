"""The cached prerequisites of ``gumiho reproduce``: the target, the draft-data folder and the trained heads.

The draft data and every head are built once under ``EFFREPRO_CACHE`` (``effrepro.specdec.draft_data`` and
``effrepro.specdec.headcache``) and reused by any later run with the same settings; the EAGLE-2 head is the
cache entry jakiro's reproduction uses too (same data, same budget).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

from effrepro.reproduce import Context
from effrepro.specdec.eagle import head_from_checkpoint
from effrepro.specdec.headcache import CachedHead, cached_head, eagle2_baseline
from effrepro.train import load_checkpoint

from gumiho.config import GumihoRunConfig
from gumiho.train import VARIANTS, draft_data_dir, load_draft, load_target_on, train_draft


def cached_heads(config: GumihoRunConfig, plan: Any, model: Any, data_dir: Path,
                 progress: bool = False) -> dict[str, CachedHead]:
    """The EAGLE-2 baseline (shared cached head, EAGLE loss) and every Gumiho variant of the plan, all cached
    prerequisites trained on the same data with the same budget."""
    data_dirs = [data_dir]
    heads = {"eagle2": eagle2_baseline(model, data_dirs, config.train, progress=progress)}
    for name in plan.variants:
        variant = replace(config, structure=VARIANTS[name])
        train_config = variant.train_config()
        spec = {"kind": "gumiho", "structure": dataclasses.asdict(VARIANTS[name])}

        def train(out: Path, variant: GumihoRunConfig = variant) -> dict[str, Any]:
            return train_draft(variant, model, None, out, data_dir=data_dir, progress=progress, resume=True)

        heads[name] = cached_head(f"gumiho-{name}", spec, train_config, data_dirs, train)
    return heads


def training_summary(heads: dict[str, CachedHead], model: Any, ctx: Context) -> dict[str, dict[str, Any]]:
    """Steps, seconds, last held-out metrics, budget and trainable parameters of every head (logged)."""
    trained: dict[str, dict[str, Any]] = {}
    for name, head in heads.items():
        module = load_head(name, head.path, model)
        final = head.entry["history"][-1] if head.entry["history"] else {}
        trained[name] = {"seconds": head.seconds, "steps": head.steps, "final": final, "budget": head.budget(),
                         "params": sum(p.numel() for p in module.parameters() if p.requires_grad)}
        ctx.log.log(stage="train", method=name, reused=head.reused, seconds=head.seconds, steps=head.steps,
                    params=trained[name]["params"])
    return trained


def load_head(name: str, path: Path, model: Any) -> Any:
    """A cached head for this target: the EAGLE-2 baseline (``name`` "eagle2") or a Gumiho draft."""
    embed = model.get_input_embeddings().weight.detach()
    if name == "eagle2":
        return head_from_checkpoint(load_checkpoint(path), embed).to(embed.device).eval()
    return load_draft(path, model)


def target_and_data(config: GumihoRunConfig, plan: Any) -> tuple[Any, Any, Path]:
    """The target, its tokenizer and the draft-data folder (built once, then cached under EFFREPRO_CACHE)."""
    model, tokenizer = load_target_on(config.target, plan.device, plan.dtype)
    return model, tokenizer, Path(draft_data_dir(config, model, tokenizer, progress=False))
