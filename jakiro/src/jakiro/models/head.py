"""The one-layer Jakiro / Jakiro* draft head (spec §1.2).

For draft position t with input pair ``(f_t, x_{t+1})``::

    z = fc([Emb x_{t+1} ; f_t])         fc: Linear(2H -> H, bias configurable), embedding first, no activation
    h = z + Attn(z)                     LLaMA attention with RoPE / GQA; layer 0 has NO input RMSNorm
    g = h + MoE(RMSNorm_post(h))        no final norm: the target's frozen lm_head reads g directly

``MoE`` is :class:`~jakiro.models.moe.JakiroMoE` (variant ``"jakiro"``) or
:class:`~jakiro.models.moe.JakiroStarMoE` (variant ``"star"``). With two branches the output is stacked
``[2, B, S, H]``: the attention residual ``h`` is shared and each branch adds its own FFN output.

Parameter names follow the official checkpoints (``fc.*``, ``layers.0.self_attn.{q,k,v,o}_proj``,
``layers.0.post_attention_layernorm.weight``, ``layers.0.mlp_moe.gate.weight``,
``layers.0.mlp_moe.experts.{0,1}.*``) so released ``Hhaiduo/*`` drafts load with :func:`load_official_state_dict`.
The embedding is a frozen copy of the target's and is never saved (official saver drops "embed"/"head").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftBatch, DraftHead, DraftModelConfig, LossContext
from effrepro.specdec.protocol import D2T_KEY
from effrepro.specdec.target import TreeKVCache, additive_mask
from jakiro.models.moe import JakiroMoE, JakiroStarMoE
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding

Variant = Literal["jakiro", "star"]
Branches = Literal["moe", "both", "split"]


@dataclass
class JakiroConfig(DraftModelConfig):
    """The engine's draft config (widths copied from the target) plus Jakiro's knobs; one decoder layer."""

    TARGET_KEYS: ClassVar[tuple[str, ...]] = (*DraftModelConfig.TARGET_KEYS, "pad_token_id")

    pad_token_id: int | None = None
    variant: str = "jakiro"  # "jakiro" (4-logit router, contrastive branch) or "star" (Jakiro*)
    # fc_bias (engine default True): official training always uses a bias; the LLaMA3-8B config says false
    expert_intermediate_size: int | None = None  # None: H for Jakiro (official override), intermediate for Jakiro*

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in ("jakiro", "star"):
            raise UsageError(f"variant={self.variant!r}; use 'jakiro' or 'star' (Jakiro*)")
        if self.num_layers != 1:
            raise UsageError(f"num_layers={self.num_layers}; the Jakiro draft has one decoder layer")

    @property
    def expert_width(self) -> int:
        if self.expert_intermediate_size:
            return self.expert_intermediate_size
        return self.hidden_size if self.variant == "jakiro" else self.intermediate_size


class JakiroDecoderLayer(nn.Module):
    """Attention (no input norm: layer index 0) + post-attention RMSNorm + the MoE block."""

    def __init__(self, config: JakiroConfig) -> None:
        super().__init__()
        llama = config.llama_config()
        self.self_attn = LlamaAttention(llama, layer_idx=0)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.variant == "jakiro":
            self.mlp_moe: nn.Module = JakiroMoE(config.hidden_size, config.expert_width)
        else:
            self.mlp_moe = JakiroStarMoE(config.hidden_size, config.expert_width)
        self.variant = config.variant

    def ffn(self, u: torch.Tensor, branches: Branches) -> torch.Tensor:
        if self.variant == "jakiro":
            if branches == "split":
                raise ValueError("branches='split' is the Jakiro* inference mode; Jakiro uses 'moe' or 'both'")
            return self.mlp_moe(u, branches=branches)
        if branches == "both":
            raise ValueError("branches='both' is Jakiro's contrastive mode; Jakiro* uses 'moe' or 'split'")
        return self.mlp_moe(u, split=branches == "split")


class JakiroDraft(DraftHead):
    """The trainable draft (plus its frozen embedding copy); the target's lm_head is borrowed, not stored.

    Plugs into ``effrepro.specdec``: ``train_forward`` / ``compute_loss`` (the trainer hook); its proposers come from
    :func:`jakiro.proposer.make_proposer`.
    """

    def __init__(self, config: JakiroConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.hidden_size, self.vocab_size = hidden, config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden, config.pad_token_id)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * hidden, hidden, bias=config.fc_bias)
        self.layers = nn.ModuleList([JakiroDecoderLayer(config)])
        self.rotary_emb = LlamaRotaryEmbedding(config.llama_config())

    @property
    def layer(self) -> JakiroDecoderLayer:
        return self.layers[0]

    def forward(
        self,
        features: torch.Tensor,
        token_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        kv: TreeKVCache | None = None,
        branches: Branches = "moe",
        last_only: bool = False,
    ) -> torch.Tensor:
        """Draft outputs ``g`` for ``q`` new positions.

        ``features [B, q, H]`` (f_t), ``token_ids [B, q]`` (x_{t+1}), ``position_ids [B or 1, q]``, ``allowed`` a
        boolean ``[B or 1, q, kv_len]`` over all keys (cached ones first, then the q new ones). ``kv`` is extended in
        place. ``branches``: ``"moe"`` -> ``[B, q, H]``; ``"both"`` (Jakiro) / ``"split"`` (Jakiro*) ->
        ``[2, B, q, H]``. ``last_only`` is the official ``first_forward`` shortcut: the FFN runs on the last position
        only and only that position is returned (valid because the draft has a single layer and the KV cache holds
        what later steps need, which comes before the FFN).
        """
        embeds = self.embed_tokens(token_ids).to(features.dtype)
        z = self.fc(torch.cat([embeds, features], dim=-1))
        position_embeddings = self.rotary_emb(z, position_ids)
        attn, _ = self.layer.self_attn(z, position_embeddings=position_embeddings,
                                       attention_mask=additive_mask(allowed.to(z.device), z.dtype),
                                       past_key_values=kv)
        h = z + attn
        if last_only:
            h = h[:, -1:]
        return h + self.layer.ffn(self.layer.post_attention_layernorm(h), branches)

    def train_forward(
        self, features: torch.Tensor, next_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        contrastive: bool = True,
    ) -> torch.Tensor:
        """Teacher-forced causal pass over whole sequences.

        ``features [B, L, H]`` = f_t (noised), ``next_ids [B, L]`` = x_{t+1}. Jakiro returns both branches
        ``[2, B, L, H]`` (the official training block; ``contrastive=False``: branch 0 only, ``[B, L, H]``, for the
        ablation whose contrastive loss weight is 0); Jakiro* returns the weighted mixture ``[B, L, H]``.
        """
        batch, length, _ = features.shape
        keep = torch.ones(batch, length, dtype=torch.bool, device=features.device)
        if attention_mask is not None:
            keep = attention_mask.bool()
        causal = torch.ones(length, length, dtype=torch.bool, device=features.device).tril()
        allowed = causal[None] & keep[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=features.device)[None]  # no empty rows
        position_ids = torch.arange(length, device=features.device)[None].expand(batch, -1)
        branches: Branches = "both" if self.config.variant == "jakiro" and contrastive else "moe"
        return self(features, next_ids, position_ids, allowed, branches=branches)

    def compute_loss(self, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
        """The trainer hook: ``v_w (L_reg0 + c L_reg1) + p_w (L_cls0 + c L_cls1)`` (see :mod:`jakiro.loss`)."""
        from jakiro.loss import jakiro_loss

        const = float(ctx.weights.get("const", 0.5)) if self.config.variant == "jakiro" else 0.0
        pred = self.train_forward(batch.features, batch.next_ids, batch.attention_mask, contrastive=const != 0)
        return jakiro_loss(pred, batch, ctx.lm_head, ctx.weights)

    @torch.no_grad()
    def eval_metrics(self, batch: DraftBatch, ctx: LossContext) -> dict[str, float]:
        """Held-out loss parts and the top-1 agreement of each branch with the target's argmax token."""
        from jakiro.loss import jakiro_loss

        const = float(ctx.weights.get("const", 0.5)) if self.config.variant == "jakiro" else 0.0
        pred = self.train_forward(batch.features, batch.next_ids, batch.attention_mask, contrastive=const != 0)
        return {k: float(v) for k, v in jakiro_loss(pred, batch, ctx.lm_head, ctx.weights, True).items()}


