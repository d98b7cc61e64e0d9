"""Evaluate trained drafts with the shared harness (``effrepro.specdec.evaluate``): tau, per-depth acceptance,
tokens/s and speedup against plain decoding in the same process, cost-model speedup, greedy mismatches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from effrepro.specdec import EvalConfig, TargetAdapter, TreeConfig, evaluate
from effrepro.specdec.protocol import DraftHead

from gumiho.config import GumihoTreeConfig


def gumiho_factory(draft: DraftHead, tree: GumihoTreeConfig):
    """``(target) -> GumihoProposer`` for the harness."""
    tree.check()

    def make(target: TargetAdapter):
        return draft.make_proposer(target.lm_head_weight.detach().float(), tree.tree(), **tree.options())

    return make


def eagle_factory(head: DraftHead, tree: TreeConfig):
    """``(target) -> EagleProposer`` (the engine's EAGLE-2 baseline)."""

    def make(target: TargetAdapter):
        return head.make_proposer(target.lm_head_weight.detach().float(), tree)

    return make


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
