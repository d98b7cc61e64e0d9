"""Jakiro's hybrid drafting (spec §1.5, official ``topK_genrate``): EAGLE-2's dynamic tree whose last level comes
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

Last-level row alignment (spec §1.5 quirk, pitfall 11). The penultimate forward reads the K nodes kept at level
D-1; its contrastive row r predicts the *grandchildren* of input r. The official code attaches row j under the j-th
node kept at level D, whose parent is input ``par_row[j]``, generally not j (``alignment="official"``, the
default: it matches the released checkpoints). ``alignment="parent"`` uses row ``par_row[j]``, the prediction made
for that node's actual parent. Verification stays lossless either way; only acceptance changes.
"""

from __future__ import annotations

from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftLevel, LevelProposer, TreeConfig
from effrepro.specdec.target import TreeKVCache

from jakiro.models.head import JakiroDraft, causal_allowed
from jakiro.star import StarProposer

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
    :class:`~jakiro.star.StarProposer` for Jakiro* (its static tree; ``tree`` unused). ``lm_head [V, H]``: the
    frozen target head, in the draft's dtype."""
    if draft.config.variant == "jakiro":
        return JakiroProposer(draft, lm_head, tree, **options)
    return StarProposer(draft, lm_head, **options)
