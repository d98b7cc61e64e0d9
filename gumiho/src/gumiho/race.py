"""Gumiho in ``python -m effrepro.specdec race`` (registered under the entry-point group
``effrepro.specdec.methods``): the miniature's Gumiho draft and tree, as ``gumiho reproduce`` uses them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from effrepro.specdec.race import RaceMethod


def race_method(model: Any, tokenizer: Any) -> RaceMethod:
    """The cached Gumiho draft of the smoke plan (trained on first use, same entry as the reproduction) with the
    smoke config's tree, FTA off (lossless)."""
    from gumiho.eval import gumiho_factory
    from gumiho.prereqs import cached_heads, load_head
    from gumiho.reproduce import SMOKE, load_run_config
    from gumiho.train import draft_data_dir

    config = load_run_config(SMOKE)
    data_dir = Path(draft_data_dir(config, model, tokenizer, progress=False))
    cached = cached_heads(config, dataclasses.replace(SMOKE, variants=("gumiho",)), model, data_dir,
                          progress=True)["gumiho"]
    draft = load_head("gumiho", cached.path, model)
    tree = dataclasses.replace(config.tree, fta="off", official_compat=False)
    return RaceMethod(gumiho_factory(draft, tree), dataclasses.asdict(tree),
                      {"path": str(cached.path), "steps": cached.steps})
