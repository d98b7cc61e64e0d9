"""Evaluation of the draft heads on the engine's harness (MT-bench, interleaved with plain decoding).

Evaluated variants (``VARIANTS``): a variant is a trained head (``head``) plus proposer options.

* ``eagle2``: the engine's EAGLE-2 proposer (catch-up + ``depth`` tree forwards);
* ``jakiro``: hybrid drafting, the last level from the contrastive branch, official row alignment;
* ``jakiro_parent``: the same head, parent-aligned last level (ablation: the official row alignment is a quirk);
* ``jakiro_nocepd``: the head trained without the contrastive loss, every level by a forward (EAGLE-2 schedule);
* ``jakiro_star``: Jakiro* on the static tree, corrected verification rule (exact);
* ``jakiro_star_official``: the same head with the literal released rule (not exact: wrong draft probabilities).

Jakiro* at temperature 0 is our extension (the official code supports T > 0 only).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import EvalConfig, SamplingConfig, TargetAdapter, TreeConfig, evaluate
from effrepro.specdec.eagle import EagleHead, EagleProposer
from effrepro.specdec.protocol import ProposerBuilder, proposer_factory

from jakiro.jakiro import JAKIRO_STAR_TREE, JakiroDraft, StaticTree, make_proposer


@dataclass(frozen=True)
class Variant:
    head: str  # which trained head (a key of the heads dict: a training method name)
    options: tuple[tuple[str, Any], ...] = ()


VARIANTS: dict[str, Variant] = {
    "eagle2": Variant("eagle2"),
    "jakiro": Variant("jakiro"),
    "jakiro_parent": Variant("jakiro", (("alignment", "parent"),)),
    "jakiro_nocepd": Variant("jakiro_nocepd", (("last_level", "forward"),)),
    "jakiro_star": Variant("jakiro_star", (("rule", "corrected"),)),
    "jakiro_star_official": Variant("jakiro_star", (("rule", "official"),)),
}


def check_variants(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {unknown}; use any of {', '.join(VARIANTS)}")
    return names


def proposer_builder(head: Any) -> ProposerBuilder:
    """How proposers are built for ``head``: EAGLE-2's class for the baseline, :func:`jakiro.jakiro.make_proposer`
    for Jakiro / Jakiro* drafts."""
    if isinstance(head, EagleHead):
        return EagleProposer
    if isinstance(head, JakiroDraft):
        return make_proposer
    raise UsageError(f"no proposer for a {type(head).__name__} head; expected an EAGLE-2 or a Jakiro head")


def variant_factory(name: str, head: Any, tree: TreeConfig,
                    sampling: SamplingConfig) -> Callable[[TargetAdapter], Any]:
    """A harness factory ``target -> proposer`` for one variant (the engine's ``proposer_factory``)."""
    if isinstance(head, EagleHead):
        return proposer_factory(EagleProposer, head, tree)
    if not isinstance(head, JakiroDraft):
        raise UsageError(f"variant {name} needs a Jakiro head, got {type(head).__name__}")
    options = dict(VARIANTS[name].options)
    if head.config.variant == "star":
        options["sampling"] = sampling
    return proposer_factory(make_proposer, head, tree, **options)


def evaluate_variants(target: TargetAdapter, tokenizer: Any, heads: dict[str, Any], variants: list[str],
                      tree: TreeConfig, config: EvalConfig, out_dir: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Plain decoding and every variant over the questions, interleaved (engine ``evaluate``)."""
    check_variants(variants)
    missing = sorted({VARIANTS[v].head for v in variants} - set(heads))
    if missing:
        raise UsageError(f"no trained head for {missing}; train them first (jakiro train --method ...)")
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    methods = {name: variant_factory(name, heads[VARIANTS[name].head], tree, sampling) for name in variants}
    with torch.no_grad():
        return evaluate(target, tokenizer, methods, config, out_dir, progress=progress)


def tree_size(variant: str, tree: TreeConfig) -> int:
    """Tokens a variant verifies per cycle: the tree budget, or the static Jakiro* tree's size."""
    if VARIANTS[variant].head == "jakiro_star":
        return StaticTree.from_choices(JAKIRO_STAR_TREE).size
    return tree.total_tokens


def pool_blocks(blocks: list[dict[str, Any]], tree: TreeConfig, greedy: bool = True) -> dict[str, Any]:
    """One evaluation from several interleaved runs over disjoint turns: the turn records of every method
    concatenated, the target costs as the median of each run's, and the summary recomputed over all turns."""
    from effrepro.specdec.harness import summarize

    if len(blocks) == 1:
        return blocks[0]
    records = {name: [row for block in blocks for row in block["records"][name]] for name in blocks[0]["records"]}
    measured = [block["costs"] for block in blocks if block.get("costs")]
    costs = {k: statistics.median(c[k] for c in measured) for k in measured[0]} if measured else None
    sizes = {name: tree_size(name, tree) for name in records if name in VARIANTS}
    return {"summary": summarize(records, costs, sizes, greedy=greedy), "records": records, "costs": costs,
            "blocks": len(blocks)}


def tuned_tree(target: TargetAdapter, tokenizer: Any, heads: dict[str, Any], variants: list[str],
               chat_template: str = "auto", log: Callable[[str], None] | None = None) -> TreeConfig:
    """``--total-tokens -1``: the engine's tree tuner (measured step, verify and draft costs, replayed acceptance;
    cached per head and machine) run with the Jakiro head (the first variant's head when ``jakiro`` is not
    evaluated), and the chosen ``(top_k, depth, total_tokens)`` used by every variant, so they compare at one
    budget. Depths from 2 (the contrastive last level needs two levels); every depth is replayed by its own
    proposer, since Jakiro's last level is not the first level of a deeper round."""
    import sys

    from effrepro.specdec.tuning import TreeGrid
    from effrepro.specdec.tuning import tuned_tree as tune

    check_variants(variants)
    name = "jakiro" if "jakiro" in variants else variants[0]
    head = heads[VARIANTS[name].head]
    if isinstance(head, JakiroDraft) and head.config.variant == "star":
        raise UsageError("--total-tokens -1 sizes a dynamic tree; Jakiro* drafts on its static tree (evaluate "
                         "jakiro or eagle2 with it)")
    jakiro = isinstance(head, JakiroDraft)
    grid = TreeGrid(depth=(2, 3, 4, 5, 6)) if jakiro else TreeGrid()

    def make(tree: TreeConfig) -> Any:
        return variant_factory(name, head, tree, SamplingConfig())(target)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    choice = tune(target, tokenizer, head, make, grid=grid, prefix=not jakiro, chat_template=chat_template,
                  log=log or say)
    return choice.tree
