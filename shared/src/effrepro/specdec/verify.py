"""Verification of a draft tree against the target's tree logits (spec jakiro §1.6, gumiho §1.7).

* **Greedy** (temperature 0): node i is correct when its token equals the target's argmax at its parent; the
  accepted path is the longest all-correct prefix over the root-to-leaf rows (ties: first row); the bonus token is
  the argmax at the last accepted node. Every emitted token is the target's argmax given its true prefix, so the
  output equals plain greedy decoding for any draft.
* **Sampling** (EAGLE-2's rule, q = 1): walk down from the root; at node c with processed target distribution p,
  try c's children (node order) one by one; accept child x with probability p(x), else set p(x) = 0 and
  renormalise. If every child is rejected, or c is a leaf, the bonus token is drawn from the current p. Testing
  deterministic candidates without replacement this way draws exactly from p, so the output is distributed as the
  target's (tests: exact enumeration on a tiny vocabulary).
  Temperature / top-k / top-p (transformers' logits warpers) are applied on **every** branch, including the bonus
  at a leaf; the official code samples that bonus from the raw softmax (``official_leaf_bonus=True`` keeps that,
  which is exact only at T = 1 without top-p/top-k: jakiro pitfall 23).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from effrepro.errors import UsageError
from effrepro.specdec.tree import DraftTree


@dataclass
class SamplingConfig:
    """Target sampling: ``temperature`` 0 = greedy; ``top_p`` (1 = off) / ``top_k`` (0 = off) on every branch."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    official_leaf_bonus: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UsageError(f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}: need "
                             "temperature >= 0, 0 < top_p <= 1, top_k >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def warpers(self) -> list:
        warpers: list = []
        if self.temperature not in (0.0, 1.0):
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores [N, V]`` after temperature / top-k / top-p (each warper called directly: a
        ``LogitsProcessorList`` inspects signatures on every call, which costs more than the warping here)."""
        for warper in self.warpers():
            scores = warper(None, scores)
        return scores


def target_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The processed target distribution(s) in float64: ``softmax(warpers(logits))`` over the last dim."""
    scores = sampling.warp(logits.double().reshape(-1, logits.shape[-1]))
    return torch.softmax(scores, dim=-1).reshape(logits.shape)


def select_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> int:
    """The target's next token from one logits row: argmax when greedy, else a draw from the processed p."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = target_probs(logits, sampling)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@dataclass
class Verdict:
    """One verification: the accepted node ids (root first), the bonus token and how many drafts were accepted."""

    nodes: torch.Tensor  # [1 + accepted] node ids along the accepted path, root first
    bonus_token: int
    accepted: int


def greedy_verify(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Longest path whose every node equals the target's argmax at its parent (``logits [N, V]``)."""
    predicted = logits.argmax(dim=-1).cpu()
    paths = tree.retrieve_indices.cpu()
    tokens = tree.tokens.cpu()
    valid = paths[:, 1:] >= 0
    child_tokens = tokens[paths[:, 1:].clamp(min=0)]
    parent_prediction = predicted[paths[:, :-1].clamp(min=0)]
    match = (child_tokens == parent_prediction) & valid
    accepted_per_row = torch.cumprod(match.long(), dim=1).sum(dim=1)
    best = int(torch.argmax(accepted_per_row))  # first row among ties
    accepted = int(accepted_per_row[best])
    nodes = paths[best, : accepted + 1]
    return Verdict(nodes=nodes, bonus_token=int(predicted[nodes[-1]]), accepted=accepted)


def greedy_verify_features(tree: DraftTree, features: torch.Tensor,
                           lm_head: Callable[[torch.Tensor], torch.Tensor]) -> Verdict:
    """``greedy_verify`` that runs the target's LM head only on the rows it reads: the nodes followed by another
    on some row of ``retrieve_indices`` (in a tree: the nodes with children, whose argmax decides their children),
    then the bonus row at the end of the accepted path if it was not among them.
    ``features [N, H]`` from ``TargetAdapter.verify(tree, logits=False)``; ``lm_head`` maps rows to logits.
    Same verdict as ``greedy_verify`` on the full logits (a typical EAGLE-2 tree has about a third of its nodes
    with children)."""
    paths = tree.retrieve_indices.cpu()
    tokens = tree.tokens.cpu()
    valid = paths[:, 1:] >= 0
    read = torch.unique(paths[:, :-1][valid])  # nodes followed by a node on some row: inner nodes of a tree
    predicted = torch.full((tree.size,), -1, dtype=torch.long)
    if read.numel():
        predicted[read] = lm_head(features[read.to(features.device)]).argmax(dim=-1).cpu()
    child_tokens = tokens[paths[:, 1:].clamp(min=0)]
    parent_prediction = predicted[paths[:, :-1].clamp(min=0)]
    match = (child_tokens == parent_prediction) & valid
    accepted_per_row = torch.cumprod(match.long(), dim=1).sum(dim=1)
    best = int(torch.argmax(accepted_per_row))  # first row among ties
    accepted = int(accepted_per_row[best])
    nodes = paths[best, : accepted + 1]
    last = int(nodes[-1])
    bonus = int(predicted[last])
    if bonus < 0:  # a leaf: its one row now
        bonus = int(lm_head(features[last:last + 1]).argmax(dim=-1)[0])
    return Verdict(nodes=nodes, bonus_token=bonus, accepted=accepted)


def sample_verify(tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig,
                  generator: torch.Generator | None = None) -> Verdict:
    """EAGLE-2's multi-candidate rule with q = 1 (module docstring); uses ``generator`` for every draw."""
    if sampling.greedy:
        return greedy_verify(tree, logits)
    tokens = tree.tokens.cpu()
    parents = tree.parents.cpu()
    probs_all = target_probs(logits.cpu(), sampling)
    path = [0]
    current = 0
    while True:
        children = torch.nonzero(parents == current).flatten().tolist()
        probs = probs_all[current].clone()
        if not children and sampling.official_leaf_bonus:
            probs = torch.softmax(logits[current].double().cpu(), dim=-1)
        accepted_child = None
        for child in children:
            token = int(tokens[child])
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < float(probs[token]):
                accepted_child = child
                break
            probs[token] = 0.0
            total = probs.sum()
            if total <= 0:  # every token with mass was a rejected candidate: impossible up to round-off
                probs = probs_all[current].clone()
                break
            probs /= total
        if accepted_child is None:
            bonus = int(torch.multinomial(probs, 1, generator=generator))
            nodes = torch.tensor(path, dtype=torch.long)
            return Verdict(nodes=nodes, bonus_token=bonus, accepted=len(path) - 1)
        path.append(accepted_child)
        current = accepted_child
