"""Baselines in the same harness: ShortGPT layer removal and a BlockPruner-style greedy sub-block removal.

Both become :class:`SkipPlan` s with ``removed`` sub-blocks, so they run through the very same wrapped
model, evaluation and latency code as FTP. Compute is matched with the analytic FLOPs counter.

* ShortGPT (Men et al. 2024): remove the ``n`` layers of lowest block influence
  ``BI_i = 1 - E_t cos(X^i_t, X^{i+1}_t)`` measured on calibration text.
* BlockPruner-mini (after Zhong et al. 2024): each layer is two sub-blocks (attention, MLP); greedily
  remove the sub-block whose removal raises the calibration perplexity least. "Mini" [OUR
  SIMPLIFICATION]: after the first full sweep, each step re-scores only the ``lazy_top`` candidates that
  ranked best in the previous step (lazy greedy), and a removal is scored by re-running only the layers
  from the removed sub-block on (the prefix is cached). ``lazy_top=None`` re-scores every candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from token_router_pruning.flops import ModelDims, model_flops
from token_router_pruning.ftp import SkipPlan, TokenSkipper, causal_additive_mask


def layer_plan(layers: Sequence[int], name: str = "shortgpt") -> SkipPlan:
    return SkipPlan(name=name, removed=frozenset((i, p) for i in layers for p in ("attn", "mlp")))


def shortgpt_layers(block_influence: Sequence[float], n: int) -> list[int]:
    """The ``n`` layers with the lowest block influence (ties: the later layer first, as deeper is safer)."""
    order = sorted(range(len(block_influence)), key=lambda i: (block_influence[i], -i))
    return sorted(order[:n])


def closest_prefix(ratios: Sequence[float], target_ratio: float) -> int:
    """Index of the removal prefix whose FLOPs ratio is closest to ``target_ratio``."""
    return min(range(len(ratios)), key=lambda i: (abs(ratios[i] - target_ratio), i))


def matched_shortgpt(block_influence: Sequence[float], dims: ModelDims, seq_len: int,
                     target_ratio: float) -> tuple[SkipPlan, float]:
    """ShortGPT plan whose analytic FLOPs ratio is closest to ``target_ratio``; returns (plan, ratio)."""
    ratios = [model_flops(dims, seq_len, removed=layer_plan(shortgpt_layers(block_influence, n)).removed).ratio
              for n in range(dims.layers + 1)]
    n = closest_prefix(ratios, target_ratio)
    return layer_plan(shortgpt_layers(block_influence, n)), ratios[n]


def _forward_from(model: nn.Module, index: int, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Run decoder layers ``index..N-1`` (no routing: the skipper holds no forward state here), norm, head."""
    base = model.model
    embeddings = base.rotary_emb(hidden, position_ids)
    mask = None
    if model.config._attn_implementation != "sdpa":
        mask = causal_additive_mask(hidden.shape[1], 0, hidden.dtype, hidden.device)
    for layer in base.layers[index:]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=embeddings, position_ids=position_ids)
    return model.get_output_embeddings()(base.norm(hidden))


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   ids[:, 1:].reshape(-1)))


@dataclass
class BlockPrunerResult:
    order: list[tuple[int, str]] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)  # calibration NLL after each removal
    evaluations: int = 0

    def plan(self, count: int, name: str = "blockpruner") -> SkipPlan:
        return SkipPlan(name=name, removed=frozenset(self.order[:count]))

    def matched(self, dims: ModelDims, seq_len: int, target_ratio: float) -> tuple[SkipPlan, float, int]:
        ratios = [model_flops(dims, seq_len, removed=self.order[:c]).ratio for c in range(len(self.order) + 1)]
        count = closest_prefix(ratios, target_ratio)
        return self.plan(count), ratios[count], count

    def as_dict(self) -> dict:
        return {"order": [list(o) for o in self.order], "nll": self.nll, "evaluations": self.evaluations}

    @classmethod
    def from_dict(cls, data: dict) -> BlockPrunerResult:
        return cls([(int(i), str(p)) for i, p in data["order"]], list(data["nll"]), int(data["evaluations"]))


@torch.no_grad()
def blockpruner_search(
    model: nn.Module,
    skipper: TokenSkipper,
    windows: torch.Tensor,
    dims: ModelDims,
    seq_len_ref: int,
    min_flops_ratio: float,
    lazy_top: int | None = 6,
    log: Callable[[dict], None] | None = None,
) -> BlockPrunerResult:
    """Greedy sub-block removal until the analytic FLOPs ratio drops to ``min_flops_ratio`` or below."""
    device = next(model.parameters()).device
    ids = windows.to(device)
    positions = torch.arange(ids.shape[1], device=device)[None].expand(ids.shape[0], -1)
    candidates = [(i, p) for i in range(dims.layers) for p in ("attn", "mlp")]
    result = BlockPrunerResult()
    last_score: dict[tuple[int, str], float] = {}
    removed: list[tuple[int, str]] = []
    while model_flops(dims, seq_len_ref, removed=removed).ratio > min_flops_ratio and len(removed) < len(candidates):
        inputs = _layer_inputs(model, skipper, ids, removed)
        remaining = [c for c in candidates if c not in removed]
        if lazy_top is None or not last_score:
            to_score = remaining
        else:
            to_score = sorted(remaining, key=lambda c: last_score[c])[:lazy_top]
        for cand in to_score:
            with skipper.use(SkipPlan(removed=frozenset(removed + [cand]))):
                last_score[cand] = _nll(_forward_from(model, cand[0], inputs[cand[0]], positions), ids)
            result.evaluations += 1
        best = min(to_score, key=lambda c: (last_score[c], c))
        removed.append(best)
        result.order.append(best)
        result.nll.append(last_score.pop(best))
        if log:
            log({"step": len(removed), "removed": list(best), "nll": result.nll[-1],
                 "flops_ratio": model_flops(dims, seq_len_ref, removed=removed).ratio})
    return result


def _layer_inputs(model: nn.Module, skipper: TokenSkipper, ids: torch.Tensor,
                  removed: list[tuple[int, str]]) -> list[torch.Tensor]:
    """Input hidden states of every decoder layer under the current removal set (the cached prefixes)."""
    inputs: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_pre_hook(
        lambda module, args, kwargs, i=i: inputs.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    try:
        with skipper.use(SkipPlan(removed=frozenset(removed))):
            model.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return [inputs[i] for i in range(len(model.model.layers))]
