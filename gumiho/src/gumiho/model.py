"""The Gumiho draft head: fusion layer ``fc``, a 2-layer serial Transformer and parallel MLP heads.

Structure (spec §1.3, official ``gumiho/model/cnets.py``):

* ``fc``: ``Linear(2H -> H, bias=True)`` over ``[token embedding ; feature]`` (in that order). The same ``fc``
  fuses the Transformer input and the MLP-head input.
* ``layers``: ``num_layers`` LLaMA decoder layers with the target's widths; layer 0 has **no input RMSNorm**,
  there is no final norm, and the output feeds the frozen target LM head directly. The same Transformer is
  run for every serial draft step (a weight-shared autoregressive head).
* ``mlp``: ``mlp_num`` independent heads ``RB5(...RB1(silu(A m + a)))`` with ``RBj(z) = z + silu(B_j z + b_j)``;
  every weight is zero-initialised, biases keep PyTorch's default init, the first block has no residual.
* ``embed_tokens``: a frozen copy of the target's input embedding.

Generalisation for the ablations (``serial_steps`` S): S = 2 is the paper. The MLP input concatenates the fused
inputs of the *last two* serial steps (``min(S, 2) * H`` wide); S = 1 uses only the first; S = 0 is the
all-parallel (Medusa-style) variant whose heads read ``fc([E r ; f_t])``, the fused root, with no Transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftBatch, DraftHead, DraftModelConfig, LossContext
from effrepro.specdec.target import TreeKVCache, additive_mask
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding


@dataclass
class GumihoConfig(DraftModelConfig):
    """The engine's draft config (widths of the target) plus the Gumiho structure knobs."""

    TARGET_KEYS: ClassVar[tuple[str, ...]] = (*DraftModelConfig.TARGET_KEYS, "pad_token_id")

    num_layers: int = 2  # Transformer depth (every released Gumiho config: 2; EAGLE: 1)
    # fc_bias (engine default True): the official Model always builds fc with a bias (spec D5)
    pad_token_id: int | None = None
    serial_steps: int = 2  # draft positions produced by the Transformer (paper: 2)
    mlp_num: int = 5  # parallel MLP heads (paper: 5 -> 7 draft levels in all)
    mlp_res_blocks: int = 5  # residual blocks after the first (no-residual) block

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.serial_steps < 0 or self.mlp_num < 0 or self.serial_steps + self.mlp_num < 1:
            raise UsageError(
                f"serial_steps={self.serial_steps}, mlp_num={self.mlp_num}: need serial_steps >= 0, mlp_num >= 0 "
                "and at least one draft level; e.g. serial_steps=2 mlp_num=5 (the paper)"
            )
        if self.serial_steps > 0 and self.num_layers < 1:
            raise UsageError("serial_steps > 0 needs a Transformer: set num_layers >= 1 (the paper uses 2)")

    @property
    def depth(self) -> int:
        """Number of draft levels beyond the root (paper: 2 serial + 5 MLP = 7)."""
        return self.serial_steps + self.mlp_num

    @property
    def mlp_input_width(self) -> int:
        return max(1, min(self.serial_steps, 2)) * self.hidden_size


