"""Jakiro: speculative decoding with a Mixture-of-Experts draft head and contrastive parallel drafting.

The paper's method, as it plugs into the shared engine :mod:`effrepro.specdec` (target adapter, tree,
verification, generate loop, trainer): the draft head (:class:`JakiroConfig`, :class:`JakiroDraft`) with its MoE
blocks (:class:`JakiroMoE`, :class:`JakiroStarMoE`), the training objective (:func:`jakiro_loss`), the hybrid
drafting that takes the last tree level from the contrastive branch (:class:`JakiroProposer`,
:func:`make_proposer`) and the Jakiro* variant's static-tree proposer and verifier (:class:`StarProposer`,
:func:`star_sample_verify`).

**The head**: one layer, Jakiro or Jakiro*.

For draft position t with input pair ``(f_t, x_{t+1})``::

    z = fc([Emb x_{t+1} ; f_t])         fc: Linear(2H -> H, bias configurable), embedding first, no activation
    h = z + Attn(z)                     LLaMA attention with RoPE / GQA; layer 0 has NO input RMSNorm
    g = h + MoE(RMSNorm_post(h))        no final norm: the target's frozen lm_head reads g directly

``MoE`` is :class:`JakiroMoE` (variant ``"jakiro"``) or
:class:`JakiroStarMoE` (variant ``"star"``). With two branches the output is stacked
``[2, B, S, H]``: the attention residual ``h`` is shared and each branch adds its own FFN output.

Parameter names follow the official checkpoints (``fc.*``, ``layers.0.self_attn.{q,k,v,o}_proj``,
``layers.0.post_attention_layernorm.weight``, ``layers.0.mlp_moe.gate.weight``,
``layers.0.mlp_moe.experts.{0,1}.*``) so released ``Hhaiduo/*`` drafts load with :func:`load_official_state_dict`.
The embedding is a frozen copy of the target's and is never saved (official saver drops "embed"/"head").

**The MoE feed-forward blocks**: Jakiro (4-logit router, MoE + contrastive branch) and
Jakiro* (2-logit router, per-expert outputs).

Jakiro (official ``jakiro/model/cnets.py``: ``MixtralSparseMoeBlock`` / ``_train``). For one token
vector ``u`` and router logits ``r = W_g u`` (4 logits, no bias)::

    (w0, w1) = softmax(r0, r1)          y0 = E_0(u), y1 = E_1(u)   (SwiGLU experts, intermediate size = H)
    (v0, v1) = softmax(r2, r3)
    m_moe = w0 y0 + w1 y1               -- every step: a dense soft mixture ("top-2 of 2")
    m_con = s (v0 y0 - v1 y1), s = +1 if r2 > r3 else -1
          = (weight of the preferred expert)(its output) - (weight of the other)(its output)

The official code has one class for inference (returns ``m_moe``, or ``[m_moe, m_con]`` stacked on the
penultimate draft step) and one for training (always the stack). Both have the same parameters; here one class
covers both through ``branches`` so the state dicts are interchangeable by construction.

Jakiro* (official ``jakiro_star/model/cnets.py``): two GELU MLP experts (H -> intermediate -> H,
intermediate = the target's ``intermediate_size``) and a 2-logit router. Training uses the weighted mixture
``w_win y_win + w_lose y_lose`` (= ``w0 y0 + w1 y1``); inference keeps the *unweighted* outputs of the preferred
and the other expert separately, ``[y_win, y_lose]``. That train/inference scale mismatch is the official
behaviour and is kept (it is what the released heads were trained and evaluated with).

**The training objective** (official ``jakiro/train/main.py``), on the engine's loss pieces.

The engine's ``DraftCollator`` builds the official pairing (draft input ``(f_t + noise, x_{t+1})``, target
``T_t = f_{t+1}``, mask ``M_t`` with the last real position zeroed, uniform noise ``(U - 0.5) * 0.2 * 512 / L``
on the inputs only). ``effrepro.specdec.feature_losses(pred, batch, lm_head, shift)`` gives, for a prediction at
t against ``T_{t+shift}`` under ``M_{t+shift}``::

    L_reg = sum_t M mean_d SmoothL1(pred_t - T_{t+shift}) / (sum M + 1e-5)
    L_cls = -sum_t M sum_v P(v) log softmax(W_lm pred_t)(v) / (sum M + 1e-5),   P = softmax(W_lm T_{t+shift})

Jakiro uses it twice::

    branch 0 (MoE)          shift 0: at t -> f_{t+1}, mask M_t
    branch 1 (contrastive)  shift 1: at t -> f_{t+2}, mask M_{t+1}     (the +1 shift: one token further)
    L = v_w (L_reg0 + c L_reg1) + p_w (L_cls0 + c L_cls1),   v_w = 1.0, p_w = 0.1, c = const = 0.5

Jakiro* and the no-contrastive ablation (``const = 0``) use branch 0 only. No router load-balancing loss.

Speed: only rows with ``M > 0`` (assistant tokens, about 40 % of the ShareGPT tokens) reach the vocabulary-sized
LM head here (:func:`masked_feature_losses`); unmasked rows contribute exactly 0 to both sums, so the value is the
official one (tested against ``feature_losses`` on the full batch) at a fraction of the cost on CPU.

**Jakiro's hybrid drafting** (official ``topK_genrate``): EAGLE-2's dynamic tree whose last level comes
from the contrastive branch of the penultimate forward, so ``depth + 1`` levels cost ``depth`` draft forwards.

One round, with ``K = top_k`` and ``D = depth``::

    catch-up  forward over the new (f_t, x_{t+1}) pairs (first_forward shortcut) -> g_root -> level 1: top-K
    i = 0 .. D-1 (level i + 2):
        i <  D-2  forward the K kept nodes (MoE branch)                -> K x K children
        i == D-2  forward with both branches: MoE -> this level; contrastive (two steps ahead) kept for the next
        i == D-1  no forward: children from the contrastive rows
        keep the K best cumulative scores of the level for the next step
    global re-ranking of every level's candidates (engine ``tree_from_levels``)

``last_level="forward"`` runs a normal forward for the last level instead (EAGLE-2's schedule: ``D + 1`` forwards);
that is the Jakiro-without-contrastive-branch ablation.

Last-level row alignment (an official quirk: acceptance changes, correctness does not).
The penultimate forward reads the K nodes kept at level
D-1; its contrastive row r predicts the *grandchildren* of input r. The official code attaches row j under the j-th
node kept at level D, whose parent is input ``par_row[j]``, generally not j (``alignment="official"``, the
default: it matches the released checkpoints). ``alignment="parent"`` uses row ``par_row[j]``, the prediction made
for that node's actual parent. Verification stays lossless either way; only acceptance changes.

**Jakiro***: per-expert candidates on EAGLE-1's static tree (official ``jakiro_star/``).

Drafting. The draft's Jakiro* block returns the *unweighted* outputs of the router-preferred and the other expert
``[g_win, g_lose]`` (``JakiroStarMoE(split=True)``). At every node that has children in the static tree, both
experts' logits are processed (temperature / top-p / top-k), concatenated into one ``2V`` vector and
``pi = softmax([l_win ; l_lose])``; the node's ``c`` children are ``c`` draws from ``pi`` without replacement,
folded back to token ids (draw ``d`` -> token ``d mod V``; a token can appear twice, once per expert). Only the
preferred expert's feature ``g_win`` feeds the next level. The tree is the official modified ``mc_sim_7b_63``
(26 nodes, depth 6: 4, 8, 8, 3, 2, 1 nodes per level); one draft forward per level that has children.

Verification: EAGLE-1's recursive rejection sampling over a node's children in draw order: child ``x`` with
proposal ``q_k`` is accepted with probability ``min(1, p(x) / q_k(x))``; on rejection ``p <- norm(max(0, p - q_k))``;
when every child is rejected the bonus token is drawn from the residual ``p``, at a leaf from the target.

* ``rule="corrected"`` (default): ``q_k`` is the true distribution of the k-th draw given the earlier draws of the
  same node (the ``2V`` mixture minus the drawn entries, renormalised, folded to tokens). That makes each child an
  exact proposal, so the output is distributed as the target (tested by enumeration). The leaf bonus uses the
  processed target distribution.
* ``rule="official"``: the literal released rule, kept for fidelity: (i) the recorded draft probability of a child
  is gathered at ``token + V`` after folding, i.e. from the *second* expert's half, then divided by one minus the
  running sum of those values and clipped to [0, 1]; a child with value 0 is skipped; (ii) the rejection residual is
  ``softmax(mean_e softmax(l_e))`` (a softmax of probabilities, nearly uniform) with the earlier siblings' tokens
  zeroed and renormalised; (iii) a token already tried at this node is skipped; (iv) the bonus after a leaf comes
  from the raw (unprocessed) target softmax. The output is **not** exactly the target distribution (measured TV in
  the tests and the README).

Temperature 0 is unsupported by the official code (its sampler always calls the logits processor). Here T = 0 is an
extension: a node's children are the first ``c`` distinct tokens of the ``2V`` logits in descending order, checked
by the engine's greedy verifier (lossless for any tree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.specdec import (
    DraftBatch,
    DraftHead,
    DraftLevel,
    DraftModelConfig,
    DraftTree,
    LevelProposer,
    LossContext,
    TreeConfig,
    ancestor_mask,
    feature_losses,
    topk_accuracy,
    tree_from_parents,
)
from effrepro.specdec.protocol import D2T_KEY
from effrepro.specdec.target import TreeKVCache, additive_mask
from effrepro.specdec.verify import SamplingConfig, Verdict, greedy_verify, target_probs
from effrepro.specdec.vocab import scatter_full
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding

# ===== the MoE blocks ===============================================================================================
MoEBranches = Literal["moe", "both"]


class SwiGLUExpert(nn.Module):
    """``down(silu(gate(u)) * up(u))``; Jakiro overrides the intermediate size to the hidden size."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluExpert(nn.Module):
    """Jakiro*'s GPT-NeoX-style expert ``proj(gelu(fc(u)))`` (official ``GptNeoxMLP``; parameter names kept)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class JakiroMoE(nn.Module):
    """Two SwiGLU experts and a 4-logit router (official ``mlp_moe``: ``gate`` + ``experts.{0,1}``).

    ``branches="moe"`` returns ``m_moe [..., H]``; ``branches="both"`` returns ``[m_moe, m_con]`` stacked on a new
    leading dim, ``[2, ..., H]`` (the penultimate inference step and every training step).
    Only E = 2 is defined: the official E > 2 path is internally inconsistent and no config uses it.
    """

    num_experts = 2

    def __init__(self, hidden_size: int, expert_intermediate_size: int | None = None) -> None:
        super().__init__()
        inner = expert_intermediate_size or hidden_size
        self.gate = nn.Linear(hidden_size, self.num_experts + 2, bias=False)
        self.experts = nn.ModuleList(SwiGLUExpert(hidden_size, inner) for _ in range(self.num_experts))

    def forward(self, u: torch.Tensor, branches: MoEBranches = "moe") -> torch.Tensor:
        router = self.gate(u)
        y0, y1 = self.experts[0](u), self.experts[1](u)
        w = F.softmax(router[..., :2], dim=-1, dtype=u.dtype)
        m_moe = w[..., :1] * y0 + w[..., 1:] * y1
        if branches == "moe":
            return m_moe
        if branches != "both":
            raise ValueError(f"branches={branches!r}; use 'moe' or 'both'")
        v = F.softmax(router[..., 2:], dim=-1, dtype=u.dtype)
        # sign(r2 - r3) with ties -> -1, exactly the official strict ``r2 > r3`` test
        sign = torch.where(router[..., 2:3] > router[..., 3:4], 1.0, -1.0).to(u.dtype)
        m_con = sign * (v[..., :1] * y0 - v[..., 1:] * y1)
        return torch.stack([m_moe, m_con], dim=0)


class JakiroStarMoE(nn.Module):
    """Two GELU experts and a 2-logit router (Jakiro*).

    ``split=False`` (training): the weighted mixture ``w0 y0 + w1 y1`` with ``w = softmax(r0, r1)``.
    ``split=True`` (inference): ``[y_win, y_lose]`` stacked, ``[2, ..., H]``, *unweighted*; the winner is the
    expert with the larger router logit (ties -> expert 1, the official strict ``r0 > r1``).
    """

    num_experts = 2

    def __init__(self, hidden_size: int, expert_intermediate_size: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(GeluExpert(hidden_size, expert_intermediate_size) for _ in range(2))

    def forward(self, u: torch.Tensor, split: bool = False) -> torch.Tensor:
        router = self.gate(u)
        y0, y1 = self.experts[0](u), self.experts[1](u)
        if not split:
            w = F.softmax(router, dim=-1, dtype=u.dtype)
            return w[..., :1] * y0 + w[..., 1:] * y1
        first_wins = (router[..., :1] > router[..., 1:2])
        y_win = torch.where(first_wins, y0, y1)
        y_lose = torch.where(first_wins, y1, y0)
        return torch.stack([y_win, y_lose], dim=0)


# ===== the head =====================================================================================================
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
    :func:`make_proposer`.
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
        """The trainer hook: ``v_w (L_reg0 + c L_reg1) + p_w (L_cls0 + c L_cls1)`` (see :func:`jakiro_loss`)."""
        const = float(ctx.weights.get("const", 0.5)) if self.config.variant == "jakiro" else 0.0
        pred = self.train_forward(batch.features, batch.next_ids, batch.attention_mask, contrastive=const != 0)
        return jakiro_loss(pred, batch, ctx.lm_head, ctx.weights)

    @torch.no_grad()
    def eval_metrics(self, batch: DraftBatch, ctx: LossContext) -> dict[str, float]:
        """Held-out loss parts and the top-1 agreement of each branch with the target's argmax token."""
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
    """Trainable parameters by part (as the paper breaks them down) plus the frozen embedding copy."""
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


