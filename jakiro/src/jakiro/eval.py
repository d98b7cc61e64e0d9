"""Evaluation of the draft heads on the engine's harness (MT-bench, interleaved with plain decoding).

Evaluated variants (``VARIANTS``): a variant is a trained head (``head``) plus proposer options.

* ``eagle2``: the engine's EAGLE-2 proposer (catch-up + ``depth`` tree forwards);
* ``jakiro``: hybrid drafting, the last level from the contrastive branch, official row alignment;
* ``jakiro_parent``: the same head, parent-aligned last level (ablation, spec §1.5);
* ``jakiro_nocepd``: the head trained without the contrastive loss, every level by a forward (EAGLE-2 schedule);
* ``jakiro_star``: Jakiro* on the static tree, corrected verification rule (exact);
* ``jakiro_star_official``: the same head with the literal released rule (not exact; spec §1.7).

Jakiro* at temperature 0 is our extension (the official code supports T > 0 only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import EvalConfig, SamplingConfig, TargetAdapter, TreeConfig, evaluate
from effrepro.specdec.eagle import EagleHead, eagle_factory

from jakiro.models.head import JakiroDraft


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


def variant_factory(name: str, head: Any, tree: TreeConfig,
                    sampling: SamplingConfig) -> Callable[[TargetAdapter], Any]:
    """A harness factory ``target -> proposer`` for one variant (lm_head cast once to the head's dtype)."""
    options = dict(VARIANTS[name].options)
    if isinstance(head, EagleHead):
        return eagle_factory(head, tree)
    if not isinstance(head, JakiroDraft):
        raise UsageError(f"variant {name} needs a Jakiro head, got {type(head).__name__}")
    if head.config.variant == "star":
        options["sampling"] = sampling

    def make(target: TargetAdapter) -> Any:
        weight = next(head.parameters())
        lm_head = target.lm_head_weight.detach().to(weight.device, weight.dtype)
        return head.make_proposer(lm_head, tree, max_length=target.max_length, **options)

    return make


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
