"""Token skipping inside any HF Llama-family causal LM, hooked in by wrapping its decoder layers.

:class:`TokenSkipper` replaces each ``model.model.layers[i]`` with a :class:`RoutedDecoderLayer` that
calls the *original* layer (no modelling code is copied) and puts thin gates around its ``self_attn``
and ``mlp`` sub-modules. What happens in a forward pass is set by a :class:`SkipPlan`:

* ``scope="block"`` (default, FTP §3.1/§4.4): per block ``i`` the router picks sorted kept positions
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
``"ste"``: forward 1, gradient of p), so gradients reach the router; evaluation is a pure hard skip.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from effrepro.errors import UsageError
from torch import nn

from token_router_pruning.routers import BlockContext, Router, Selection, check_sparsity

SCOPES = ("block", "mlp_only")
KV_MODES = ("strict", "threshold")
ROUTER_MODES = ("per_block", "one_pass")
GATES = ("soft", "ste")
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
        return self._gathered(hidden_states, selection, call)

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
        if self._skipper.gate_mode == "ste":
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