class ResBlock(nn.Module):
    """Medusa's residual block ``z + silu(W z + b)`` with a zero-initialised weight."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size, size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class NoResBlock(nn.Module):
    """The first block of a Gumiho MLP head: ``silu(A m + a)``, zero-initialised, no residual path at all."""

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_size, out_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class ParallelMLPs(nn.Module):
    """``mlp_num`` independent heads; all read the same input and none sees another head's token."""

    def __init__(self, in_size: int, hidden_size: int, mlp_num: int, res_blocks: int = 5) -> None:
        super().__init__()
        self.mlp = nn.ModuleList(
            nn.Sequential(NoResBlock(in_size, hidden_size), *(ResBlock(hidden_size) for _ in range(res_blocks)))
            for _ in range(mlp_num)
        )

    def forward(self, x: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """``x [..., in_size]`` -> predicted features ``[..., heads, H]`` of the first ``heads`` (default all)."""
        return torch.stack([head(x) for head in self.mlp[:heads]], dim=-2)


class GumihoDraft(DraftHead):
    """The trainable Gumiho draft (plus its frozen embedding copy). The target LM head is borrowed, not stored.

    A ``effrepro.specdec.DraftHead``: ``compute_loss`` is Gumiho's loss (``gumiho.loss``); its proposer comes from
    :func:`gumiho.proposer.make_proposer`.
    """

    def __init__(self, config: GumihoConfig) -> None:
        super().__init__()
        self.config = config
        llama = config.llama_config()
        hidden = config.hidden_size
        self.hidden_size, self.vocab_size = hidden, config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden, config.pad_token_id)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * hidden, hidden, bias=config.fc_bias)
        self.layers = nn.ModuleList(LlamaDecoderLayer(llama, i) for i in range(config.num_layers))
        if config.num_layers:
            # Layer 0 reads the fc output directly: no input RMSNorm (official `if self.index != 0`).
            self.layers[0].input_layernorm = nn.Identity()
            self.rotary_emb = LlamaRotaryEmbedding(llama)
        self.mlp = ParallelMLPs(config.mlp_input_width, hidden, config.mlp_num, config.mlp_res_blocks)

    # ----- building blocks shared by training and the proposer -----
    def fuse(self, token_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``fc([E x ; f])``: the fused input of one draft position."""
        embeds = self.embed_tokens(token_ids).to(features.dtype)
        return self.fc(torch.cat([embeds, features], dim=-1))

    def transformer(
        self, fused: torch.Tensor, position_ids: torch.Tensor, allowed: torch.Tensor, kv: TreeKVCache | None = None
    ) -> torch.Tensor:
        """Run the decoder layers on ``fused [B, q, H]``.

        ``allowed`` is a boolean mask ``[B or 1, q, kv_len]`` over all keys (cached ones first) that says which
        keys each query may attend to; ``kv`` (optional) is extended in place. Returns ``h [B, q, H]``.
        """
        hidden = fused
        position_embeddings = self.rotary_emb(hidden, position_ids)
        bias = additive_mask(allowed.to(hidden.device), hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=bias, position_ids=position_ids, past_key_values=kv,
                           position_embeddings=position_embeddings)
        return hidden

    def mlp_input(self, fused_levels: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate the fused inputs of the last ``min(S, 2)`` serial levels (or the fused root for S = 0)."""
        width = max(1, min(self.config.serial_steps, 2))
        return torch.cat(fused_levels[-width:], dim=-1)

    # ----- teacher-forced training pass (spec §1.4) -----
    def train_forward(
        self, features: torch.Tensor, next_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One causal pass over whole sequences.

        ``features [B, L, H]`` = ``f_t`` (noised), ``next_ids [B, L]`` = ``x_{t+1}``, ``attention_mask [B, L]``
        (1 = real token). Returns the Transformer outputs ``h [B, L, H]`` (``h_t`` regresses ``f_{t+1}``; None when
        S = 0) and the MLP predictions ``z [B, L, mlp_num, H]`` where head i at t regresses ``f_{t+S+1+i}``.
        """
        batch, length, _ = features.shape
        fused_root = self.fuse(next_ids, features)  # u_t = fc([E x_{t+1} ; f_t])
        if self.config.serial_steps == 0:
            return None, self.mlp(fused_root)
        keep = torch.ones(batch, length, dtype=torch.bool, device=features.device)
        if attention_mask is not None:
            keep = attention_mask.bool()
        causal = torch.ones(length, length, dtype=torch.bool, device=features.device).tril()
        allowed = causal[None] & keep[:, None, :]
        position_ids = torch.arange(length, device=features.device)[None].expand(batch, -1)
        hidden = self.transformer(fused_root, position_ids, allowed)
        # g_t = fc([E x_{t+2} ; h_t]): the fused input of the next serial step (roll wraps; those t are unused).
        fused = self.fuse(torch.roll(next_ids, -1, dims=1), hidden)
        steps = self.config.serial_steps
        # The last two serial steps of a round rooted at x_{t+1} are teacher-forced positions t+S-2 and t+S-1.
        levels = [torch.roll(fused, -(steps - 2 + k), dims=1) for k in range(2) if steps - 2 + k >= 0]
        return hidden, self.mlp(self.mlp_input(levels))

    # ----- the engine's plug-in hooks -----
    def compute_loss(self, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
        from gumiho.loss import LossWeights, gumiho_loss

        return gumiho_loss(self, batch, ctx.lm_head, ctx.epoch, LossWeights.from_dict(ctx.weights))

    @torch.no_grad()
    def eval_metrics(self, batch: DraftBatch, ctx: LossContext) -> dict[str, float]:
        """Held-out loss parts and the teacher-forced top-1 agreement of every head with the target's token."""
        from gumiho.loss import LossWeights, gumiho_loss

        out = gumiho_loss(self, batch, ctx.lm_head, ctx.epoch, LossWeights.from_dict(ctx.weights), accuracy=True)
        return {k: float(v) for k, v in out.items()}


# ----- official checkpoint keys (released `amd/Gumiho-*` pytorch_model.bin) -----
def official_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the official keys to ours: the official loader maps ``mlp.*`` to ``mlp.mlp.*``; the rest match."""
    return {(f"mlp.{key}" if key.startswith("mlp.") else key): value for key, value in state_dict.items()}


def load_official_state_dict(draft: GumihoDraft, state_dict: dict[str, torch.Tensor]) -> None:
    """Strictly load an official Gumiho checkpoint; a clear error names missing / unexpected keys."""
    renamed = official_to_ours(state_dict)
    missing, unexpected = draft.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"checkpoint does not match this Gumiho config (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); build the draft with the target it was trained for"
        )


def head_from_checkpoint(state: dict[str, Any], embed_weight: torch.Tensor) -> GumihoDraft:
    """Rebuild a trained draft from the ``head.pt`` that ``effrepro.specdec.train_head`` wrote."""
    if state.get("method") not in (None, "GumihoDraft") or "config" not in state or "state_dict" not in state:
        raise UsageError(f"not a Gumiho head checkpoint (method {state.get('method')!r}); pass the head.pt that "
                         "`gumiho train` wrote")
    draft = GumihoDraft(GumihoConfig(**state["config"]))
    draft.restore(state["state_dict"], embed_weight)
    return draft.eval()


def count_parameters(draft: GumihoDraft) -> dict[str, int]:
    """Trainable parameters by part, plus the frozen embedding copy (spec §2 table)."""
    def total(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {"transformer": total(draft.layers), "fc": total(draft.fc), "mlp": total(draft.mlp)}
    parts["trainable"] = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    parts["frozen_embedding"] = draft.embed_tokens.weight.numel()
    return parts
