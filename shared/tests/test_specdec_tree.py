"""Draft-tree primitives and the EAGLE-2 proposer on a hand-computed example."""

import math

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    DraftHead,
    DraftLevel,
    EagleProposer,
    TreeConfig,
    ancestor_mask,
    expand_topk,
    tree_from_levels,
    tree_from_parents,
)
from torch import nn


def _is_ancestor_or_self(parents: list[int], i: int, j: int) -> bool:
    while i >= 0:
        if i == j:
            return True
        i = parents[i]
    return False


def check_invariants(tree, pool_scores: list[float] | None = None, total: int | None = None) -> None:
    parents = tree.parents.tolist()
    n = len(parents)
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, n)), "parents precede children"
    for i in range(n):
        for j in range(n):
            assert bool(tree.tree_mask[i, j]) == _is_ancestor_or_self(parents, i, j)
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    assert tree.depth.tolist() == depth
    leaves = [i for i in range(n) if i not in parents]
    rows = tree.retrieve_indices.tolist()
    assert sorted(row[[k for k, v in enumerate(row) if v >= 0][-1]] for row in rows) == leaves
    for row in rows:
        real = [v for v in row if v >= 0]
        assert real[0] == 0 and all(v == -1 for v in row[len(real):])
        assert all(parents[b] == a for a, b in zip(real, real[1:], strict=False))
        scores = tree.scores[real].tolist()
        assert all(b <= a for a, b in zip(scores, scores[1:], strict=False)), "scores fall along a path"
    if pool_scores is not None:
        kept = sorted(tree.scores[1:].tolist(), reverse=True)
        assert kept == pytest.approx(sorted(pool_scores, reverse=True)[: total - 1])


def random_levels(seed: int, k: int = 3, depth: int = 4, ties: bool = False) -> list[DraftLevel]:
    """EAGLE-2-style levels: k candidates at level 1, then k*k children of the k best of the previous level."""
    gen = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(k, generator=gen), 0)
    if ties:
        logp = torch.round(logp * 2) / 2
    levels = [DraftLevel(torch.randint(0, 50, (k,), generator=gen), logp.sort(descending=True).values,
                         torch.full((k,), -1))]
    for _ in range(depth - 1):
        prev = levels[-1]
        chosen = torch.topk(prev.scores, k).indices
        child = torch.log_softmax(torch.randn(k, k, generator=gen), -1)
        if ties:
            child = torch.round(child * 2) / 2
            child[0, 0] = 0.0  # a child with the parent's exact score (fp16 log-prob 0)
        scores = (prev.scores[chosen][:, None] + child).flatten()
        levels.append(DraftLevel(torch.randint(0, 50, (k * k,), generator=gen), scores,
                                 chosen.repeat_interleave(k)))
    return levels


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("total", [2, 9, 25, 200])
def test_tree_from_levels_invariants(seed, ties, total):
    levels = random_levels(seed, ties=ties)
    tree = tree_from_levels(levels, 7, total)
    pool = torch.cat([lv.scores for lv in levels]).tolist()
    assert tree.size == min(total, len(pool) + 1) and int(tree.tokens[0]) == 7
    check_invariants(tree, pool, total)


def test_tree_from_parents_rejects_bad_parents():
    with pytest.raises(UsageError):
        tree_from_parents(torch.tensor([1, 2, 3]), torch.tensor([-1, 2, 0]))
    with pytest.raises(UsageError):
        tree_from_parents(torch.tensor([1, 2]), torch.tensor([0, 0]))


def test_ancestor_mask_and_paths_of_a_small_tree():
    #      0
    #     / \
    #    1   2
    #   / \   \
    #  3   4   5
    tree = tree_from_parents(torch.arange(6), torch.tensor([-1, 0, 0, 1, 1, 2]))
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2]
    assert tree.retrieve_indices.tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]
    assert ancestor_mask(tree.parents)[4].tolist() == [True, True, False, False, True, False]
    assert tree.children(1) == [3, 4]


def test_expand_topk_beam_step():
    parent = torch.tensor([-0.1, -1.0])
    logp = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]))
    tokens, scores, keep, rows = expand_topk(parent, logp, 2, 3)
    assert tokens.tolist() == [[0, 1], [1, 0]]
    assert torch.allclose(scores, torch.stack([-0.1 + logp[0, [0, 1]], -1.0 + logp[1, [1, 0]]]))
    assert keep.tolist() == [0, 1, 2] and rows.tolist() == [0, 0, 1]


# ----- a hand-set head: the next-token distribution depends only on the input token -----
V = 6
TABLE = torch.tensor([
    [0.00, 0.50, 0.35, 0.05, 0.05, 0.05],  # after token 0 (the root)
    [0.05, 0.00, 0.10, 0.60, 0.17, 0.08],  # after 1
    [0.05, 0.05, 0.00, 0.20, 0.10, 0.60],  # after 2
    [0.60, 0.25, 0.05, 0.00, 0.05, 0.05],  # after 3
    [0.20, 0.20, 0.20, 0.20, 0.00, 0.20],  # after 4
    [0.10, 0.10, 0.50, 0.20, 0.10, 0.00],  # after 5
]).clamp(min=1e-9).log()


class TableHead(DraftHead):
    """``decode`` returns log TABLE[token] as the draft feature; with lm_head = I the logits are that row."""

    hidden_size = V
    vocab_size = V

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.layers = nn.ModuleList([nn.Identity()])
        self.calls = []

    def decode(self, features, token_ids, position_ids, allowed, cache=None):
        self.calls.append((position_ids.clone(), allowed.clone()))
        return TABLE[token_ids]


