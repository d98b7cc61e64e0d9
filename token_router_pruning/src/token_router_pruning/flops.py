"""Analytic prefill FLOPs of a Llama-family model under token skipping or sub-block removal.

For one block computing ``k`` of ``L`` tokens (1 MAC = 2 FLOPs):

* attention projections ``2 k (d (d_q + 2 d_kv) + d_q d)`` with ``d_q`` = heads x head_dim and
  ``d_kv`` = KV heads x head_dim;
* attention scores and values, causal: ``2 * 2 * d_q * k^2 / 2 = 2 d_q k^2``;
* MLP (gate, up, down) ``2 k 3 d d_ff``;
* the FTP router (4 -> 64 -> 1 MLP) on all ``L`` tokens of a routed block: ``2 L (4 * 64 + 64)``.

Norms, rotary embeddings, residual adds and the gather/scatter are not counted (they are O(k d)).
The LM head ``2 L d V`` is the same for every method and is reported separately.
So token sparsity ``s`` removes a share ``s`` of the linear FLOPs and ``1 - (1 - s)^2`` of the
attention-score FLOPs; ShortGPT removing ``n`` of ``N`` layers removes exactly ``n / N`` of the block FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from token_router_pruning.ftp import num_kept


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    layers: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(hidden=config.hidden_size, heads=config.num_attention_heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   head_dim=head_dim, ffn=config.intermediate_size, vocab=config.vocab_size,
                   layers=config.num_hidden_layers)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def attention_linear_flops(dims: ModelDims, tokens: float) -> float:
    d = dims.hidden
    return 2.0 * tokens * (d * (dims.q_dim + 2 * dims.kv_dim) + dims.q_dim * d)


def attention_score_flops(dims: ModelDims, tokens: float) -> float:
    return 2.0 * dims.q_dim * tokens * tokens


def mlp_flops(dims: ModelDims, tokens: float) -> float:
    return 2.0 * tokens * 3 * dims.hidden * dims.ffn


def router_flops(tokens: float, hidden: int = 64, features: int = 4) -> float:
    return 2.0 * tokens * (features * hidden + hidden)


def block_flops(
    dims: ModelDims,
    kept: float,
    seq_len: float | None = None,
    scope: str = "block",
    attn_removed: bool = False,
    mlp_removed: bool = False,
) -> float:
    """FLOPs of one block; ``scope="mlp_only"`` runs attention on all ``seq_len`` tokens, the MLP on ``kept``."""
    attn_tokens = kept if scope == "block" or seq_len is None else seq_len
    attn = 0.0 if attn_removed else attention_linear_flops(dims, attn_tokens) + attention_score_flops(dims, attn_tokens)
    mlp = 0.0 if mlp_removed else mlp_flops(dims, kept)
    return attn + mlp


def head_flops(dims: ModelDims, positions: int) -> float:
    return 2.0 * positions * dims.hidden * dims.vocab


@dataclass(frozen=True)
class FlopsReport:
    blocks: float
    router: float
    head: float
    dense_blocks: float

    @property
    def ratio(self) -> float:
        """(blocks + router) / dense blocks: the compute the method keeps, the matched quantity."""
        return (self.blocks + self.router) / self.dense_blocks

    @property
    def total(self) -> float:
        return self.blocks + self.router + self.head

    def as_dict(self) -> dict[str, float]:
        return {"block_flops": self.blocks, "router_flops": self.router, "head_flops": self.head,
                "dense_block_flops": self.dense_blocks, "flops_ratio": self.ratio}


def model_flops(
    dims: ModelDims,
    seq_len: int,
    sparsity: Sequence[float] | None = None,
    removed: Iterable[tuple[int, str]] = (),
    scope: str = "block",
    dynamic_router: bool = False,
    kept: Sequence[float] | None = None,
) -> FlopsReport:
    """Prefill FLOPs for one sequence of ``seq_len`` tokens.

    ``kept`` (per block, possibly fractional means over a data set) overrides the kept counts derived
    from ``sparsity`` (``L - round(s L)``), so FLOPs can be computed from the *achieved* sparsity.
    """
    removed = set(removed)
    if kept is None:
        kept = [num_kept(seq_len, s) for s in sparsity] if sparsity is not None else [seq_len] * dims.layers
    if len(kept) != dims.layers:
        raise ValueError(f"{len(kept)} kept counts for {dims.layers} blocks")
    blocks = router = 0.0
    for i, k in enumerate(kept):
        blocks += block_flops(dims, k, seq_len, scope, (i, "attn") in removed, (i, "mlp") in removed)
        if dynamic_router and (i, "attn") not in removed:
            router += router_flops(seq_len)
    dense = dims.layers * block_flops(dims, seq_len)
    return FlopsReport(blocks=blocks, router=router, head=head_flops(dims, seq_len), dense_blocks=dense)


def layer_removal_flops(dims: ModelDims, seq_len: int, layers: Iterable[int]) -> FlopsReport:
    return model_flops(dims, seq_len, removed={(i, p) for i in layers for p in ("attn", "mlp")})
