"""Draft trees: the pure tensor primitives every EAGLE-family proposer shares.

A proposer drafts *levels*: level ``l`` (1-based) is a list of candidate nodes, each with a token, a cumulative
log-probability from the root (``score``) and the index of its parent among the entries of level ``l - 1``
(``-1``: the root). EAGLE-2 / Jakiro put all ``K*K`` children of a level in it; Gumiho only the kept beams.
``tree_from_levels`` then does EAGLE-2's global re-ranking: it keeps the ``total_tokens - 1`` best scores and
builds the verification tensors (``DraftTree``).

Ancestor closure holds even with tied scores (an fp16 log-prob of exactly 0 gives a child its parent's score): a
child's score is ``parent score + log p <= parent score`` (IEEE addition of a non-positive number never increases
it) and the parent sits at a smaller pool index, so ranking by ``(score desc, pool index asc)`` always puts a
parent first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from effrepro.errors import UsageError


@dataclass
class DraftLevel:
    """Candidates of one draft level: ``tokens [n]``, cumulative log-probs ``scores [n]``, ``parents [n]``.

    ``parents[j]`` indexes the entries of the previous level (``-1`` = the root, every level-1 entry).
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    parents: torch.Tensor


@dataclass
class DraftTree:
    """One verification tree. Node 0 is the root (the token the target already emitted); nodes are in level order.

    * ``tokens [N]`` long: node tokens (root first).
    * ``parents [N]`` long: parent node index, ``-1`` for the root; parents precede children.
    * ``tree_mask [N, N]`` bool: ``tree_mask[i, j]`` iff ``j`` is an ancestor of ``i`` or ``i`` itself.
    * ``depth [N]`` long: root 0; the target's position id of node ``i`` is ``prefix_len + depth[i]``.
    * ``retrieve_indices [leaves, max_depth + 1]`` long: one root-to-leaf path of node ids per leaf, ``-1`` padded.
    * ``scores [N]`` float: cumulative draft log-prob (0 for the root).
    * ``extras``: per-method data (e.g. recorded draft probabilities); the engine ignores it.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    tree_mask: torch.Tensor
    depth: torch.Tensor
    retrieve_indices: torch.Tensor
    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def position_ids(self, prefix_len: int) -> torch.Tensor:
        """Target position ids of the nodes when the verified prefix holds ``prefix_len`` tokens (root excluded)."""
        return self.depth + prefix_len

    def children(self, node: int) -> list[int]:
        """Child node ids of ``node`` in node order (the order the sampling verifier tries them)."""
        return torch.nonzero(self.parents == node).flatten().tolist()


def expand_topk(
    parent_scores: torch.Tensor, logprobs: torch.Tensor, k_children: int, k_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared beam step: the top ``k_children`` children of each of ``B`` rows, then the best ``k_keep`` of all.

    ``parent_scores [B]`` (cumulative), ``logprobs [B, V]``. Returns ``(child_tokens [B, k], child_scores [B, k]``
    cumulative, ``keep [k_keep]`` flat indices into the ``[B, k]`` children, ``keep_rows [k_keep]`` their rows).
    """
    k_children = min(k_children, logprobs.shape[-1])
    top = torch.topk(logprobs, k_children, dim=-1)
    child_scores = top.values + parent_scores[:, None]
    keep = torch.topk(child_scores.flatten(), min(k_keep, child_scores.numel())).indices
    return top.indices, child_scores, keep, keep // k_children


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` bool: ``mask[i, j]`` iff ``j`` is ``i`` or an ancestor of ``i`` (``parents`` with ``-1`` root)."""
    n = parents.numel()
    mask = torch.eye(n, dtype=torch.bool, device=parents.device)
    rows = torch.arange(n, device=parents.device)
    current = parents.clone()
    while bool((current >= 0).any()):
        alive = current >= 0
        mask[rows[alive], current[alive]] = True
        current = torch.where(alive, parents[current.clamp(min=0)], current)
    return mask


def node_depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node (root 0), from parent pointers with parents before children."""
    return ancestor_mask(parents).sum(dim=1) - 1


def retrieve_paths(parents: torch.Tensor) -> torch.Tensor:
    """``[leaves, max_depth + 1]``: the root-to-leaf node ids of every leaf (leaves in node order), ``-1`` padded."""
    n = parents.numel()
    mask = ancestor_mask(parents)
    has_child = torch.zeros(n, dtype=torch.bool, device=parents.device)
    has_child[parents[parents >= 0]] = True
    leaves = torch.nonzero(~has_child).flatten()
    depths = mask.sum(dim=1) - 1
    width = int(depths.max().item()) + 1
    paths = torch.full((leaves.numel(), width), -1, dtype=torch.long, device=parents.device)
    for row, leaf in enumerate(leaves.tolist()):
        nodes = torch.nonzero(mask[leaf]).flatten()  # ancestors in node order = depth order
        paths[row, : nodes.numel()] = nodes
    return paths


def tree_from_parents(
    tokens: torch.Tensor, parents: torch.Tensor, scores: torch.Tensor | None = None
) -> DraftTree:
    """A ``DraftTree`` from explicit node tokens and parent pointers (root at 0, parents before children)."""
    if parents.numel() == 0 or int(parents[0]) != -1:
        raise UsageError("a draft tree needs the root at node 0 with parent -1")
    if bool((parents[1:] < 0).any()) or bool((parents[1:] >= torch.arange(1, parents.numel(),
                                                                       device=parents.device)).any()):
        raise UsageError("every non-root node needs a parent that precedes it")
    mask = ancestor_mask(parents)
    return DraftTree(
        tokens=tokens.long(), parents=parents.long(), tree_mask=mask, depth=mask.sum(dim=1) - 1,
        retrieve_indices=retrieve_paths(parents),
        scores=scores if scores is not None else torch.zeros(tokens.numel(), device=tokens.device),
    )


def tree_from_levels(levels: list[DraftLevel], root_token: int | torch.Tensor, total_tokens: int) -> DraftTree:
    """EAGLE-2's global re-ranking: keep the ``total_tokens - 1`` best-scored candidates of all levels + the root.

    The kept nodes stay in pool order (level order), so parents precede children; see the module docstring for
    why the kept set is ancestor-closed even with ties.
    """
    if total_tokens < 1:
        raise UsageError(f"total_tokens={total_tokens}; must be >= 1 (the root counts as one)")
    if not levels:
        device = torch.device("cpu")
        root = torch.as_tensor(root_token, device=device).long().reshape(1)
        return tree_from_parents(root, torch.tensor([-1], device=device))
    device = levels[0].tokens.device
    offsets, pool_parents = [], []
    start = 0
    for number, level in enumerate(levels):
        offsets.append(start)
        if number == 0:
            pool_parents.append(torch.full_like(level.parents, -1))
        else:
            pool_parents.append(level.parents + offsets[number - 1])
        start += level.tokens.numel()
    pool_tokens = torch.cat([lv.tokens.flatten() for lv in levels]).long()
    pool_scores = torch.cat([lv.scores.flatten() for lv in levels]).float()
    pool_parent = torch.cat(pool_parents).long()
    keep_n = min(total_tokens - 1, pool_tokens.numel())
    order = torch.sort(-pool_scores, stable=True).indices  # ties keep pool order: parents before children
    keep = torch.sort(order[:keep_n]).values
    node_of = torch.full((pool_tokens.numel(),), -1, dtype=torch.long, device=device)
    node_of[keep] = torch.arange(1, keep_n + 1, device=device)
    parent_pool = pool_parent[keep]
    parents = torch.where(parent_pool >= 0, node_of[parent_pool.clamp(min=0)], torch.zeros_like(parent_pool))
    if bool((parents < 0).any()):  # cannot happen for valid scores; guards against NaN scores
        raise UsageError("draft scores are not monotone along paths (NaN?); the kept set is not ancestor-closed")
    root = torch.as_tensor(root_token, device=device).long().reshape(1)
    tokens = torch.cat([root, pool_tokens[keep]])
    all_parents = torch.cat([torch.tensor([-1], device=device), parents])
    scores = torch.cat([torch.zeros(1, device=device), pool_scores[keep]])
    return tree_from_parents(tokens, all_parents, scores)