def causal_allowed(query_len: int, past_len: int, device: torch.device | None = None) -> torch.Tensor:
    """``[1, q, past + q]``: every past key plus the causal part of the new ones."""
    new = torch.ones(query_len, query_len, dtype=torch.bool, device=device).tril()
    past = torch.ones(query_len, past_len, dtype=torch.bool, device=device)
    return torch.cat([past, new], dim=-1)[None]


def official_state_dict_keys(draft: JakiroDraft) -> list[str]:
    """The keys a checkpoint must provide (everything but the frozen embedding and the rotary buffers)."""
    return [k for k in draft.state_dict() if "embed" not in k and "rotary" not in k]


def load_official_state_dict(draft: JakiroDraft, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a Jakiro / Jakiro* draft checkpoint (ours or the released ``Hhaiduo/*``), ignoring embedding keys.

    The official loader uses ``strict=False``; here every draft key must be present and shaped right, and only
    ``embed_tokens`` may be absent (it is a copy of the target's), so a checkpoint for a different target or for
    the other variant is a clear error instead of a silently half-loaded model.
    """
    state = {k: v for k, v in state_dict.items() if "embed" not in k and "rotary" not in k}
    if D2T_KEY in state:  # a head trained with a reduced draft vocabulary brings its map
        draft.set_draft_vocab(state[D2T_KEY])
    expected = set(official_state_dict_keys(draft))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UsageError(
            f"draft checkpoint does not match this {draft.config.variant} config (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}); build the draft with the variant and target it was trained for"
        )
    own = draft.state_dict()
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise UsageError(f"draft checkpoint shapes differ from this config at {wrong[:4]}; wrong target?")
    draft.load_state_dict(state, strict=False)


def count_parameters(draft: JakiroDraft) -> dict[str, int]:
    """Trainable parameters by part (spec §2 breakdown) plus the frozen embedding copy."""
    def total(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    layer = draft.layer
    parts = {
        "fc": total(draft.fc), "attention": total(layer.self_attn),
        "post_attention_norm": total(layer.post_attention_layernorm),
        "router": total(layer.mlp_moe.gate), "experts": total(layer.mlp_moe.experts),
    }
    parts["trainable"] = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    parts["frozen_embedding"] = draft.embed_tokens.weight.numel()
    return parts