def test_eagle_proposer_known_tree():
    """K=2, depth=2 (1 + 2 forwards, 3 levels). By hand, with scores as probabilities:

    level 1 (after root 0): 1 (.50), 2 (.35)
    level 2: 1->3 (.30), 1->4 (.085), 2->5 (.21), 2->3 (.07); kept for expansion: 1->3, 2->5
    level 3: 3->0 (.18), 3->1 (.075), 5->2 (.105), 5->3 (.042)
    best 4 of all: .50, .35, .30, .21 -> nodes [1, 2, 3|1, 5|2]; best 6 adds .18 (0|3) and .105 (2|5).
    """
    head = TableHead()
    proposer = EagleProposer(head, torch.eye(V), TreeConfig(top_k=2, depth=2, total_tokens=5))
    features = torch.zeros(3, V)
    levels = proposer.propose_levels(features, torch.tensor([4, 5, 0]))
    assert [lv.tokens.tolist() for lv in levels] == [[1, 2], [3, 4, 5, 3], [0, 1, 2, 3]]
    assert torch.allclose(levels[1].scores.exp(), torch.tensor([0.30, 0.085, 0.21, 0.07]), atol=1e-6)
    assert torch.allclose(levels[2].scores.exp(), torch.tensor([0.18, 0.075, 0.105, 0.042]), atol=1e-6)
    assert levels[1].parents.tolist() == [0, 0, 1, 1] and levels[2].parents.tolist() == [0, 0, 2, 2]
    # the official global parent index of the second tree pass (i = 1): 1 + K^2*max(0, i-1) + K*[i>0] = 3
    offset = 1 + 4 * max(0, 1 - 1) + 2 * 1
    assert (levels[2].parents + offset).tolist() == [3, 3, 5, 5]
    assert proposer.last_forwards == 3
    tree = proposer.propose(features, torch.tensor([4, 5, 0]))
    assert tree.tokens.tolist() == [0, 1, 2, 3, 5] and tree.parents.tolist() == [-1, 0, 0, 1, 2]
    assert tree.retrieve_indices.tolist() == [[0, 1, 3], [0, 2, 4]]
    assert math.isclose(float(tree.scores[4].exp()), 0.21, rel_tol=1e-5)
    proposer.total_tokens = 7
    tree = proposer.propose(features, torch.tensor([0]))
    assert tree.tokens.tolist() == [0, 1, 2, 3, 5, 0, 2] and tree.parents.tolist() == [-1, 0, 0, 1, 2, 3, 4]
    check_invariants(tree)


def test_eagle_proposer_tree_masks_and_positions():
    head = TableHead()
    proposer = EagleProposer(head, torch.eye(V), TreeConfig(top_k=2, depth=2, total_tokens=5))
    proposer.propose_levels(torch.zeros(3, V), torch.tensor([4, 5, 0]))
    (p0, a0), (p1, a1), (p2, a2) = head.calls
    assert p0.tolist() == [[0, 1, 2]] and a0[0].tolist() == torch.ones(3, 3).tril().bool().tolist()
    # tree passes: one shared position per pass, the context plus ancestors-or-self
    assert p1.tolist() == [[0, 0]] and p2.tolist() == [[1, 1]]  # the stub never fills the cache: context 0
    assert a1[0].tolist() == [[True, False], [False, True]]
    # second pass: the kept nodes are 1->3 (row 0 of pass 1) and 2->5 (row 1)
    assert a2[0].tolist() == [[True, False, True, False], [False, True, False, True]]


def _path_score(head, lm_head, feats, next_ids, path_tokens):
    """Sum of log p(token_d | path before it) from running the head causally (``train_forward``) along the path,
    with no cache and no tree; each step feeds the previous step's output feature with the drafted token, as EAGLE
    drafting does."""
    features, ids = feats.clone(), next_ids.clone()
    score = 0.0
    for token in path_tokens:
        out = head.train_forward(features[None], ids[None])[0, -1]
        score += float(torch.log_softmax(out @ lm_head.t(), -1)[token])
        features, ids = torch.cat([features, out[None]]), torch.cat([ids, torch.tensor([token])])
    return score


def _tree_path(levels, level, index):
    tokens = []
    while level >= 0:
        tokens.append(int(levels[level].tokens[index]))
        index, level = int(levels[level].parents[index]), level - 1
    return tokens[::-1]


@pytest.mark.parametrize("rounds", [1, 2])
def test_eagle_tree_scores_equal_causal_drafting_along_each_path(rounds):
    """Every node's cumulative score in the cached, tree-masked draft equals the causal per-path run of the head.

    Lossless verification hides draft bugs (a wrong position id, tree mask or cached key only lowers tau), so this
    checks the draft itself: a real EAGLE head (random weights, one decoder layer) on random target features, with
    a second round that extends the draft cache the way the generate loop does.
    """
    from effrepro.specdec import build_eagle_head
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=40, num_hidden_layers=1)
    embed = torch.randn(40, 32)
    head = build_eagle_head(config, embed).eval()
    lm_head = torch.randn(40, 32)
    proposer = EagleProposer(head, lm_head, TreeConfig(top_k=3, depth=3, total_tokens=10), max_length=64)
    feats, ids = torch.randn(7, 32), torch.randint(0, 40, (7,))
    split = 4 if rounds == 2 else 0
    if split:
        proposer.propose_levels(feats[:split], ids[:split])  # round 1; its tree KV is dropped, context kept
    levels = proposer.propose_levels(feats[split:], ids[split:])
    assert proposer.context_length == 7
    with torch.no_grad():
        for level, lv in enumerate(levels):
            for index in range(len(lv.tokens)):
                path = _tree_path(levels, level, index)
                expected = _path_score(head, lm_head, feats, ids, path)
                assert float(lv.scores[index]) == pytest.approx(expected, abs=1e-4), (level, index, path)
