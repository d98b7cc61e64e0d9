"""Token routers: which tokens of a sequence a block computes (FTP §3.1-3.3).

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
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from effrepro.errors import UsageError
from torch import nn

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

    Features per (token t, block i) [RECONSTRUCTION of the exact definitions, spec §1.6]:
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
