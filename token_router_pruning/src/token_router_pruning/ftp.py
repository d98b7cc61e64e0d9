"""FTP (fine-grained token-wise pruning): a learned router decides, block by block, which tokens a decoder layer
computes; skipped tokens pass the block unchanged. The paper's method in one module: the routers (static,
random, the learned :class:`DynamicRouter`) and the token skipper (:class:`TokenSkipper`, :func:`attach`) that runs
them inside any HF Llama-family model. The sparsity schedule search is :mod:`token_router_pruning.scheduler`,
router training :mod:`token_router_pruning.train`.

**Token routers**: which tokens of a sequence a block computes (paper §3.1-3.3).

A router turns, for one block ``i`` with token sparsity ``s_i``, a (right-padded) batch into a
:class:`Selection`: per sample the sorted kept positions ``K_i`` with ``|K_i| = L - round(s_i L)``.
Kept sets of different samples are packed into one rectangular ``(B, k_max)`` index tensor by
appending padding positions (``>= length_b``), which come after every real token, so a plain
causal mask over the gathered rows stays exact for the real rows.

* :class:`StaticRouter` keeps token 0 (attention sink) plus the ``k - 1`` most recent tokens.
* :class:`RandomRouter` keeps token 0 plus ``k - 1`` random tokens (the paper's random baseline).
* :class:`DynamicRouter` is the paper's learned global router: one 4 -> 64 -> 1 MLP shared by all
  blocks over four low-dimensional features (position, received attention, attention rank, block
  sparsity); it keeps the top-``k`` tokens by router probability.

**Token skipping** inside any HF Llama-family causal LM, hooked in by wrapping its decoder layers.

:class:`TokenSkipper` replaces each ``model.model.layers[i]`` with a :class:`RoutedDecoderLayer` that
calls the *original* layer (no modelling code is copied) and puts thin gates around its ``self_attn``
and ``mlp`` sub-modules. What happens in a forward pass is set by a :class:`SkipPlan`:

* ``scope="block"`` (default, paper §3.1/§4.4): per block ``i`` the router picks sorted kept positions
  ``K_i``; their rows are gathered, the original layer runs on the shorter sequence with the kept
  tokens' *original* rotary positions (cos/sin are gathered, never recomputed), a causal mask over the
  gathered rows (exact because ``K_i`` is sorted), and the outputs are scattered back. Skipped rows are
  copied unchanged and leave no K/V in that block's cache.
* ``scope="mlp_only"`` (the Fig. 1 reading): attention runs on every token, the MLP only on kept rows;
  skipped rows get a zero MLP update.
* ``removed``: ``(layer, "attn"|"mlp")`` sub-blocks replaced by a zero update (BlockPruner); a layer with
  both removed is skipped entirely (ShortGPT).
* Cached generation (``kv_mode``): ``"strict"`` computes every new token in every block, so only prompt
  tokens are ever skipped [RECONSTRUCTION of the paper's strict variant]; ``"threshold"`` lets the
  dynamic router skip the new token in block ``i`` when ``p < threshold`` (no K/V written there).

In training the router's gate ``g`` blends the kept rows, ``x + g * (F(x) - x)`` (``gate="soft"``: g = p;
``"ste"``: forward 1, gradient of p), so gradients reach the router; evaluation is a pure hard skip. With
``"ste"`` a skipped token gets no gradient (its row never passes the block), so a router can only reorder the
tokens it already keeps. ``gate="ste_all"`` also computes the block for every token (a second, gradient-free
dense pass, training only) and adds ``(p - sg(p)) * (F_dense(x) - x)`` on the skipped rows: the layer output is
``x + (m + p - sg(p)) * (F(x) - x)`` with ``m`` the hard top-k mask, ``F`` the routed block on kept rows and the
dense block on skipped ones. The forward is exactly the hard routing (``p - sg(p) = 0``); the backward gives
``d/dp = F(x) - x`` for every token, skipped ones included.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from effrepro.errors import UsageError
from torch import nn

# ===== the routers ==================================================================================================
FEATURES = ("position", "attention", "rank", "sparsity")
ATTENTION_FEATURES = ("received", "causal")
SELECTIONS = ("topk", "threshold")


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Token sparsity must lie in [0, 1): a block that skips every token is a removed block, not routing."""
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise UsageError(f"{what} {value!r} is outside [0, 1); give the fraction of tokens a block skips, e.g. 0.25")
    return value


def num_skipped(length: int, sparsity: float) -> int:
    """``round(s * L)`` with halves rounded up (a tiny epsilon absorbs binary representation error)."""
    return int(math.floor(sparsity * length + 0.5 + 1e-9))


def num_kept(length: int, sparsity: float) -> int:
    """``|K| = L - round(s L)``, at least 1 (token 0 is always kept)."""
    if length <= 0:
        return 0
    return max(1, length - num_skipped(length, sparsity))


