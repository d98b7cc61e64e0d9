"""Jakiro*: per-expert candidates on EAGLE-1's static tree (official ``jakiro_star/``).

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
from dataclasses import dataclass
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftTree, ancestor_mask, tree_from_parents
from effrepro.specdec.target import TreeKVCache
from effrepro.specdec.verify import SamplingConfig, Verdict, greedy_verify, target_probs
from effrepro.specdec.vocab import scatter_full

from jakiro.models.head import JakiroDraft, causal_allowed

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
