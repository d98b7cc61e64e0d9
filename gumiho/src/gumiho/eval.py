"""Evaluate trained drafts with the shared harness (``effrepro.specdec.evaluate``): tau, per-depth acceptance,
tokens/s and speedup against plain decoding in the same process, cost-model speedup, greedy mismatches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from effrepro.specdec import EvalConfig, TargetAdapter, TreeConfig, evaluate, proposer_factory
from effrepro.specdec.eagle import eagle_factory  # noqa: F401 (the EAGLE-2 baseline's factory, for reproduce)

from gumiho.config import GumihoTreeConfig
from gumiho.gumiho import GumihoDraft, make_proposer


def gumiho_factory(draft: GumihoDraft, tree: GumihoTreeConfig) -> Callable[[TargetAdapter], Any]:
    """``(target) -> GumihoProposer`` for the harness (the engine's ``proposer_factory``)."""
    tree.check()
    return proposer_factory(make_proposer, draft, tree.tree(), **tree.options())


def chain_tree(tree: GumihoTreeConfig) -> GumihoTreeConfig:
    """The same depth as a single top-1 chain (per-position acceptance is then exactly conditional)."""
    return replace(tree, top_k=1, mlptopk=1, pruning=1, total_tokens=tree.depth + 1, fta="off",
                   official_compat=False)


def eagle_tree_for(tree: GumihoTreeConfig) -> TreeConfig:
    """EAGLE-2 with the same budget: top_k, total tokens and draft levels (EAGLE ``depth`` counts tree passes,
    so 7 levels = depth 6)."""
    return TreeConfig(top_k=tree.top_k, depth=tree.depth - 1, total_tokens=tree.total_tokens)


def run_eval(target: TargetAdapter, tokenizer: Any, methods: dict[str, Any], config: EvalConfig,
             out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Plain decoding + every method, interleaved per question (see ``effrepro.specdec.harness``)."""
    return evaluate(target, tokenizer, methods, config, out_dir=out_dir, progress=progress)


def tuned_tree(target: TargetAdapter, tokenizer: Any, draft: GumihoDraft, tree: GumihoTreeConfig,
               chat_template: str = "auto", log: Callable[[str], None] | None = None) -> GumihoTreeConfig:
    """``tree.total_tokens: -1``: ``top_k``, ``depth`` (from the serial steps to the draft's levels) and
    ``total_tokens`` chosen by the engine's tree tuner for this draft on this machine (measured costs, replayed
    acceptance; cached per head and machine); ``mlptopk``, ``pruning`` and the flags stay the config's. A
    shallower Gumiho round is the first levels of a deeper one, so one proposer per top-k replays every depth."""
    import sys

    from effrepro.specdec.tuning import TreeGrid
    from effrepro.specdec.tuning import tuned_tree as tune

    steps, levels = draft.config.serial_steps, draft.config.depth
    grid = TreeGrid(depth=tuple(range(max(steps, 1), levels + 1)))

    def make(candidate: TreeConfig) -> Any:
        return proposer_factory(make_proposer, draft, candidate, **tree.options())(target)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    choice = tune(target, tokenizer, draft, make, grid=grid, chat_template=chat_template, log=log or say)
    return replace(tree, top_k=choice.tree.top_k, depth=choice.tree.depth, total_tokens=choice.tree.total_tokens)
