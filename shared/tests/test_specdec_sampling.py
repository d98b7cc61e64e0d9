"""Sampling verification is lossless: the output follows the target's processed distribution exactly.

The expected distributions are computed by exact enumeration over a tiny vocabulary and compared with the
empirical ones by a chi-square test (and a total-variation bound). A power check shows the test can fail: the
official rule that samples the bonus token at a leaf from the *raw* softmax is detectably wrong at T != 1 / top-p.
"""

import itertools

import pytest
import torch
from effrepro.specdec import (
    GenerationConfig,
    SamplingConfig,
    TargetAdapter,
    TreeConfig,
    build_eagle_head,
    sample_verify,
    speculative_generate,
    target_probs,
    tree_from_parents,
)
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

V = 6


def chi_square_p(counts: dict, expected: dict, n: int) -> float:
    """p-value of a chi-square goodness-of-fit test, pooling outcomes with expected count < 5 into one bin."""
    observed, wanted, rest_o, rest_e = [], [], 0.0, 0.0
    for key, prob in expected.items():
        if prob * n >= 5:
            observed.append(counts.get(key, 0))
            wanted.append(prob * n)
        else:
            rest_o += counts.get(key, 0)
            rest_e += prob * n
    impossible = sum(c for k, c in counts.items() if k not in expected)
    if impossible:
        return 0.0  # an outcome the target gives probability 0
    if rest_e > 0:
        observed.append(rest_o)
        wanted.append(rest_e)
    wanted = [w * sum(observed) / sum(wanted) for w in wanted]  # exact totals (round-off)
    return float(chisquare(observed, wanted).pvalue)


def total_variation(counts: dict, expected: dict, n: int) -> float:
    keys = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(k, 0) / n - expected.get(k, 0.0)) for k in keys)


class VirtualTarget:
    """A trigram target: logits(next | ..., a, b) = TABLE[a, b]; peaked along 0 -> 1 -> 2 -> 3 -> ..."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, V, V, generator=gen, dtype=torch.float64)
        for a in range(V):
            for b in range(V):
                self.table[a, b, (b + 1) % V] += 2.5  # the chain the tree drafts is likely

    def logits(self, context: list[int]) -> torch.Tensor:
        return self.table[context[-2], context[-1]]


def run_cycles(sampling: SamplingConfig, n: int, seed: int = 0) -> tuple[dict, dict]:
    """Emitted tokens of ``n`` verifications of a fixed tree, completed to 3 tokens by direct sampling."""
    target = VirtualTarget()
    prefix = [4, 0]  # the root token is 0
    # root 0 -> children 1 (chain), 3, 3 (a duplicate sibling); 1 -> 2 -> 3 (leaf); 1 -> 5
    tokens = torch.tensor([0, 1, 3, 3, 2, 5, 3])
    parents = torch.tensor([-1, 0, 0, 0, 1, 1, 4])
    tree = tree_from_parents(tokens, parents)
    contexts = []
    for node in range(tree.size):
        path = torch.nonzero(tree.tree_mask[node]).flatten().tolist()
        contexts.append(prefix[:-1] + tokens[path].tolist())
    logits = torch.stack([target.logits(c) for c in contexts])
    gen = torch.Generator().manual_seed(seed)
    plain = SamplingConfig(sampling.temperature, sampling.top_p, sampling.top_k)
    cache: dict = {}
    counts: dict = {}
    for _ in range(n):
        verdict = sample_verify(tree, logits, sampling, gen)
        out = tokens[verdict.nodes[1:]].tolist() + [verdict.bonus_token]
        while len(out) < 3:
            key = tuple(out)
            if key not in cache:
                cache[key] = target_probs(target.logits(prefix + out), plain)
            out.append(int(torch.multinomial(cache[key], 1, generator=gen)))
        key = tuple(out[:3])
        counts[key] = counts.get(key, 0) + 1
    expected = {}
    for seq in itertools.product(range(V), repeat=3):
        prob = 1.0
        for i, token in enumerate(seq):
            prob *= float(target_probs(target.logits(prefix + list(seq[:i])), plain)[token])
        if prob > 0:
            expected[seq] = prob
    return counts, expected


@pytest.mark.parametrize("sampling", [SamplingConfig(1.0), SamplingConfig(0.6, top_p=0.8),
                                      SamplingConfig(1.4, top_k=3)], ids=["T1", "T0.6-top_p0.8", "T1.4-top_k3"])
def test_sample_verify_matches_exact_distribution(sampling):
    n = 8000
    counts, expected = run_cycles(sampling, n)
    assert chi_square_p(counts, expected, n) > 1e-3
    assert total_variation(counts, expected, n) < 0.05  # sampling noise at n = 8000 is about 0.01-0.04 here


def test_official_leaf_bonus_is_detectably_lossy_at_low_temperature():
    n = 6000
    lossy = SamplingConfig(0.6, top_p=0.8, official_leaf_bonus=True)
    counts, expected = run_cycles(lossy, n)
    assert chi_square_p(counts, expected, n) < 1e-6  # the test has power: the raw-softmax bonus is wrong here
    assert total_variation(counts, expected, n) > 0.1


def test_speculative_sampling_end_to_end_on_a_tiny_llama():
    """Two generated tokens of the full loop (prefill root + first verification) vs the exact joint."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=V, max_position_embeddings=64)
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # a peaked target, so drafts get accepted and the tree path is used
    adapter = TargetAdapter(model, max_length=64)
    head = build_eagle_head(config, model.get_input_embeddings().weight).double()
    proposer = head.make_proposer(model.lm_head.weight, TreeConfig(top_k=3, depth=2, total_tokens=8))
    prompt = torch.tensor([1, 4, 2])
    sampling = SamplingConfig(0.8, top_p=0.9)
    expected = {}
    with torch.no_grad():
        first = target_probs(model(prompt[None]).logits[0, -1], sampling)
        for a in range(V):
            second = target_probs(model(torch.cat([prompt, torch.tensor([a])])[None]).logits[0, -1], sampling)
            for b in range(V):
                if float(first[a] * second[b]) > 0:
                    expected[(a, b)] = float(first[a] * second[b])
    n, counts, accepted = 1000, {}, 0
    for i in range(n):
        result = speculative_generate(adapter, proposer, prompt,
                                      GenerationConfig(max_new_tokens=2, sampling=sampling, seed=i))
        key = tuple(result.tokens)
        counts[key] = counts.get(key, 0) + 1
        accepted += result.accept_lengths[0]
    assert accepted > 0.2 * n  # the draft path was exercised
    assert chi_square_p(counts, expected, n) > 1e-3
