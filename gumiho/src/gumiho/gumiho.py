"""Gumiho: speculative decoding with a serial Transformer and parallel MLP draft heads (the paper's method).

The paper's argument (:mod:`gumiho.theory`): early draft positions decide most of the accepted length, so the head
spends a small serial Transformer on the first tokens and cheap parallel MLPs on the later ones. This module is the
whole method as it plugs into the shared engine :mod:`effrepro.specdec` (target adapter, tree, verification,
generate loop, trainer): the head (:class:`GumihoConfig`, :class:`GumihoDraft`), its loss (:class:`LossWeights`,
:func:`gumiho_loss`), Full Tree Attention (:func:`fta_pad`) and the proposer (:class:`GumihoProposer`,
:func:`make_proposer`).

**The head**: fusion layer ``fc``, a 2-layer serial Transformer and parallel MLP heads.

Structure (official ``gumiho/model/cnets.py``):

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

**The training loss**: SmoothL1 on features + 0.1 soft cross-entropy, per-head decaying weights.

Recipe of ``train/main_deepspeed.py`` (the one ``scripts/train.sh`` runs), the default::

    L = 1.0 L_reg^T + 0.1 L_cls^T + (1/9) sum_i 0.8^(i+1) (1.0 L_reg^(i) + w_p(epoch) L_cls^(i))

with ``w_p = 0`` during the first two epochs (``--mlp_p_w 100``) and ``0.1`` after. The older accelerate script
(``train/main.py``) weighs every head 1 with CE on from the start: ``LossWeights.accelerate()``.

Alignment (teacher forcing, ``effrepro.specdec.DraftBatch``): position t holds ``(f_t, x_{t+1})`` and the target
``f_{t+1}``. The Transformer output ``h_t`` regresses ``f_{t+1}`` under ``M_t``; MLP head i regresses
``f_{t+S+1+i}`` under ``M_{t+S+i}`` (``pred[:, :-(S+i)]`` against ``target[:, S+i:]``, the engine's
``feature_losses(..., shift=S+i)``), which leaves out every position ``torch.roll`` wrapped.

**Full Tree Attention (FTA)** exactly as the official code does it (``complete_mask == 1``), and why it is lossy.

``retrieve_indices`` ``R [leaves, D]`` lists one root-to-leaf path of tree node ids per row, ``-1`` padded. For
each of the last ``c`` columns (``c`` = the most ``-1`` any row has, i.e. those of the shortest path), the
official code takes the most frequent node id among the column's real entries (``torch.unique`` + ``argmax``:
ties go to the smaller id) and writes it into every ``-1`` of that column. It also sets
``tree_mask[last real node of each short row, that node] = True``.

What that does (tested in ``test_gumiho_fta.py``):

* The mask edit is a no-op: the target's mask is ``causal AND tree_mask`` and the padded node is deeper, so
  its index is larger than the short row's last node and the causal part already hides it. We therefore only
  pad ``retrieve_indices``.
* Columns are padded independently, so a padded row ``[root, a, b, c*, d*]`` need not be a parent-child chain.
  Verifying ``c*`` against ``argmax(logits at b)`` is exact, but ``d*``, the bonus token after it, the KV
  entries copied for ``c*``/``d*`` and the features handed back to the draft come from nodes computed under
  *their own* ancestors, not under ``a, b``. Greedy output can therefore differ from plain greedy decoding:
  FTA-on decoding is approximate, and ``fta="off"`` is our default.

**The draft proposer**: serial Transformer levels, then every MLP level from one batched call.

One round, root token ``r`` (already emitted by the target) and new target features:

1. context pass: the Transformer over the new positions with the draft's context KV; ``h1`` = its last output;
   level 1 = top-K of ``log_softmax(W h1)``.
2. serial steps 2..S: the K beams of the previous level go through the Transformer at one shared RoPE position;
   each row's top-K children, then the best K of the K*K cumulative scores form the next level (EAGLE-2 beams).
3. the MLP heads read ``[g_{S-1} ; g_S]``, the fused inputs ``fc([E d ; h])`` of the last two serial levels, for
   the K beams in one call; head i gives level S+1+i. Each MLP level keeps the ``pruning`` best of
   ``rows * mlptopk`` children; a beam's logits come from the serial row it descends from (``src``), since an MLP
   head sees only the serial prefix.

Only the kept beams of each level enter the global pool (EAGLE-2 pools all K*K children); the engine's
``tree_from_levels`` keeps the ``total_tokens - 1`` best cumulative scores, then ``postprocess_tree`` applies
FTA when ``fta="official"`` (approximate, see FTA above; default ``"off"``).

Two official behaviours that are inconsistent with the paper's tree are compatibility flags (both default to the
corrected behaviour):

* ``sibling_mask="isolated"``: a serial-step candidate attends to the context, its own ancestors and itself
  (EAGLE-2 / Jakiro). ``"official"``: the official draft never sets a tree mask, so candidate j also sees every
  earlier-level candidate and its siblings 0..j-1 through the causal mask.
* ``mlp_pairing="parent"``: MLP row j pairs its level-S token with its own level-(S-1) parent. ``"row"``: the
  official code pairs ``d1[j]`` with ``d2[j]`` although ``d2[j]``'s parent is ``d1[par2[j]]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

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
    expand_topk,
)
from effrepro.specdec.target import TreeKVCache, additive_mask
from effrepro.specdec.verify import rows_sample_verify
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding


# ===== the head =====================================================================================================
@dataclass
class GumihoConfig(DraftModelConfig):
    """The engine's draft config (widths of the target) plus the Gumiho structure knobs."""

    TARGET_KEYS: ClassVar[tuple[str, ...]] = (*DraftModelConfig.TARGET_KEYS, "pad_token_id")

    num_layers: int = 2  # Transformer depth (every released Gumiho config: 2; EAGLE: 1)
    # fc_bias (engine default True): the official Model always builds fc with a bias
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

    A ``effrepro.specdec.DraftHead``: ``compute_loss`` is Gumiho's loss (:func:`gumiho_loss`); its proposer comes from
    :func:`make_proposer`.
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

    # ----- teacher-forced training pass (alignment: see the loss section) -----
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
        return gumiho_loss(self, batch, ctx.lm_head, ctx.epoch, LossWeights.from_dict(ctx.weights))

    @torch.no_grad()
    def eval_metrics(self, batch: DraftBatch, ctx: LossContext) -> dict[str, float]:
        """Held-out loss parts and the teacher-forced top-1 agreement of every head with the target's token."""
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
    """Trainable parameters by part, plus the frozen embedding copy (the paper's parameter table)."""
    def total(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {"transformer": total(draft.layers), "fc": total(draft.fc), "mlp": total(draft.mlp)}
    parts["trainable"] = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    parts["frozen_embedding"] = draft.embed_tokens.weight.numel()
    return parts


# ===== the loss =====================================================================================================
EPS = 1e-5


@dataclass
class LossWeights:
    """Every coefficient of the loss; the defaults are the deepspeed recipe."""

    v_w: float = 1.0  # Transformer feature regression
    p_w: float = 0.1  # Transformer soft cross-entropy
    mlp_v_w: float = 1.0  # MLP feature regression
    mlp_p_w: float = 0.1  # MLP soft cross-entropy once the warm-up is over
    mlp_ce_warmup_epochs: int = 2  # MLP CE is switched off for epochs < this (official --mlp_p_w 100)
    mlp_loss_decay: float = 0.8  # head i is weighted decay^(i+1) / denom
    mlp_loss_denom: float = 9.0

    @classmethod
    def accelerate(cls) -> LossWeights:
        """The accelerate script (``train/main.py``): uniform heads, no divisor, CE on from the start."""
        return cls(mlp_ce_warmup_epochs=0, mlp_loss_decay=1.0, mlp_loss_denom=1.0)

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> LossWeights:
        """From ``HeadTrainConfig.loss_weights``; missing keys keep the defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown Gumiho loss weight(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: (int(v) if k == "mlp_ce_warmup_epochs" else float(v)) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def head_weight(self, head: int) -> float:
        return self.mlp_loss_decay ** (head + 1) / self.mlp_loss_denom

    def mlp_ce_weight(self, epoch: int) -> float:
        return 0.0 if epoch < self.mlp_ce_warmup_epochs else self.mlp_p_w


def combine(components: dict[str, torch.Tensor], weights: LossWeights, epoch: int, mlp_num: int) -> torch.Tensor:
    """The weighted total from ``reg_T``/``cls_T`` (absent when S = 0) and ``reg_{i}``/``cls_{i}`` per MLP head."""
    total = torch.zeros((), device=next(iter(components.values())).device)
    if "reg_T" in components:
        total = total + weights.v_w * components["reg_T"] + weights.p_w * components["cls_T"]
    ce_weight = weights.mlp_ce_weight(epoch)
    for i in range(mlp_num):
        head = weights.mlp_v_w * components[f"reg_{i}"] + ce_weight * components[f"cls_{i}"]
        total = total + weights.head_weight(i) * head
    return total


class _SharedTeacher:
    """The masked rows of a batch and their teacher ``log softmax(W f_{t+1})``, computed once for every head.

    Equal to ``effrepro.specdec.feature_losses`` term by term (``test_gumiho_loss`` checks it), but with up to
    7 heads per position it matters that (a) the ``[rows, V]`` teacher is computed once instead of once per
    head and (b) only rows with mask 1 go through the LM head (the others add exactly zero to both sums): at
    V = 49152 on a CPU the LM head is most of the training time.
    """

    def __init__(self, batch: DraftBatch, lm_head: torch.Tensor) -> None:
        self.mask = batch.loss_mask.float()
        self.target = batch.target_features
        self.batch_idx, self.pos_idx = torch.nonzero(self.mask > 0, as_tuple=True)
        self.lm_head = lm_head
        with torch.no_grad():
            rows = self.target[self.batch_idx, self.pos_idx].float()
            self.logp = torch.log_softmax(rows @ lm_head.float().t(), dim=-1)
            self.token = self.logp.argmax(dim=-1)  # the target's greedy next token at each row

    def losses(self, pred: torch.Tensor, shift: int, with_cls: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """SmoothL1 and soft CE of a prediction at t against ``f_{t+1+shift}`` under ``M_{t+shift}``."""
        keep = self.pos_idx >= shift
        denominator = self.mask[:, shift:].sum() + EPS
        pred_rows = pred[self.batch_idx[keep], self.pos_idx[keep] - shift].float()
        target_rows = self.target[self.batch_idx[keep], self.pos_idx[keep]].float()
        reg = F.smooth_l1_loss(pred_rows, target_rows, reduction="none").mean(-1).sum() / denominator
        if not with_cls:  # weight 0 (MLP CE warm-up): skipping the [rows, V] logits changes nothing but the time
            return reg, torch.zeros((), device=reg.device)
        logq = torch.log_softmax(pred_rows @ self.lm_head.float().t(), dim=-1)
        cls = -(self.logp[keep].exp() * logq).sum() / denominator
        return reg, cls

    @torch.no_grad()
    def top1(self, pred: torch.Tensor, shift: int) -> float:
        """Fraction of masked rows where the prediction's argmax token equals the target's (teacher-forced)."""
        keep = self.pos_idx >= shift
        if not bool(keep.any()):
            return float("nan")
        rows = pred[self.batch_idx[keep], self.pos_idx[keep] - shift].float()
        return float(((rows @ self.lm_head.float().t()).argmax(-1) == self.token[keep]).float().mean())


def gumiho_loss(
    draft, batch: DraftBatch, lm_head: torch.Tensor, epoch: int, weights: LossWeights | None = None,
    accuracy: bool = False,
) -> dict[str, torch.Tensor]:
    """The full loss of one ``DraftBatch``: ``loss`` plus every component (detached).

    During the MLP-CE warm-up the MLP heads' CE terms are not computed (reported as 0). With ``accuracy`` the
    teacher-forced top-1 agreement of every head with the target's greedy token is added (``top1_T``, ``top1_i``).
    """
    weights = weights or LossWeights()
    hidden, mlp_preds = draft.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    teacher = _SharedTeacher(batch, lm_head)
    components: dict[str, torch.Tensor] = {}
    if hidden is not None:
        components["reg_T"], components["cls_T"] = teacher.losses(hidden, 0)
    steps = draft.config.serial_steps
    mlp_cls = weights.mlp_ce_weight(epoch) != 0
    for i in range(mlp_preds.shape[2]):
        components[f"reg_{i}"], components[f"cls_{i}"] = teacher.losses(mlp_preds[:, :, i], steps + i, mlp_cls)
    loss = combine(components, weights, epoch, mlp_preds.shape[2])
    out = {"loss": loss, **{k: v.detach() for k, v in components.items()}}
    if accuracy:
        if hidden is not None:
            out["top1_T"] = torch.tensor(teacher.top1(hidden, 0))
        for i in range(mlp_preds.shape[2]):
            out[f"top1_{i}"] = torch.tensor(teacher.top1(mlp_preds[:, :, i], steps + i))
    return out


# ===== Full Tree Attention ==========================================================================================
FTA_MODES = ("off", "official")


def fta_pad(retrieve_indices: torch.Tensor) -> torch.Tensor:
    """The official FTA padding of ``retrieve_indices`` (a new tensor; the input is left unchanged)."""
    padded = retrieve_indices.clone()
    missing = padded < 0
    width = int(missing.sum(dim=1).max().item()) if padded.numel() else 0
    columns = padded.shape[1]
    for col in range(columns - width, columns):
        real = padded[:, col][~missing[:, col]]
        if real.numel() == 0:
            continue
        values, counts = torch.unique(real, return_counts=True)  # sorted ids: argmax's first max = smaller id
        padded[:, col] = torch.where(missing[:, col], values[counts.argmax()], padded[:, col])
    return padded


def official_mask_edit(tree_mask: torch.Tensor, retrieve_indices: torch.Tensor) -> torch.Tensor:
    """The official mask edit (kept only to show it is a no-op under the causal mask): a new ``[N, N]`` bool mask."""
    edited = tree_mask.clone().bool()
    padded = fta_pad(retrieve_indices)
    for row, filled in zip(retrieve_indices, padded, strict=True):
        real = row[row >= 0]
        for node in filled[len(real):]:
            edited[real[-1], node] = True
    return edited


# ===== the proposer =================================================================================================
SIBLING_MASKS = ("isolated", "official")
MLP_PAIRINGS = ("parent", "row")


@dataclass
class ProposerConfig:
    """Tree knobs and flags. Official: top_k 14, total_tokens 64, mlptopk 35, pruning 35, FTA on.

    ``depth`` = draft levels (0: all of the draft's ``serial_steps + mlp_num``); a smaller depth uses only the
    first MLP heads (as the vLLM port does).
    """

    top_k: int = 14
    total_tokens: int = 64
    depth: int = 0
    mlptopk: int = 35
    pruning: int = 35
    sibling_mask: str = "isolated"
    mlp_pairing: str = "parent"
    fta: str = "off"

    def __post_init__(self) -> None:
        if min(self.top_k, self.mlptopk, self.pruning) < 1 or self.total_tokens < 2 or self.depth < 0:
            raise UsageError("top_k, mlptopk and pruning must be >= 1, total_tokens >= 2, depth >= 0 "
                             f"(got {self.top_k}, {self.mlptopk}, {self.pruning}, {self.total_tokens}, {self.depth})")
        for name, value, allowed in (("sibling_mask", self.sibling_mask, SIBLING_MASKS),
                                     ("mlp_pairing", self.mlp_pairing, MLP_PAIRINGS), ("fta", self.fta, FTA_MODES)):
            if value not in allowed:
                raise UsageError(f"{name}={value!r}; use one of {allowed}")


class GumihoProposer(LevelProposer):
    """Stateful drafter for one sequence: keeps the draft's context-only KV (the official ``stable_kv``)."""

    def __init__(self, draft: GumihoDraft, lm_head: torch.Tensor, config: ProposerConfig | None = None,
                 max_length: int = 4096) -> None:
        self.draft = draft
        self.lm_head = draft.draft_lm_head(lm_head)  # the frozen target head W: [V, H], or [K, H] (draft vocab)
        self.config = config or ProposerConfig()
        steps, depth = draft.config.serial_steps, self.config.depth or draft.config.depth
        if not steps <= depth <= draft.config.depth or depth < 1:
            raise UsageError(f"depth {depth} does not fit this draft ({steps} serial levels + "
                             f"{draft.config.mlp_num} MLP heads): use {max(steps, 1)}..{draft.config.depth}")
        self.depth = depth
        self.total_tokens = self.config.total_tokens
        self.last_forwards = 0  # sequential Transformer passes of the last round (the context pass included)
        # the draft Transformer's KV: context rows (the official ``stable_kv``), then this round's serial tree rows
        self.cache = TreeKVCache(len(draft.layers), max_length + self.config.top_k * depth)

    def postprocess_tree(self, tree: DraftTree) -> DraftTree:
        if self.config.fta == "official":  # as the official code: greedy and sampled verification walk the rows
            tree.retrieve_indices = fta_pad(tree.retrieve_indices)
            tree.extras["sample_verifier"] = rows_sample_verify
        return tree

    @torch.no_grad()
    def propose_levels(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> list[DraftLevel]:
        """Draft one round.

        ``new_features [n, H]`` are the target features ``f_t`` of the positions the draft has not seen yet and
        ``next_ids [n]`` their next tokens ``x_{t+1}``; the last of them is the round's root. Returns the kept
        beams of every draft level.
        """
        draft, cfg = self.draft, self.config
        steps = draft.config.serial_steps
        device = self.lm_head.device  # the draft's; the target may sit on other GPUs (device_map="auto")
        fused_root = draft.fuse(next_ids.to(device)[None], new_features[None].to(device, self.lm_head.dtype))
        self.last_forwards = 0
        if steps == 0:  # all-parallel: the heads read the fused root, one row
            return self._mlp_levels([fused_root[0, -1:]], None, torch.zeros(1, device=fused_root.device), [])

        ctx = self.cache.length
        n_new = fused_root.shape[1]
        positions = torch.arange(ctx, ctx + n_new, device=fused_root.device)[None]
        allowed = torch.ones(n_new, ctx + n_new, dtype=torch.bool, device=fused_root.device).tril(ctx)[None]
        hidden = draft.transformer(fused_root, positions, allowed, self.cache)
        self.last_forwards = 1
        ctx = self.cache.length  # the context KV now covers the root's position; tree entries come after it
        h1 = hidden[0, -1]
        top = torch.topk(self._logprobs(h1), cfg.top_k)
        top_tokens = draft.to_target_ids(top.indices)  # draft indices -> target ids (identity at full vocab)
        levels = [DraftLevel(top_tokens, top.values, torch.full_like(top.indices, -1))]
        fused = [draft.fuse(top_tokens, h1.expand(cfg.top_k, -1))]  # g_1[j] = fc([E d1[j] ; h1])
        ancestors = torch.arange(cfg.top_k, device=h1.device)[:, None]  # [K, levels so far]: beam index per level
        try:
            for step in range(2, steps + 1):
                out = self._serial_step(fused[-1], ancestors, ctx, step)
                self.last_forwards += 1
                tokens, scores, keep, parents = expand_topk(levels[-1].scores, self._logprobs(out), cfg.top_k,
                                                            cfg.top_k)
                levels.append(DraftLevel(draft.to_target_ids(tokens.flatten()[keep]), scores.flatten()[keep],
                                         parents))
                fused.append(draft.fuse(levels[-1].tokens, out[parents]))  # g_s[j] = fc([E d_s[j] ; H_s[par]])
                ancestors = torch.cat([ancestors[parents], torch.arange(len(parents), device=h1.device)[:, None]], 1)
        finally:
            self.cache.crop(ctx)  # tree-branch KV never survives the round
        parents_last = levels[-1].parents if steps >= 2 else None
        return self._mlp_levels(fused, parents_last, levels[-1].scores, levels)

    def _serial_step(self, rows: torch.Tensor, ancestors: torch.Tensor, ctx: int, step: int) -> torch.Tensor:
        """One Transformer pass over the beams of level ``step - 1`` at the shared position ``ctx + step - 2``.

        The KV already holds ``step - 2`` earlier tree levels (one entry per beam, level order) after the context.
        """
        k = rows.shape[0]
        device = rows.device
        earlier = step - 2
        allowed = torch.zeros(k, ctx + (earlier + 1) * k, dtype=torch.bool, device=device)
        allowed[:, :ctx] = True
        if self.config.sibling_mask == "isolated":
            # ancestors[:, m] is the beam index at level m+1 of each row's chain; the row itself is the last one
            cols = ctx + torch.arange(earlier + 1, device=device)[None] * k + ancestors
            allowed.scatter_(1, cols, True)
        else:  # official: causal over everything appended so far (earlier levels fully, siblings 0..j)
            allowed[:, ctx:ctx + earlier * k] = True
            allowed[:, ctx + earlier * k:] = torch.ones(k, k, dtype=torch.bool, device=device).tril()
        positions = torch.full((1, k), ctx + earlier, dtype=torch.long, device=device)
        return self.draft.transformer(rows[None], positions, allowed[None], self.cache)[0]

    def _mlp_levels(
        self, fused: list[torch.Tensor], parents_last: torch.Tensor | None, scores: torch.Tensor,
        levels: list[DraftLevel],
    ) -> list[DraftLevel]:
        """The MLP levels from one batched call over the rows of the last serial level."""
        cfg = self.config
        if len(fused) >= 2:
            previous = fused[-2][parents_last] if cfg.mlp_pairing == "parent" else fused[-2]
            mlp_in = torch.cat([previous, fused[-1]], dim=-1)
        else:
            mlp_in = fused[-1]
        heads = self.depth - len(levels)
        logp = self._logprobs(self.draft.mlp(mlp_in, heads))  # [rows, heads, V]
        src = torch.arange(mlp_in.shape[0], device=mlp_in.device)  # the serial row each beam's logits come from
        for head in range(heads):
            tokens, cumulative, keep, beam = expand_topk(scores, logp[src, head], cfg.mlptopk, cfg.pruning)
            parents = beam if levels else torch.full_like(beam, -1)
            levels.append(DraftLevel(self.draft.to_target_ids(tokens.flatten()[keep]), cumulative.flatten()[keep],
                                     parents))
            src, scores = src[beam], levels[-1].scores
        return levels


def make_proposer(draft: GumihoDraft, lm_head: torch.Tensor, tree: TreeConfig, max_length: int = 4096,
                  **options: Any) -> GumihoProposer:
    """A ``GumihoProposer`` for one sequence; ``options``: ``mlptopk``, ``pruning``, ``sibling_mask``,
    ``mlp_pairing``, ``fta`` (``GumihoTreeConfig.options``)."""
    config = ProposerConfig(top_k=tree.top_k, total_tokens=tree.total_tokens, depth=tree.depth, **options)
    return GumihoProposer(draft, lm_head, config, max_length=max_length)
