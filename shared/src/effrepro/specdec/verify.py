"""Verification of a draft tree against the target's tree logits.

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
  which is exact only at T = 1 without top-p/top-k: elsewhere the bonus follows the wrong distribution).
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


# Top-2 logit gaps below these count as near-ties (``near_tie_tolerance``): a tree pass and a sequential pass
# compute the same logits in another order (measured on SmolLM2 in fp32: about 5e-5 apart), so an argmax whose
# runner-up is closer than a few times that may flip between them. Half precision rounds logits of size ~10-30 to
# steps of 0.0078-0.0156 (fp16) and 0.0625-0.125 (bf16); the tolerances leave a margin over those steps.
NEAR_TIE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 0.1, torch.bfloat16: 0.5}


def near_tie_tolerance(dtype: torch.dtype) -> float:
    """The top-2 logit gap below which a greedy decision counts as a near-tie, for a target computing in
    ``dtype`` (``NEAR_TIE_TOLERANCE``; other dtypes: float32's)."""
    return NEAR_TIE_TOLERANCE.get(dtype, NEAR_TIE_TOLERANCE[torch.float32])


def logit_gaps(logits: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32 on the CPU: the largest minus the second-largest logit of every row of ``logits [n, V]``
    (how far each greedy decision is from a tie)."""
    if logits.shape[-1] < 2:
        return torch.full(logits.shape[:-1], float("inf"))
    top = torch.topk(logits.float(), 2, dim=-1).values
    return (top[..., 0] - top[..., 1]).cpu()


@dataclass
class Verdict:
    """One verification: the accepted node ids (root first), the bonus token and how many drafts were accepted.

    ``gaps`` (greedy verification only): the top-2 logit gap at every node of ``nodes``, i.e. at each position
    whose argmax decided an emitted token (the next accepted draft, or the bonus token after the last node)."""

    nodes: torch.Tensor  # [1 + accepted] node ids along the accepted path, root first
    bonus_token: int
    accepted: int
    gaps: torch.Tensor | None = None


def _longest_path(tree: DraftTree, predicted: torch.Tensor) -> torch.Tensor:
    """The accepted node ids (root first): the longest prefix of a row of ``retrieve_indices`` whose every node
    equals ``predicted`` (the target's argmax, ``[N]``) at its predecessor; the first row among ties."""
    paths = tree.retrieve_indices.cpu()
    tokens = tree.tokens.cpu()
    valid = paths[:, 1:] >= 0
    child_tokens = tokens[paths[:, 1:].clamp(min=0)]
    parent_prediction = predicted[paths[:, :-1].clamp(min=0)]
    match = (child_tokens == parent_prediction) & valid
    accepted_per_row = torch.cumprod(match.long(), dim=1).sum(dim=1)
    best = int(torch.argmax(accepted_per_row))  # first row among ties
    return paths[best, : int(accepted_per_row[best]) + 1]


def greedy_verify(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Longest path whose every node equals the target's argmax at its parent (``logits [N, V]``)."""
    predicted = logits.argmax(dim=-1).cpu()
    nodes = _longest_path(tree, predicted)
    return Verdict(nodes=nodes, bonus_token=int(predicted[nodes[-1]]), accepted=nodes.numel() - 1,
                   gaps=logit_gaps(logits[nodes.to(logits.device)]))


def greedy_verify_features(tree: DraftTree, features: torch.Tensor,
                           lm_head: Callable[[torch.Tensor], torch.Tensor]) -> Verdict:
    """``greedy_verify`` that runs the target's LM head only on the rows it reads: the nodes followed by another
    on some row of ``retrieve_indices`` (in a tree: the nodes with children, whose argmax decides their children),
    then the bonus row at the end of the accepted path if it was not among them.
    ``features [N, H]`` from ``TargetAdapter.verify(tree, logits=False)``; ``lm_head`` maps rows to logits.
    Same verdict as ``greedy_verify`` on the full logits (a typical EAGLE-2 tree has about a third of its nodes
    with children)."""
    paths = tree.retrieve_indices.cpu()
    read = torch.unique(paths[:, :-1][paths[:, 1:] >= 0])  # nodes followed by a node on some row: inner nodes
    predicted = torch.full((tree.size,), -1, dtype=torch.long)
    gaps = torch.full((tree.size,), float("nan"))
    if read.numel():
        rows = lm_head(features[read.to(features.device)])
        predicted[read] = rows.argmax(dim=-1).cpu()
        gaps[read] = logit_gaps(rows)
    nodes = _longest_path(tree, predicted)
    accepted = nodes.numel() - 1
    last = int(nodes[-1])
    bonus = int(predicted[last])
    if bonus < 0:  # a leaf: its one row now
        row = lm_head(features[last:last + 1])
        bonus = int(row.argmax(dim=-1)[0])
        gaps[last] = logit_gaps(row)[0]
    return Verdict(nodes=nodes, bonus_token=bonus, accepted=accepted, gaps=gaps[nodes])


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


def rows_sample_verify(tree: DraftTree, logits: torch.Tensor, sampling: SamplingConfig,
                       generator: torch.Generator | None = None) -> Verdict:
    """EAGLE-2's official sampling rule (``evaluate_posterior``), which walks the rows of ``retrieve_indices``
    instead of the tree's parent pointers: at step i the candidates are the distinct tokens at column i of the
    rows whose first i tokens equal the accepted ones (row order), each tried against the processed target
    distribution at column i - 1 of the first such row (accept with probability p(x), else p(x) = 0 and
    renormalise); the bonus is drawn from the last residual, or from the processed distribution at the last
    accepted node. On a tree's own rows this is the parents walk of ``sample_verify`` up to the order in which
    siblings are tried (exact either way). On rows edited after the tree was built (Gumiho's FTA padding) it is
    what the official code verifies: a padded entry is tried as if it were a child. Greedy: ``greedy_verify``."""
    if sampling.greedy:
        return greedy_verify(tree, logits)
    paths = tree.retrieve_indices.cpu()
    tokens = tree.tokens.cpu()
    candidates = torch.where(paths >= 0, tokens[paths.clamp(min=0)], torch.full_like(paths, -1))
    probs_all = target_probs(logits.cpu(), sampling)
    width = paths.shape[1]
    accepted, best, adjusted, probs = 1, 0, False, None
    for column in range(1, width):
        if column != accepted:
            break
        matching = torch.nonzero((candidates[:, :accepted] == candidates[best, :accepted]).all(dim=1)).flatten()
        probs = probs_all[int(paths[int(matching[0]), column - 1])].clone()
        tried: set[int] = set()
        for row in matching.tolist():
            token = int(candidates[row, column])
            if token < 0 or token in tried:
                continue
            tried.add(token)
            if float(torch.rand((), generator=generator, dtype=torch.float64)) <= float(probs[token]):
                accepted, best = accepted + 1, row
                break
            probs[token] = 0.0
            total = probs.sum()
            if total <= 0:  # every token with mass was a rejected candidate: impossible up to round-off
                probs = probs_all[int(paths[int(matching[0]), column - 1])].clone()
                break
            probs /= total
            adjusted = True
    if not (adjusted and accepted != width) or probs is None:
        probs = probs_all[int(paths[best, accepted - 1])]
    bonus = int(torch.multinomial(probs, 1, generator=generator))
    return Verdict(nodes=paths[best, :accepted].clone(), bonus_token=bonus, accepted=accepted - 1)