def static_keep_indices(length: int, kept: int) -> list[int]:
    """The static position-priority set ``{0} ∪ {L-k+1, ..., L-1}`` (sorted)."""
    if kept >= length:
        return list(range(length))
    return [0, *range(length - kept + 1, length)]


@dataclass
class BlockContext:
    """What a router sees when deciding for one block of one forward pass."""

    index: int
    sparsity: float
    lengths: torch.Tensor  # (B,) real (unpadded) lengths
    seq_len: int  # padded length L
    table: torch.Tensor | None  # (B, L) latest per-token attention statistic
    training: bool


@dataclass
class Selection:
    """Kept positions of one block: ``kept`` (B, k) sorted per row, the first ``n_kept[b]`` rows real."""

    kept: torch.Tensor
    n_kept: torch.Tensor
    probs: torch.Tensor | None = None  # (B, L) router probability of computing each token (dynamic router)
    gate: torch.Tensor | None = None  # (B, k) gate multiplying the block update in training
    guide: torch.Tensor | None = None  # (B, L) the static router's keep mask for the same k (guide loss target)

    @property
    def width(self) -> int:
        return int(self.kept.shape[1])


def pack_kept(
    kept_lists: list[list[int]], lengths: list[int], seq_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ragged sorted kept lists into (B, k_max), filling with padding positions ``L_b, L_b+1, ...``."""
    width = max(len(k) for k in kept_lists)
    rows = []
    for kept, length in zip(kept_lists, lengths):
        if length + width - len(kept) > seq_len:
            raise UsageError("kept sets of this batch are too ragged to pack behind the padding (threshold "
                             "selection keeps a data-dependent number of tokens); use batch size 1")
        rows.append(list(kept) + list(range(length, length + width - len(kept))))
    return (torch.tensor(rows, dtype=torch.long, device=device),
            torch.tensor([len(k) for k in kept_lists], dtype=torch.long, device=device))


def static_guide_mask(lengths: list[int], counts: list[int], seq_len: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq_len, device=device)
    for b, (length, kept) in enumerate(zip(lengths, counts)):
        mask[b, static_keep_indices(length, kept)] = 1.0
    return mask


class Router:
    """Base class: ``select`` for prefill, ``decode_keep`` for a new token during cached generation."""

    name = "router"
    needs_attention = False  # whether the router reads the per-token attention table

    def kept_counts(self, ctx: BlockContext) -> list[int]:
        return [num_kept(int(n), ctx.sparsity) for n in ctx.lengths.tolist()]

    def select(self, ctx: BlockContext) -> Selection:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_keep(self, ctx: BlockContext, features: torch.Tensor | None) -> torch.Tensor:
        """Keep decision for the newest token during cached decoding: static/random keep it (most recent)."""
        return torch.ones(int(ctx.lengths.shape[0]), dtype=torch.bool, device=ctx.lengths.device)


class StaticRouter(Router):
    """FTP's static router: a fixed, input-independent order (token 0, then L-1, L-2, ..., 1)."""

    name = "static"

    def select(self, ctx: BlockContext) -> Selection:
        lengths = [int(n) for n in ctx.lengths.tolist()]
        counts = self.kept_counts(ctx)
        kept, n_kept = pack_kept([static_keep_indices(n, k) for n, k in zip(lengths, counts)], lengths,
                                 ctx.seq_len, ctx.lengths.device)
        return Selection(kept, n_kept)


class RandomRouter(Router):
    """Token 0 plus ``k - 1`` uniformly random tokens; deterministic in (seed, block, length)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def select(self, ctx: BlockContext) -> Selection:
        lengths = [int(n) for n in ctx.lengths.tolist()]
        lists = []
        for length, kept in zip(lengths, self.kept_counts(ctx)):
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{ctx.index}:{length}".encode()))
            others = (torch.randperm(length - 1, generator=gen)[: kept - 1] + 1).tolist() if length > 1 else []
            lists.append(sorted([0, *others]))
        kept_t, n_kept = pack_kept(lists, lengths, ctx.seq_len, ctx.lengths.device)
        return Selection(kept_t, n_kept)


def attention_rank(values: torch.Tensor, lengths: torch.Tensor, causal: bool) -> torch.Tensor:
    """Normalised rank of each token's attention statistic, 1 = most attended, ties broken by position.

    ``causal=False``: rank among the sample's real tokens. ``causal=True``: rank among tokens ``<= t``
    (prefix rank), so the feature of token ``t`` never depends on later tokens.
    """
    batch, seq_len = values.shape
    positions = torch.arange(seq_len, device=values.device)
    valid = positions[None, :] < lengths[:, None]
    if not causal:
        masked = values.masked_fill(~valid, float("-inf"))
        order = torch.sort(masked, dim=1, stable=True).indices  # ascending, ties keep position order
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, positions.expand(batch, -1).contiguous())
        n_pad = (seq_len - lengths)[:, None]
        denom = (lengths - 1).clamp(min=1)[:, None].float()
        return ((ranks - n_pad).clamp(min=0).float() / denom).masked_fill(~valid, 0.0)
    # prefix rank: #{u < t : a_u < a_t or (a_u == a_t)} / t, i.e. the share of earlier tokens it beats or ties
    below = (values[:, None, :] <= values[:, :, None]) & (positions[None, :] < positions[:, None])[None]
    counts = below.sum(-1).float()
    ranks = counts / positions.clamp(min=1).float()[None, :]
    ranks[:, 0] = 1.0
    return ranks.masked_fill(~valid, 0.0)


class DynamicRouter(nn.Module, Router):
    """The global learnable router shared by all blocks: ``Linear(4, 64) -> ReLU -> Linear(64, 1)`` (385 params).

    Features per (token t, block i) [RECONSTRUCTION of the exact definitions]:
      1. position ``t / (L - 1)``;
      2. the attention token ``t`` received in the latest block that computed it (``attn_feature="received"``:
         mean over heads and over kept queries ``q >= t``; ``"causal"``: the token's attention to itself,
         which is what the newest query sees in streaming and never depends on later tokens), multiplied
         by ``L`` when ``attn_scale="length"`` (1 = uniform attention) or raw when ``"raw"``;
      3. its rank among the sequence's tokens in [0, 1] (prefix rank for the causal variant);
      4. the block's sparsity ``s_i``.
    ``selection="topk"`` keeps the top-``k`` tokens by probability (token 0 and the last token forced);
    ``"threshold"`` keeps tokens with ``p >= threshold`` (causal, variable ``k``).
    """

    name = "dynamic"
    needs_attention = True

    def __init__(
        self,
        hidden: int = 64,
        attn_feature: str = "received",
        attn_scale: str = "length",
        selection: str = "topk",
        threshold: float = 0.5,
        force_last: bool = True,
        drop_features: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if attn_feature not in ATTENTION_FEATURES:
            raise UsageError(f"attn_feature {attn_feature!r} unknown; use one of {', '.join(ATTENTION_FEATURES)}")
        if attn_scale not in ("length", "raw"):
            raise UsageError(f"attn_scale {attn_scale!r} unknown; use length or raw")
        if selection not in SELECTIONS:
            raise UsageError(f"selection {selection!r} unknown; use one of {', '.join(SELECTIONS)}")
        unknown = sorted(set(drop_features) - set(FEATURES))
        if unknown:
            raise UsageError(f"drop_features {unknown} unknown; features are {', '.join(FEATURES)}")
        self.attn_feature, self.attn_scale, self.selection = attn_feature, attn_scale, selection
        self.threshold, self.force_last = float(threshold), bool(force_last)
        self.drop_features = tuple(drop_features)
        self.register_buffer("feature_mask", torch.tensor([0.0 if f in drop_features else 1.0 for f in FEATURES]),
                             persistent=False)
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def options(self) -> dict:
        return {"hidden": self.net[0].out_features, "attn_feature": self.attn_feature, "attn_scale": self.attn_scale,
                "selection": self.selection, "threshold": self.threshold, "force_last": self.force_last,
                "drop_features": list(self.drop_features)}

    def features(self, ctx: BlockContext) -> torch.Tensor:
        """(B, L, 4) router inputs; padding positions are zero."""
        lengths, seq_len = ctx.lengths, ctx.seq_len
        device = lengths.device
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        valid = positions[None, :] < lengths[:, None]
        pos = positions[None, :] / (lengths - 1).clamp(min=1)[:, None].float()
        table = ctx.table if ctx.table is not None else (1.0 / lengths.float())[:, None].expand(-1, seq_len)
        attn = table.float() * (lengths[:, None].float() if self.attn_scale == "length" else 1.0)
        rank = attention_rank(table.float(), lengths, causal=self.attn_feature == "causal")
        sparsity = torch.full_like(pos, float(ctx.sparsity)).expand(lengths.shape[0], -1)
        feats = torch.stack([pos.expand(lengths.shape[0], -1), attn, rank, sparsity], dim=-1)
        return feats.masked_fill(~valid[..., None], 0.0) * self.feature_mask

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(feats).squeeze(-1))

    def select(self, ctx: BlockContext) -> Selection:
        probs = self.probabilities(self.features(ctx))
        lengths = [int(n) for n in ctx.lengths.tolist()]
        counts = self.kept_counts(ctx)
        scores = probs.detach()
        lists = []
        for b, (length, kept) in enumerate(zip(lengths, counts)):
            row = scores[b, :length].clone()
            if self.selection == "threshold":
                chosen = set(torch.nonzero(row >= self.threshold).flatten().tolist())
                chosen |= {0} | ({length - 1} if self.force_last else set())
                lists.append(sorted(chosen))
                continue
            forced = [0, length - 1] if self.force_last else [0]
            row[forced[:kept]] = 2.0  # probabilities are <= 1, so forced tokens rank first
            top = torch.sort(row, descending=True, stable=True).indices[:kept]
            lists.append(sorted(top.tolist()))
        kept_t, n_kept = pack_kept(lists, lengths, ctx.seq_len, ctx.lengths.device)
        selection = Selection(kept_t, n_kept, probs=probs)
        if ctx.training and ctx.sparsity > 0:  # only routing blocks are gated: a dense block stays the model's
            selection.gate = probs.gather(1, kept_t)
            selection.guide = static_guide_mask(lengths, counts, ctx.seq_len, ctx.lengths.device)
        return selection

    def decode_keep(self, ctx: BlockContext, features: torch.Tensor | None) -> torch.Tensor:
        if features is None:
            return super().decode_keep(ctx, features)
        return self.probabilities(features * self.feature_mask) >= self.threshold


def count_router_params(router: DynamicRouter) -> int:
    return sum(p.numel() for p in router.parameters())


class FixedRouter(Router):
    """Replays given kept sets (block -> sorted positions); unlisted blocks keep every token.

    Used to compare cached decoding with a no-cache run under *identical* routing, and to evaluate
    a kept set found elsewhere.
    """

    name = "fixed"

    def __init__(self, kept: dict[int, list[int]]) -> None:
        self.kept = {int(i): sorted(int(t) for t in ks) for i, ks in kept.items()}

    def select(self, ctx: BlockContext) -> Selection:
        lengths = [int(n) for n in ctx.lengths.tolist()]
        lists = []
        for length in lengths:
            chosen = [t for t in self.kept.get(ctx.index, range(length)) if t < length]
            lists.append(chosen or [0])
        kept_t, n_kept = pack_kept(lists, lengths, ctx.seq_len, ctx.lengths.device)
        return Selection(kept_t, n_kept)


# ===== token skipping inside the model ==============================================================================
SCOPES = ("block", "mlp_only")
KV_MODES = ("strict", "threshold")
ROUTER_MODES = ("per_block", "one_pass")
GATES = ("soft", "ste", "ste_all")
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class SkipPlan:
    """Everything a routed forward needs: which tokens / sub-blocks each block computes.

    ``sparsity`` is the per-block token sparsity ``s_i`` in [0, 1) (None: no token skipping).
    ``router_mode="one_pass"`` [RECONSTRUCTION of the ARR-2025 variant, not claimed]: the attention table
    is only filled by the first block, so every block's decision is computable right after it.
    """

    name: str = "dense"
    sparsity: tuple[float, ...] | None = None
    router: Router | None = None
    removed: frozenset[tuple[int, str]] = frozenset()
    scope: str = "block"
    kv_mode: str = "strict"
    router_mode: str = "per_block"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise UsageError(f"skip scope {self.scope!r} unknown; use one of {', '.join(SCOPES)}")
        if self.kv_mode not in KV_MODES:
            raise UsageError(f"kv_mode {self.kv_mode!r} unknown; use one of {', '.join(KV_MODES)}")
        if self.router_mode not in ROUTER_MODES:
            raise UsageError(f"router_mode {self.router_mode!r} unknown; use one of {', '.join(ROUTER_MODES)}")
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", tuple(check_sparsity(s, "block sparsity") for s in self.sparsity))
            if self.router is None:
                raise UsageError("a plan with token sparsity needs a router (static, random or dynamic)")
        for layer, part in self.removed:
            if part not in ("attn", "mlp"):
                raise UsageError(f"removed sub-block {(layer, part)!r}: the part must be 'attn' or 'mlp'")

    def layer_removed(self, index: int) -> bool:
        return (index, "attn") in self.removed and (index, "mlp") in self.removed

    def with_name(self, name: str) -> SkipPlan:
        return replace(self, name=name)


@dataclass
class ForwardState:
    """Per-forward bookkeeping shared by the wrapped layers (reset by a pre-hook on the base model)."""

    lengths: torch.Tensor  # (B,)
    seq_len: int
    padded: bool
    decode: bool
    cache: Any
    table: torch.Tensor | None = None  # (B, L) latest per-token attention statistic
    records: dict[int, Selection] = field(default_factory=dict)
    decode_keep: dict[int, bool] = field(default_factory=dict)
    new_stat: torch.Tensor | None = None  # decode: the newest token's latest self-attention statistic
    total_len: int = 0  # decode: tokens so far, the new one included


class _AttentionGate(nn.Module):
    """Wraps ``layer.self_attn``: optional removal (zero update, no K/V) and capture of attention weights."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.removed = False
        self.capture = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.removed:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return torch.zeros_like(hidden), None
        out = self.inner(*args, **kwargs)
        if self.capture:
            self.last_weights = out[1].detach() if isinstance(out, tuple) and out[1] is not None else None
        return out


class _MLPGate(nn.Module):
    """Wraps ``layer.mlp``: removal, or (scope ``mlp_only``) computing only the kept rows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.removed = False
        self.selection: Selection | None = None
        self.gate_values: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return torch.zeros_like(x)
        if self.selection is None:
            return self.inner(x)
        index = self.selection.kept[..., None].expand(-1, -1, x.shape[-1])
        update = self.inner(x.gather(1, index))
        if self.gate_values is not None:
            update = update * self.gate_values[..., None].to(update.dtype)
        return torch.zeros_like(x).scatter(1, index, update)


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, k) of ``tensor`` (1 or B, L, ...)."""
    tensor = tensor.expand(index.shape[0], *tensor.shape[1:])
    return tensor.gather(1, index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(
        -1, -1, *tensor.shape[2:]))


def causal_additive_mask(queries: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, q, past + q): all cached keys visible, causal among the ``q`` new rows."""
    mask = torch.zeros(queries, past + queries, dtype=dtype, device=device)
    mask[:, past:] = torch.full((queries, queries), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def received_attention(weights: torch.Tensor, n_rows: torch.Tensor, variant: str) -> torch.Tensor:
    """Per computed row, the attention statistic it received in this block, (B, k).

    ``received``: mean over heads, and over the real computed queries ``q >= t`` (causal attention puts 0
    on earlier ones), of the probability put on key ``t`` [RECONSTRUCTION]. ``causal``: the row's attention
    to itself (the diagonal), which depends on no later token.
    """
    probs = weights.float().mean(1)  # (B, q, kv) with kv == q here
    rows = probs.shape[1]
    if variant == "causal":
        return probs.diagonal(dim1=1, dim2=2)
    positions = torch.arange(rows, device=probs.device)
    valid_q = (positions[None, :] < n_rows[:, None]).to(probs.dtype)
    column = (probs * valid_q[..., None]).sum(1)
    count = (n_rows[:, None] - positions[None, :]).clamp(min=1).to(probs.dtype)
    return column / count


class RoutedDecoderLayer(nn.Module):
    """A decoder layer under a :class:`TokenSkipper`; with no plan it is the original layer, bit for bit."""

    def __init__(self, layer: nn.Module, index: int, skipper: TokenSkipper) -> None:
        super().__init__()
        self.layer = layer
        self.index = index
        self._skipper = skipper
        layer.self_attn = _AttentionGate(layer.self_attn)
        layer.mlp = _MLPGate(layer.mlp)

    @property
    def attn_gate(self) -> _AttentionGate:
        return self.layer.self_attn

    @property
    def mlp_gate(self) -> _MLPGate:
        return self.layer.mlp

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        skipper = self._skipper
        plan, state = skipper.plan, skipper.state
        call = dict(position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                    position_embeddings=position_embeddings, **kwargs)
        if plan is not None and plan.layer_removed(self.index):
            return hidden_states
        if plan is None or state is None or plan.sparsity is None:
            return self.layer(hidden_states, attention_mask=attention_mask, **call)
        if state.decode:
            return self._decode(hidden_states, attention_mask, call)
        selection = skipper.select(self.index)
        if plan.scope == "mlp_only":
            return self._mlp_only(hidden_states, attention_mask, call, selection)
        if selection.width == state.seq_len:  # every token kept: the original call, then the training gate
            out = self.layer(hidden_states, attention_mask=attention_mask, **call)
            self._update_table(selection.kept, state.lengths)
            return self._blend(hidden_states, out, selection.gate)
        dense = self._dense_update(hidden_states, attention_mask, call, selection)
        out = self._gathered(hidden_states, selection, call)
        return out if dense is None else out + dense

    def _dense_update(self, hidden: torch.Tensor, mask: Any, call: dict[str, Any], selection: Selection
                      ) -> torch.Tensor | None:
        """``gate="ste_all"`` in training: ``(p - sg(p)) * (F_dense(x) - x)`` on the skipped rows, zero in value
        (the forward stays the hard skip) but with gradient ``F_dense(x) - x`` for the skipped tokens' p. The
        dense pass runs without gradient, without a KV cache (the routed pass's keys must not see it) and
        without touching the attention statistics."""
        if self._skipper.gate_mode != "ste_all" or selection.gate is None or selection.probs is None:
            return None
        gate = self.attn_gate
        capture, gate.capture = gate.capture, False
        try:
            with torch.no_grad():
                dense_call = dict(call, past_key_values=None, use_cache=False)
                update = self.layer(hidden, attention_mask=mask, **dense_call) - hidden
        finally:
            gate.capture = capture
        skipped = torch.ones_like(selection.probs).scatter(1, selection.kept, 0.0)
        probs = selection.probs
        return ((probs - probs.detach()) * skipped)[..., None].to(update.dtype) * update

    # ---- prefill -----------------------------------------------------------------------------------
    def _gathered(self, hidden: torch.Tensor, selection: Selection, call: dict[str, Any]) -> torch.Tensor:
        index = selection.kept
        rows = index[..., None].expand(-1, -1, hidden.shape[-1])
        kept_hidden = hidden.gather(1, rows)
        cos, sin = call["position_embeddings"]
        position_ids = call["position_ids"]
        call = dict(call, position_embeddings=(_gather_rows(cos, index), _gather_rows(sin, index)),
                    position_ids=_gather_rows(position_ids, index) if position_ids is not None else index)
        mask = self._skipper.prefill_mask(self.index, kept_hidden, call["past_key_values"])
        out = self.layer(kept_hidden, attention_mask=mask, **call)
        self._update_table(index, selection.n_kept)
        out = self._blend(kept_hidden, out, selection.gate)
        return hidden.scatter(1, rows, out)

    def _mlp_only(self, hidden: torch.Tensor, mask: Any, call: dict[str, Any], selection: Selection) -> torch.Tensor:
        state = self._skipper.state
        all_kept = selection.width == state.seq_len
        self.mlp_gate.selection = None if all_kept and selection.gate is None else selection
        self.mlp_gate.gate_values = selection.gate
        try:
            out = self.layer(hidden, attention_mask=mask, **call)
        finally:
            self.mlp_gate.selection, self.mlp_gate.gate_values = None, None
        full = torch.arange(state.seq_len, device=hidden.device).expand(hidden.shape[0], -1)
        self._update_table(full, state.lengths)
        return out

    def _blend(self, before: torch.Tensor, after: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        if gate is None:
            return after
        if self._skipper.gate_mode in ("ste", "ste_all"):
            gate = 1.0 + gate - gate.detach()
        return before + gate[..., None].to(after.dtype) * (after - before)

    def _update_table(self, index: torch.Tensor, n_rows: torch.Tensor) -> None:
        skipper = self._skipper
        state = skipper.state
        weights = self.attn_gate.last_weights
        self.attn_gate.last_weights = None
        if state.table is None or weights is None or not skipper.updates_table(self.index):
            return
        stat = received_attention(weights, n_rows, skipper.attn_variant)
        state.table = state.table.scatter(1, index, stat.to(state.table.dtype))

    # ---- cached decoding ---------------------------------------------------------------------------
    def _decode(self, hidden: torch.Tensor, mask: Any, call: dict[str, Any]) -> torch.Tensor:
        skipper, state = self._skipper, self._skipper.state
        keep = skipper.decode_keep(self.index, hidden)
        if not keep and skipper.plan.scope == "block":
            return hidden  # the new token skips this block: no compute, no K/V entry
        cache = call["past_key_values"]
        mask = skipper.decode_mask(self.index, hidden, cache)
        self.mlp_gate.removed = self.mlp_gate.removed or not keep
        try:
            out = self.layer(hidden, attention_mask=mask, **call)
        finally:
            self.mlp_gate.removed = (self.index, "mlp") in skipper.plan.removed
        weights = self.attn_gate.last_weights
        self.attn_gate.last_weights = None
        if weights is not None and state.new_stat is not None:
            state.new_stat = weights.float().mean(1)[:, -1, -1:]  # the new token's attention to itself
        return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` of a HF Llama-family causal LM, checked for the hooks token skipping needs."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    name = type(model).__name__
    if not isinstance(layers, nn.ModuleList) or not hasattr(base, "rotary_emb"):
        raise UsageError(f"{name} is not a Llama-family causal LM (needs model.model.layers and model.model."
                         "rotary_emb); token skipping supports Llama, Mistral, Qwen2/3 and similar decoders")
    for layer in layers:
        inner = layer.layer if isinstance(layer, RoutedDecoderLayer) else layer
        params = inspect.signature(inner.forward).parameters
        if not (hasattr(inner, "self_attn") and hasattr(inner, "mlp") and "position_embeddings" in params):
            raise UsageError(f"{name}: decoder layer {type(inner).__name__} lacks self_attn / mlp / "
                             "position_embeddings, the hooks token skipping needs")
    return layers


class TokenSkipper:
    """Attach token skipping to a causal LM in place; ``set_plan`` chooses what each forward computes."""

    def __init__(self, model: nn.Module) -> None:
        layers = decoder_layers(model)
        if any(isinstance(layer, RoutedDecoderLayer) for layer in layers):
            raise UsageError("this model already has a TokenSkipper attached; reuse it or call detach() first")
        self.model = model
        self.base = model.model
        self.config = model.config
        self.original_attention = self.config._attn_implementation
        if self.original_attention not in SUPPORTED_ATTENTION:
            raise UsageError(f"attention implementation {self.original_attention!r} is not supported by token "
                             "skipping; load the model with attn_implementation='sdpa' or 'eager'")
        self.num_layers = len(layers)
        self.wrappers = [RoutedDecoderLayer(layer, i, self) for i, layer in enumerate(layers)]
        for i, wrapper in enumerate(self.wrappers):
            layers[i] = wrapper
        self.plan: SkipPlan | None = None
        self.state: ForwardState | None = None
        self.last_state: ForwardState | None = None
        self.gate_mode: str | None = None
        self._decode_table: torch.Tensor | None = None
        self._hooks = [self.base.register_forward_pre_hook(self._begin, with_kwargs=True),
                       self.base.register_forward_hook(self._end)]

    # ---- configuration -----------------------------------------------------------------------------
    def set_plan(self, plan: SkipPlan | None) -> None:
        if plan is not None:
            if plan.sparsity is not None and len(plan.sparsity) != self.num_layers:
                raise UsageError(f"plan {plan.name!r} has {len(plan.sparsity)} block sparsities for a model with "
                                 f"{self.num_layers} blocks")
            bad = [layer for layer, _ in plan.removed if not 0 <= layer < self.num_layers]
            if bad:
                raise UsageError(f"plan {plan.name!r} removes sub-blocks of layer {bad[0]}, outside "
                                 f"0..{self.num_layers - 1}")
        self.plan = plan
        removed = plan.removed if plan is not None else frozenset()
        needs_attention = bool(plan and plan.router is not None and plan.router.needs_attention)
        for i, wrapper in enumerate(self.wrappers):
            wrapper.attn_gate.removed = (i, "attn") in removed
            wrapper.mlp_gate.removed = (i, "mlp") in removed
            wrapper.attn_gate.capture = needs_attention
        wanted = "eager" if needs_attention else self.original_attention
        if self.config._attn_implementation != wanted:
            self.model.set_attn_implementation(wanted)

    @contextlib.contextmanager
    def use(self, plan: SkipPlan | None) -> Iterator[TokenSkipper]:
        previous = self.plan
        self.set_plan(plan)
        try:
            yield self
        finally:
            self.set_plan(previous)

    @contextlib.contextmanager
    def training(self, gate: str = "soft") -> Iterator[TokenSkipper]:
        """Soft (or straight-through) gating of the kept rows so the router receives gradients."""
        if gate not in GATES:
            raise UsageError(f"gate {gate!r} unknown; use one of {', '.join(GATES)}")
        self.gate_mode = gate
        try:
            yield self
        finally:
            self.gate_mode = None

    def detach(self) -> None:
        """Restore the original decoder layers and sub-modules."""
        self.set_plan(None)
        for hook in self._hooks:
            hook.remove()
        layers = self.base.layers
        for i, wrapper in enumerate(self.wrappers):
            layer = wrapper.layer
            layer.self_attn = wrapper.attn_gate.inner
            layer.mlp = wrapper.mlp_gate.inner
            layers[i] = layer
        self.wrappers = []

    # ---- per-forward state -------------------------------------------------------------------------
    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        plan = self.plan
        if plan is None or plan.sparsity is None:
            self.state = None
            return
        ref = kwargs.get("input_ids", args[0] if args else None)
        if ref is None:
            ref = kwargs["inputs_embeds"]
        batch, seq_len = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("past_key_values")
        decode = cache is not None and any(cache.get_seq_length(i) > 0 for i in range(self.num_layers))
        mask = kwargs.get("attention_mask")
        if cache is not None:  # generation: the 2-D mask spans past + new tokens and must be all ones
            if mask is not None and mask.dim() == 2 and not bool(mask.bool().all()):
                raise UsageError("token skipping with a KV cache supports unpadded batches only; generate one "
                                 "prompt at a time (batch size 1)")
            mask = None
        lengths = self._lengths(mask, batch, seq_len, ref.device)
        padded = bool((lengths < seq_len).any())
        state = ForwardState(lengths=lengths, seq_len=seq_len, padded=padded, decode=decode, cache=cache)
        if plan.router is not None and plan.router.needs_attention:
            if decode:
                position_ids = kwargs.get("position_ids")
                prior = self._decode_table.shape[1] if self._decode_table is not None else 0
                state.total_len = int(position_ids.max()) + 1 if position_ids is not None else prior + seq_len
                state.new_stat = torch.full((batch, 1), 1.0 / state.total_len, device=ref.device)
            else:
                state.table = (1.0 / lengths.float())[:, None].expand(-1, seq_len).contiguous()
        if decode and seq_len != 1 and plan.kv_mode == "threshold":
            raise UsageError("kv_mode='threshold' decodes one token per step; feed new tokens one at a time")
        self.state = state

    def _end(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Hand the finished forward's records to ``last_state``; layers run outside a forward see no state."""
        state, self.state = self.state, None
        self.last_state = state
        if state is None or state.cache is None:
            return
        if not state.decode:
            self._decode_table = state.table
        elif self._decode_table is not None and state.new_stat is not None:
            self._decode_table = torch.cat([self._decode_table, state.new_stat], dim=1)

    @staticmethod
    def _lengths(mask: Any, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
        if mask is None:
            return torch.full((batch,), seq_len, dtype=torch.long, device=device)
        if mask.dim() != 2:
            raise UsageError("token skipping takes a 2-D attention_mask (1 = token, 0 = right padding)")
        mask = mask.to(torch.long)
        if not torch.equal(mask.cumprod(-1), mask):
            raise UsageError("token skipping needs right-padded batches (tokenizer.padding_side='right'); this "
                             "attention_mask has padding before real tokens")
        lengths = mask.sum(-1)
        if int(lengths.min()) < 1:
            raise UsageError("a sequence of this batch is empty (attention_mask all zeros)")
        return lengths.to(device)

    # ---- decisions ---------------------------------------------------------------------------------
    @property
    def attn_variant(self) -> str:
        return getattr(self.plan.router, "attn_feature", "received")

    def updates_table(self, index: int) -> bool:
        return self.plan.router_mode == "per_block" or index == 0

    def context(self, index: int) -> BlockContext:
        state = self.state
        return BlockContext(index=index, sparsity=self.plan.sparsity[index], lengths=state.lengths,
                            seq_len=state.seq_len, table=state.table, training=self.gate_mode is not None)

    def select(self, index: int) -> Selection:
        selection = self.plan.router.select(self.context(index))
        self.state.records[index] = selection
        return selection

    def decode_keep(self, index: int, hidden: torch.Tensor) -> bool:
        """Strict mode: always compute the new token. Threshold mode: ask the router (p >= threshold)."""
        plan, state = self.plan, self.state
        if plan.kv_mode == "strict" or plan.sparsity[index] == 0.0:
            return True  # strict mode, or a dense block (s_i = 0) computes every token
        ctx = self.context(index)
        features = self._decode_features(ctx, hidden)
        keep = bool(plan.router.decode_keep(ctx, features).all())
        state.decode_keep[index] = keep
        return keep

    def _decode_features(self, ctx: BlockContext, hidden: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, 4) features of the newest token: position 1, its self-attention, its rank, s_i."""
        state = self.state
        if state.new_stat is None:
            return None
        prior = self._decode_table
        if prior is None or prior.shape[0] != hidden.shape[0]:
            prior = torch.empty(hidden.shape[0], 0, device=hidden.device)
        total = max(state.total_len, prior.shape[1] + 1)
        stat = state.new_stat
        scale = float(total) if getattr(self.plan.router, "attn_scale", "raw") == "length" else 1.0
        rank = (prior <= stat).float().sum(1, keepdim=True) / max(total - 1, 1)
        feats = torch.stack([torch.ones_like(stat), stat * scale, rank, torch.full_like(stat, ctx.sparsity)], -1)
        return feats

    def prefill_mask(self, index: int, kept_hidden: torch.Tensor, cache: Any) -> torch.Tensor | None:
        past = cache.get_seq_length(index) if cache is not None else 0
        if self.config._attn_implementation == "sdpa" and past == 0:
            return None  # sdpa's is_causal over the sorted gathered rows
        return causal_additive_mask(kept_hidden.shape[1], past, kept_hidden.dtype, kept_hidden.device)

    def decode_mask(self, index: int, hidden: torch.Tensor, cache: Any) -> torch.Tensor | None:
        queries = hidden.shape[1]
        if queries == 1:
            return None  # one new query sees every cached key of this block
        past = cache.get_seq_length(index) if cache is not None else 0
        return causal_additive_mask(queries, past, hidden.dtype, hidden.device)

    # ---- reporting ---------------------------------------------------------------------------------
    def achieved_sparsity(self) -> list[float] | None:
        """Per block, the share of real tokens the last forward skipped (0 for blocks without a record)."""
        state = self.last_state
        if state is None:
            return None
        total = float(state.lengths.sum())
        return [1.0 - float(state.records[i].n_kept.sum()) / total if i in state.records else 0.0
                for i in range(self.num_layers)]


def attach(model: nn.Module) -> TokenSkipper:
    """Attach (once) and return the model's :class:`TokenSkipper`."""
    existing = getattr(model, "_token_skipper", None)
    if isinstance(existing, TokenSkipper) and existing.wrappers:
        return existing
    skipper = TokenSkipper(model)
    object.__setattr__(model, "_token_skipper", skipper)
    return skipper