# ===== the training objective =======================================================================================
DEFAULT_WEIGHTS = {"v_w": 1.0, "p_w": 0.1, "const": 0.5}


def masked_feature_losses(
    pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, shift: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``feature_losses(pred, batch, lm_head, shift)`` computed on the supervised rows only (same value)."""
    length = batch.target_features.shape[1]
    keep = batch.loss_mask[:, shift:] > 0
    rows = pred[:, : length - shift][keep][None]  # [1, M, H]
    targets = batch.target_features[:, shift:][keep][None]
    weights = batch.loss_mask[:, shift:][keep][None]
    ids = torch.zeros(weights.shape, dtype=torch.long, device=weights.device)
    compact = DraftBatch(input_ids=ids, features=targets, next_ids=ids, target_features=targets, loss_mask=weights,
                         attention_mask=torch.ones_like(ids))
    if rows.shape[1] == 0:
        zero = pred.sum() * 0.0  # keeps the graph (and DDP) connected
        return zero, zero
    return feature_losses(rows, compact, lm_head, shift=0)


def eagle_masked_loss(head: DraftHead, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
    """The engine's EAGLE loss (``v_w L_reg + p_w L_cls``) via :func:`masked_feature_losses`: a ``train_head``
    ``loss_fn`` for the EAGLE-2 baseline so every head pays the same LM-head cost per supervised token."""
    pred = head.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    reg, cls = masked_feature_losses(pred, batch, ctx.lm_head, 0)
    loss = ctx.weights.get("v_w", 1.0) * reg + ctx.weights.get("p_w", 0.1) * cls
    return {"loss": loss, "reg": reg.detach(), "cls": cls.detach()}


def jakiro_loss(
    pred: torch.Tensor, batch: DraftBatch, lm_head: torch.Tensor, weights: Mapping[str, float] | None = None,
    with_accuracy: bool = False,
) -> dict[str, torch.Tensor]:
    """The official objective. ``pred`` is ``[2, B, L, H]`` (both branches) or ``[B, L, H]`` (branch 0 only).

    Returns ``loss`` (back-propagated) and the detached parts ``reg0, cls0`` (+ ``reg1, cls1``); with
    ``with_accuracy`` also the top-1 agreement with the target's argmax token ``acc0`` (+ ``acc1``).
    """
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    two_branches = pred.dim() == 4
    moe = pred[0] if two_branches else pred
    reg0, cls0 = masked_feature_losses(moe, batch, lm_head, shift=0)
    out = {"reg0": reg0.detach(), "cls0": cls0.detach()}
    reg, cls = reg0, cls0
    if two_branches and w["const"] != 0:
        reg1, cls1 = masked_feature_losses(pred[1], batch, lm_head, shift=1)
        reg, cls = reg0 + w["const"] * reg1, cls0 + w["const"] * cls1
        out.update(reg1=reg1.detach(), cls1=cls1.detach())
    if with_accuracy:
        hits, count = topk_accuracy(moe.detach(), batch, lm_head, k=1, shift=0)
        out["acc0"] = torch.tensor(hits / max(count, 1.0))
        if two_branches:
            hits, count = topk_accuracy(pred[1].detach(), batch, lm_head, k=1, shift=1)
            out["acc1"] = torch.tensor(hits / max(count, 1.0))
    out["loss"] = w["v_w"] * reg + w["p_w"] * cls
    return out


# ===== Jakiro*: the static tree, its proposer and verifier ==========================================================
# Official jakiro_star/model/choices.py: mc_sim_7b_63 modified to depth 6 (26 nodes + the root).
JAKIRO_STAR_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 0),
)
RULES = ("corrected", "official")


@dataclass
class StaticTree:
    """A static tree in node order (root 0, level order, children of a node in draw order)."""

    parents: list[int]  # parent node of every node, -1 for the root
    draw_index: list[int]  # which draw of its parent a node is (0 = first)
    depth: list[int]

    @classmethod
    def from_choices(cls, choices: tuple[tuple[int, ...], ...] | list[list[int]]) -> StaticTree:
        paths = sorted((tuple(c) for c in choices), key=lambda c: (len(c), c))
        index = {(): 0} | {path: i + 1 for i, path in enumerate(paths)}
        parents, draws, depth = [-1], [0], [0]
        for path in paths:
            if path[:-1] not in index:
                raise UsageError(f"static tree path {list(path)} has no parent path {list(path[:-1])}")
            parents.append(index[path[:-1]])
            draws.append(path[-1])
            depth.append(len(path))
        tree = cls(parents, draws, depth)
        for node in range(len(parents)):
            if [draws[c] for c in tree.children(node)] != list(range(len(tree.children(node)))):
                raise UsageError(f"children of static-tree node {node} must be the draws 0..c-1")
        return tree

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def expandable(self, level: int) -> list[int]:
        """Nodes at ``level`` that have children (the ones the draft must run on)."""
        return [v for v in range(self.size) if self.depth[v] == level and v in self.parents]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depth)


def fold(draws: torch.Tensor, vocab: int) -> torch.Tensor:
    """2V draw indices -> token ids (official ``where(d >= V, d - V, d)``)."""
    return torch.where(draws >= vocab, draws - vocab, draws)


def draw_children(pi: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` draws without replacement from the ``2V`` mixture ``pi`` (official ``sample_moe``)."""
    return torch.multinomial(pi, count, replacement=False, generator=generator)


def corrected_proposals(pi: torch.Tensor, draws: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[c, V]``: the exact token distribution of the k-th draw given draws ``0..k-1`` of the same node."""
    out = []
    remaining = pi.clone()
    for draw in draws.tolist():
        q = remaining / remaining.sum()
        out.append(q[:vocab] + q[vocab:])
        remaining[draw] = 0.0
    return torch.stack(out)


def official_child_probs(pi: torch.Tensor, draws: torch.Tensor, vocab: int) -> torch.Tensor:
    """The released recorded q of each child: ``pi[fold(d) + V] / (1 - cumsum)`` clipped to [0, 1]."""
    gathered = pi[fold(draws, vocab) + vocab]
    before = torch.cumsum(gathered, 0) - gathered
    q = gathered / (1 - before)
    q = torch.where(torch.isfinite(q), q, torch.full_like(q, -1.0))
    return q.clamp(0.0, 1.0)


def official_residual(expert_logits: torch.Tensor) -> torch.Tensor:
    """The released rejection residual ``softmax(mean_e softmax(l_e))`` over V (a softmax of probabilities)."""
    return torch.softmax(torch.softmax(expert_logits, dim=-1).mean(0), dim=-1)


class StarProposer:
    """Jakiro* drafting for one sequence (engine ``Proposer`` protocol). The tree's ``extras`` carry what the
    Jakiro* verifier needs: per expanded node the ``2V`` mixture, the draws and the per-expert processed logits."""

    def __init__(self, draft: JakiroDraft, lm_head: torch.Tensor, sampling: SamplingConfig | None = None,
                 rule: str = "corrected", tree_choices: Any = JAKIRO_STAR_TREE, seed: int = 0,
                 max_length: int = 4096, **unused: Any) -> None:
        if unused:
            raise UsageError(f"unknown Jakiro* proposer option(s) {sorted(unused)}; "
                             "known: sampling, rule, tree_choices, seed, max_length")
        if draft.config.variant != "star":
            raise UsageError("StarProposer needs a Jakiro* draft (variant 'star')")
        if rule not in RULES:
            raise UsageError(f"rule={rule!r}; use one of {RULES}")
        self.draft = draft
        self.lm_head = draft.draft_lm_head(lm_head)  # [K, H] with a reduced draft vocabulary, else [V, H]
        self.sampling = sampling or SamplingConfig(temperature=1.0)
        self.rule, self.seed = rule, seed
        self.static = StaticTree.from_choices(tree_choices)
        self.total_tokens = self.static.size
        self.ancestors = ancestor_mask(torch.tensor(self.static.parents))  # [N, N] ancestor-or-self
        self.children = [self.static.children(v) for v in range(self.static.size)]
        self.expandable = [self.static.expandable(level) for level in range(self.static.max_depth + 1)]
        self.generator = torch.Generator()
        self._skeleton_tree: DraftTree | None = None
        self.cache = TreeKVCache(1, max_length + self.static.size)
        self.last_forwards = 0
        self.reset()

    def reset(self) -> None:
        self.cache.reset()
        self.generator.manual_seed(self.seed)

    @property
    def context_length(self) -> int:
        return self.cache.length

    def _expert_logits(self, g: torch.Tensor) -> torch.Tensor:
        """``[2, q, H]`` (preferred, other expert) -> processed logits ``[q, 2, V]`` in float64."""
        logits = (g @ self.lm_head.t().to(g.dtype)).double().transpose(0, 1)  # [q, 2, V] (or [q, 2, K])
        if self.draft.draft_vocab is not None:  # the mixture lives on target ids: -inf (mass 0) outside the K
            logits = scatter_full(logits, self.draft.draft_vocab, self.draft.vocab_size)
        if self.sampling.greedy:
            return logits
        q, _, vocab = logits.shape
        return self.sampling.warp(logits.reshape(2 * q, vocab)).reshape(q, 2, vocab)

    def _children(self, expert_logits: torch.Tensor, counts: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per node of a level (``expert_logits [q, 2, V]``): its children (tokens at T = 0, else ``2V`` draws) and
        the nodes' ``2V`` mixtures.

        Sampling: ``max(counts)`` draws without replacement per node, of which a node keeps the first ``c`` (the
        first c draws of a longer sequence are distributed exactly as c draws). T = 0 (extension): the first ``c``
        distinct tokens of the ``2V`` ranking.
        """
        q, _, vocab = expert_logits.shape
        flat = expert_logits.reshape(q, 2 * vocab)
        most = max(counts)
        if self.sampling.greedy:
            ranked = fold(torch.topk(flat, min(2 * most, flat.shape[-1]), dim=-1).indices, vocab).tolist()
            return [torch.tensor(list(dict.fromkeys(row))[:c]) for row, c in zip(ranked, counts, strict=True)], flat
        pi = torch.softmax(flat, dim=-1)
        draws = torch.multinomial(pi, most, replacement=False, generator=self.generator)
        return [draws[row, :c] for row, c in enumerate(counts)], pi

    def _skeleton(self, device: torch.device) -> DraftTree:
        """The static tree's verification tensors, built once per device; a round only swaps the tokens."""
        if self._skeleton_tree is None or self._skeleton_tree.tokens.device != device:
            parents = torch.tensor(self.static.parents, device=device)
            self._skeleton_tree = tree_from_parents(torch.zeros_like(parents), parents)
        return self._skeleton_tree

    @torch.no_grad()
    def propose(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> DraftTree:
        draft, static = self.draft, self.static
        weight = next(draft.parameters())
        dtype, device = weight.dtype, weight.device  # the target may sit on other GPUs (device_map="auto")
        new_features, next_ids = new_features.to(device), next_ids.to(device)
        vocab = int(draft.vocab_size)
        n, ctx = next_ids.numel(), self.cache.length
        positions = torch.arange(ctx, ctx + n, device=device)[None]
        out = draft(new_features[None].to(dtype), next_ids[None], positions, causal_allowed(n, ctx, device),
                    kv=self.cache, branches="split", last_only=True)[:, 0]  # [2, 1, H]
        stable = self.cache.length
        forwards = 1
        tokens = torch.zeros(static.size, dtype=torch.long)
        tokens[0] = int(next_ids[-1])
        node_feature = {0: out[0, -1]}
        level_nodes, level_logits = [0], self._expert_logits(out[:, -1:])  # this level's nodes with children
        expanded: list[int] = []  # nodes forwarded so far (their KV rows follow the context, in this order)
        extras: dict[str, Any] = {"draws": {}, "pi": {}, "expert_logits": {}}
        for level in range(static.max_depth):
            counts = [len(self.children[v]) for v in level_nodes]
            picks, mixtures = self._children(level_logits, counts)
            for row, node in enumerate(level_nodes):
                kids = self.children[node]
                if self.sampling.greedy:
                    tokens[kids] = picks[row].cpu()
                else:
                    tokens[kids] = fold(picks[row], vocab).cpu()
                    extras["pi"][node], extras["draws"][node] = mixtures[row], picks[row]
                    extras["expert_logits"][node] = level_logits[row]
            nxt = self.expandable[level + 1]
            if not nxt:
                break
            # forward the next level's expandable nodes: input (feature of the parent, node token)
            feats = torch.stack([node_feature[static.parents[v]] for v in nxt])
            ids = tokens[nxt].to(device)
            seen = expanded + nxt
            tree_part = self.ancestors[nxt][:, seen].to(device)  # keys of the tree rows in the draft KV
            allowed = torch.cat([torch.ones(len(nxt), stable, dtype=torch.bool, device=device), tree_part], dim=1)
            pos = torch.full((1, len(nxt)), stable + level, dtype=torch.long, device=device)
            out = draft(feats[None], ids[None], pos, allowed[None], kv=self.cache, branches="split")[:, 0]  # [2,q,H]
            forwards += 1
            for row, v in enumerate(nxt):
                node_feature[v] = out[0, row]  # only the preferred expert's feature continues (official)
            level_nodes, level_logits = nxt, self._expert_logits(out)
            expanded = seen
        self.cache.crop(stable)
        self.last_forwards = forwards
        extras.update(rule=self.rule, vocab=vocab, verifier=self.verify)
        return dataclasses.replace(self._skeleton(device), tokens=tokens.to(device), extras=extras)

    def verify(self, tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig,
               generator: torch.Generator | None = None) -> Verdict:
        """Jakiro*'s verifier, handed to the engine as ``tree.extras["verifier"]``: greedy at T = 0, else
        :func:`star_sample_verify` with this proposer's rule."""
        return star_verify(tree, logits, sampling, generator)


def star_verify(tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig,
                generator: torch.Generator | None = None) -> Verdict:
    """Greedy verification at T = 0; recursive rejection sampling with the tree's rule otherwise."""
    if sampling.greedy:
        return greedy_verify(tree, logits)
    return star_sample_verify(tree, logits, sampling, tree.extras.get("rule", "corrected"), generator)


def star_sample_verify(tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig, rule: str = "corrected",
                       generator: torch.Generator | None = None) -> Verdict:
    """EAGLE-1 recursive rejection sampling over a Jakiro* tree (module docstring for the two rules)."""
    if rule not in RULES:
        raise UsageError(f"rule={rule!r}; use one of {RULES}")
    tokens, parents = tree.tokens.cpu(), tree.parents.cpu()
    vocab = int(tree.extras["vocab"])
    probs_all = target_probs(logits.cpu(), sampling)
    path, current = [0], 0

    def uniform() -> float:
        return float(torch.rand((), generator=generator, dtype=torch.float64))

    while True:
        children = torch.nonzero(parents == current).flatten().tolist()
        p = probs_all[current].clone()
        if not children:  # leaf: bonus from the target at this node
            if rule == "official":
                p = torch.softmax(logits[current].double().cpu(), dim=-1)
            bonus = int(torch.multinomial(p, 1, generator=generator))
            return Verdict(nodes=torch.tensor(path), bonus_token=bonus, accepted=len(path) - 1)
        pi, draws = tree.extras["pi"][current].cpu(), tree.extras["draws"][current].cpu()
        accepted = None
        if rule == "corrected":
            proposals = corrected_proposals(pi, draws, vocab)
            for k, child in enumerate(children):
                x = int(tokens[child])
                if uniform() < min(1.0, float(p[x] / proposals[k, x])):
                    accepted = child
                    break
                p = torch.clamp(p - proposals[k], min=0.0)
                p = p / p.sum()
        else:
            q_lit = official_child_probs(pi, draws, vocab)
            residual = official_residual(tree.extras["expert_logits"][current].cpu())
            tried: list[int] = []
            rejected = False
            for k, child in enumerate(children):
                x = int(tokens[child])
                if x in tried:
                    continue
                tried.append(x)
                r = uniform()
                qx = float(q_lit[k])
                if qx <= 0:
                    continue
                if r <= float(p[x]) / qx:
                    accepted = child
                    break
                q = residual.clone()
                q[tokens[children[:k]]] = 0.0  # earlier siblings (official b_indices)
                q = q / q.sum()
                p = torch.clamp(p - q, min=0.0)
                p = p / p.sum()
                rejected = True
            if accepted is None and not rejected:  # every child skipped: official samples the raw softmax
                p = torch.softmax(logits[current].double().cpu(), dim=-1)
        if accepted is None:
            bonus = int(torch.multinomial(p, 1, generator=generator))
            return Verdict(nodes=torch.tensor(path), bonus_token=bonus, accepted=len(path) - 1)
        path.append(accepted)
        current = accepted


# ===== Jakiro's hybrid drafting =====================================================================================
ALIGNMENTS = ("official", "parent")
LAST_LEVELS = ("contrastive", "forward")


class JakiroProposer(LevelProposer):
    """Drafts one tree per round for one sequence; keeps the draft's context-only KV between rounds."""

    def __init__(self, draft: JakiroDraft, lm_head: torch.Tensor, tree: TreeConfig,
                 alignment: str = "official", last_level: str = "contrastive", max_length: int = 4096,
                 **unused: Any) -> None:
        if unused:
            raise UsageError(f"unknown Jakiro proposer option(s) {sorted(unused)}; "
                             "known: alignment, last_level, max_length")
        if alignment not in ALIGNMENTS:
            raise UsageError(f"alignment={alignment!r}; use one of {ALIGNMENTS}")
        if last_level not in LAST_LEVELS:
            raise UsageError(f"last_level={last_level!r}; use one of {LAST_LEVELS}")
        if draft.config.variant != "jakiro":
            raise UsageError("JakiroProposer needs a Jakiro draft (variant 'jakiro'); Jakiro* uses StarProposer")
        if last_level == "contrastive" and tree.depth < 2:
            raise UsageError(f"depth={tree.depth}: the contrastive last level needs depth >= 2")
        self.draft = draft
        self.lm_head = draft.draft_lm_head(lm_head)  # [K, H] with a reduced draft vocabulary, else [V, H]
        self.top_k, self.depth, self.total_tokens = tree.top_k, tree.depth, tree.total_tokens
        self.alignment, self.last_level = alignment, last_level
        # the draft's single-layer KV: context rows, then this round's tree rows (cropped after the round)
        self.cache = TreeKVCache(1, max_length + tree.top_k * (tree.depth + 1))
        self.last_forwards = 0

    @torch.no_grad()
    def propose_levels(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> list[DraftLevel]:
        draft, k = self.draft, self.top_k
        weight = next(draft.parameters())
        dtype, device = weight.dtype, weight.device  # the target may sit on other GPUs (device_map="auto")
        new_features, next_ids = new_features.to(device), next_ids.to(device)
        n, ctx = next_ids.numel(), self.cache.length
        positions = torch.arange(ctx, ctx + n, device=device)[None]
        g_root = draft(new_features[None].to(dtype), next_ids[None], positions, causal_allowed(n, ctx, device),
                       kv=self.cache, last_only=True)[0, -1]
        stable = self.cache.length
        forwards = 1
        logp = self._logprobs(g_root)
        top = torch.topk(logp, min(k, logp.numel()))
        top_tokens = draft.to_target_ids(top.indices)  # draft indices -> target ids (identity at full vocab)
        levels = [DraftLevel(tokens=top_tokens, scores=top.values, parents=torch.full_like(top.indices, -1))]
        # inputs of the next forward: kept nodes (their tokens, parent's draft feature, flat index in their level)
        in_tokens, in_feats, scores = top_tokens, g_root.expand(top.indices.numel(), -1), top.values
        in_index = torch.arange(top.indices.numel(), device=device)
        in_parent_row = in_index  # for each kept node: the row of the forward that produced it
        tree_cols = torch.eye(in_tokens.numel(), dtype=torch.bool, device=device)
        contrastive_logp = None
        contrastive_rows = self.last_level == "contrastive"
        for i in range(self.depth):
            q = in_tokens.numel()
            if contrastive_rows and i == self.depth - 1:
                logp = contrastive_logp  # no forward: the parallel (two-steps-ahead) prediction
                out = None
            else:
                allowed = torch.cat([torch.ones(q, stable, dtype=torch.bool, device=device), tree_cols], dim=1)
                pos = torch.full((1, q), stable + i, dtype=torch.long, device=device)  # one position per level
                penultimate = contrastive_rows and i == self.depth - 2
                out = draft(in_feats[None], in_tokens[None], pos, allowed[None], kv=self.cache,
                            branches="both" if penultimate else "moe")
                forwards += 1
                if penultimate:  # both branches through the LM head in one call (one read of W_lm)
                    both = self._logprobs(out[:, 0])
                    logp, contrastive_logp, out = both[0], both[1], out[0, 0]
                else:
                    out = out[0]
                    logp = self._logprobs(out)
            if out is None:
                rows = torch.arange(q, device=device)
                if self.alignment == "parent":
                    rows = in_parent_row
                logp = logp[rows]
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            child_tokens = draft.to_target_ids(top.indices.flatten())
            child_scores = top.values + scores[:, None]  # [q, k] cumulative
            parents = in_index[:, None].expand_as(top.indices)
            levels.append(DraftLevel(tokens=child_tokens, scores=child_scores.flatten(), parents=parents.flatten()))
            if i == self.depth - 1:
                break
            keep = torch.topk(child_scores.flatten(), min(k, child_scores.numel())).indices
            in_parent_row = keep // top.indices.shape[1]
            in_tokens = child_tokens[keep]
            in_feats = out[in_parent_row] if out is not None else in_feats[in_parent_row]
            scores = child_scores.flatten()[keep]
            in_index = keep
            eye = torch.eye(keep.numel(), dtype=torch.bool, device=device)
            tree_cols = torch.cat([tree_cols[in_parent_row], eye], dim=1)
        self.cache.crop(stable)  # tree-branch KV never survives a round
        self.last_forwards = forwards
        return levels


def make_proposer(draft: JakiroDraft, lm_head: torch.Tensor, tree: TreeConfig | None,
                  **options: Any) -> JakiroProposer | StarProposer:
    """A fresh proposer for one sequence: :class:`JakiroProposer` for a Jakiro draft (``tree`` its budget),
    :class:`StarProposer` for Jakiro* (its static tree; ``tree`` unused). ``lm_head [V, H]``: the
    frozen target head, in the draft's dtype."""
    if draft.config.variant == "jakiro":
        return JakiroProposer(draft, lm_head, tree, **options)
    return StarProposer(draft, lm_head, **options)
