"""Gumiho's draft proposer (spec §1.5): serial Transformer levels, then every MLP level from one batched call.

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
FTA when ``fta="official"`` (approximate, see ``gumiho.fta``; default ``"off"``).

Two official behaviours are compatibility flags (both default to the corrected behaviour):

* ``sibling_mask="isolated"``: a serial-step candidate attends to the context, its own ancestors and itself
  (EAGLE-2 / Jakiro). ``"official"``: the official draft never sets a tree mask, so candidate j also sees every
  earlier-level candidate and its siblings 0..j-1 through the causal mask (spec D2).
* ``mlp_pairing="parent"``: MLP row j pairs its level-S token with its own level-(S-1) parent. ``"row"``: the
  official code pairs ``d1[j]`` with ``d2[j]`` although ``d2[j]``'s parent is ``d1[par2[j]]`` (spec D3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftLevel, DraftTree, LevelProposer, TreeConfig, expand_topk
from effrepro.specdec.target import TreeKVCache
from effrepro.specdec.verify import rows_sample_verify

from gumiho.fta import FTA_MODES, fta_pad
from gumiho.model import GumihoDraft

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
        fused_root = draft.fuse(next_ids[None], new_features[None].to(self.lm_head.dtype))  # [1, n, H]
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
