"""Jakiro in ``python -m effrepro.specdec race`` (registered under the entry-point group
``effrepro.specdec.methods``): the miniature's Jakiro head and tree, as ``jakiro reproduce`` uses them."""

from __future__ import annotations

import dataclasses
from typing import Any

from effrepro.specdec import SamplingConfig, TreeConfig
from effrepro.specdec.race import RaceMethod


def race_method(model: Any, tokenizer: Any) -> RaceMethod:
    """The cached Jakiro head of the smoke plan (trained on first use, same entry as the reproduction) with the
    smoke plan's tree."""
    from effrepro.specdec.draft_data import draft_data_folders
    from effrepro.specdec.headcache import SMOKE_DRAFT_DATA

    from jakiro.eval import variant_factory
    from jakiro.prereqs import cached_heads
    from jakiro.reproduce import SMOKE
    from jakiro.train import load_head

    plan = dataclasses.replace(SMOKE, methods=("jakiro",))
    data_dirs = draft_data_folders(model, tokenizer, SMOKE_DRAFT_DATA, progress=False)  # the smoke plan's data
    cached = cached_heads(plan, model, data_dirs, progress=True)["jakiro"]
    device = model.get_input_embeddings().weight.device
    head = load_head(cached.path, model, device, model.dtype)
    tree = TreeConfig(top_k=plan.top_k, depth=plan.depth, total_tokens=plan.total_tokens)
    return RaceMethod(variant_factory("jakiro", head, tree, SamplingConfig()), dataclasses.asdict(tree),
                      {"path": str(cached.path), "steps": cached.steps})
