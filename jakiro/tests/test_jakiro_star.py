"""Jakiro*: static tree, per-expert drafting, and the sampling distribution of both verification rules."""

import dataclasses
import math

import pytest
import torch
from effrepro.specdec import tree_from_parents
from effrepro.specdec.verify import SamplingConfig, target_probs
from jakiro.jakiro import (
    JAKIRO_STAR_TREE,
    JakiroConfig,
    JakiroDraft,
    StaticTree,
    corrected_proposals,
    draw_children,
    fold,
    make_proposer,
    official_child_probs,
    star_sample_verify,
)

V = 4
SMALL_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0))


def test_official_static_tree_shape():
    static = StaticTree.from_choices(JAKIRO_STAR_TREE)
    assert static.size == 27 and static.max_depth == 6
    per_level = [sum(1 for d in static.depth if d == level) for level in range(1, 7)]
    assert per_level == [4, 8, 8, 3, 2, 1]


def test_fold_and_official_probability_gathers_second_half():
    pi = torch.tensor([0.1, 0.2, 0.05, 0.15, 0.3, 0.2])  # V = 3: expert A = [.1 .2 .05], expert B = [.15 .3 .2]
    draws = torch.tensor([4, 0])  # token 1 from B, then token 0 from A
    assert fold(draws, 3).tolist() == [1, 0]
    q = official_child_probs(pi, draws, 3)
    # both gathered from B's half: 0.3, then 0.15 / (1 - 0.3)
    torch.testing.assert_close(q, torch.tensor([0.3, 0.15 / 0.7]))
    proposals = corrected_proposals(pi, draws, 3)
    torch.testing.assert_close(proposals[0], torch.tensor([0.25, 0.5, 0.25]))  # A + B halves
    torch.testing.assert_close(proposals[1], torch.tensor([0.25, 0.2, 0.25]) / 0.7)  # draw 4 removed


def random_tables(seed: int):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5  # logits of x_{t+1} given x_t
    draft = torch.randn(V, 2, V, generator=g, dtype=torch.float64) * 1.5  # two experts' logits given x_t
    return target, draft


def toy_tree(skeleton, kids_of, root: int, processed, pis, generator, rule: str):
    """A Jakiro* tree for a bigram world: node logits depend on the node's token (what the proposer records)."""
    tokens = torch.zeros(skeleton.size, dtype=torch.long)
    tokens[0] = root
    extras = {"draws": {}, "pi": {}, "expert_logits": {}, "rule": rule, "vocab": V}
    for node, kids in kids_of:
        context = int(tokens[node])
        draws = draw_children(pis[context], len(kids), generator)
        tokens[kids] = fold(draws, V)
        extras["pi"][node], extras["draws"][node], extras["expert_logits"][node] = pis[context], draws, processed[
            context]
    return dataclasses.replace(skeleton, tokens=tokens, extras=extras)


def sample_sequences(rule: str, sampling: SamplingConfig, n: int, length: int = 2, seed: int = 0):
    target, draft = random_tables(seed)
    static = StaticTree.from_choices(SMALL_TREE)
    skeleton = tree_from_parents(torch.zeros(static.size, dtype=torch.long), torch.tensor(static.parents))
    kids_of = [(node, static.children(node)) for node in range(static.size) if static.children(node)]
    processed = torch.stack([sampling.warp(draft[c].clone()) for c in range(V)])  # [V, 2, V]
    pis = torch.softmax(torch.cat([processed[:, 0], processed[:, 1]], dim=-1), dim=-1)  # [V, 2V]
    gen = torch.Generator().manual_seed(seed + 1)
    counts = torch.zeros([V] * length)
    root = 0
    for _ in range(n):
        out: list[int] = []
        current = root
        while len(out) < length:
            tree = toy_tree(skeleton, kids_of, current, processed, pis, gen, rule)
            logits = target[tree.tokens]  # bigram target: node i's next-token logits given its token
            verdict = star_sample_verify(tree, logits, sampling, rule, gen)
            out += tree.tokens[verdict.nodes[1:]].tolist() + [verdict.bonus_token]
            current = out[-1]
        counts[tuple(out[:length])] += 1
    # exact joint distribution of the first `length` tokens under the (processed) target
    exact = torch.ones([V] * length, dtype=torch.float64)
    probs = target_probs(target, sampling)
    for index in torch.cartesian_prod(*[torch.arange(V)] * length).tolist():
        prev, p = root, 1.0
        for token in index:
            p *= float(probs[prev, token])
            prev = token
        exact[tuple(index)] = p
    return counts / n, exact, counts


def chi_square_p_value(counts: torch.Tensor, exact: torch.Tensor) -> float:
    """Upper tail of the chi-square statistic (Wilson-Hilferty normal approximation; dof = cells - 1).

    Cells the target cannot produce must be empty (any count there gives p = 0)."""
    counts, exact = counts.flatten(), exact.flatten()
    possible = exact > 0
    if bool((counts[~possible] > 0).any()):
        return 0.0
    n = counts.sum()
    expected = exact[possible] * n
    stat = float(((counts[possible] - expected) ** 2 / expected).sum())
    dof = int(possible.sum()) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_p=0.9)],
                         ids=["T1", "T0.7-top_p0.9"])
def test_corrected_rule_is_distributed_as_the_target(sampling):
    freq, exact, counts = sample_sequences("corrected", sampling, n=3000)
    tv = 0.5 * float((freq - exact).abs().sum())
    assert tv < 0.05, tv  # sampling noise at n = 3000 over 16 cells is about 0.02
    assert chi_square_p_value(counts, exact) > 1e-3


def test_official_rule_is_biased():
    """The literal released rule (wrong-half q, softmax-of-probabilities residual) is measurably off."""
    freq, exact, counts = sample_sequences("official", SamplingConfig(temperature=1.0), n=800)
    tv = 0.5 * float((freq - exact).abs().sum())
    assert tv > 0.1, tv  # about 0.46 on this toy (V = 4, random experts)
    assert chi_square_p_value(counts, exact) < 1e-6


def test_star_proposer_builds_the_static_tree_with_six_forwards():
    torch.manual_seed(0)
    draft = JakiroDraft(JakiroConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=50, variant="star")).double()
    lm = torch.randn(50, 32, dtype=torch.float64)
    proposer = make_proposer(draft, lm, None, sampling=SamplingConfig(temperature=1.0), seed=3)
    feats, ids = torch.randn(5, 32, dtype=torch.float64), torch.randint(0, 50, (5,))
    tree = proposer.propose(feats, ids)
    assert tree.size == 27 and int(tree.depth.max()) == 6 and proposer.last_forwards == 6
    assert int(tree.tokens[0]) == int(ids[-1]) and proposer.context_length == 5
    for node, draws in tree.extras["draws"].items():
        kids = torch.nonzero(tree.parents == node).flatten()
        assert torch.equal(tree.tokens[kids], fold(draws, 50))
    # same seed -> same tree after reset; T = 0 extension: deterministic distinct children
    proposer.reset()
    again = proposer.propose(feats, ids)
    assert torch.equal(again.tokens, tree.tokens)
    greedy = make_proposer(draft, lm, None, sampling=SamplingConfig(temperature=0.0))
    g_tree = greedy.propose(feats, ids)
    for node in range(g_tree.size):
        kids = torch.nonzero(g_tree.parents == node).flatten()
        assert len(set(g_tree.tokens[kids].tolist())) == kids.numel()
