"""End-to-end decoding with the engine: greedy losslessness with the Jakiro and Jakiro* heads (any weights)."""

import pytest
import torch
from effrepro.specdec import (
    GenerationConfig,
    SamplingConfig,
    TreeConfig,
    autoregressive_generate,
    speculative_generate,
)
from jakiro.jakiro import make_proposer

VOCAB = 16  # the conftest target's vocabulary


PROPOSERS = {
    "jakiro": ("jakiro", {}),
    "jakiro_parent": ("jakiro", {"alignment": "parent"}),
    "jakiro_forward_last": ("jakiro", {"last_level": "forward"}),
    "jakiro_star_greedy": ("star", {"sampling": SamplingConfig(temperature=0.0)}),
}


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_greedy_output_equals_plain_decoding(target, name, draft_for):
    model, adapter = target
    variant, options = PROPOSERS[name]
    draft = draft_for(model, variant)
    lm_head = model.get_output_embeddings().weight.detach()
    tree = TreeConfig(top_k=4, depth=4, total_tokens=16)
    config = GenerationConfig(max_new_tokens=32)
    accepted = 0
    for prompt_seed in range(4):
        prompt = torch.randint(0, VOCAB, (5 + prompt_seed,), generator=torch.Generator().manual_seed(prompt_seed))
        proposer = make_proposer(draft, lm_head, tree, **options)
        spec = speculative_generate(adapter, proposer, prompt, config)
        plain = autoregressive_generate(adapter, prompt, config)
        assert spec.tokens == plain.tokens
        accepted += sum(spec.accept_lengths)
        expected_forwards = {"jakiro_forward_last": 5, "jakiro_star_greedy": 6}.get(name, 4)
        assert spec.draft_forwards == expected_forwards * spec.cycles
    assert accepted > 0  # some drafts were accepted, so the accept/commit path ran


def test_star_sampling_runs_through_the_engine_with_its_own_verifier(target, draft_for):
    model, adapter = target
    draft = draft_for(model, "star")
    lm_head = model.get_output_embeddings().weight.detach()
    sampling = SamplingConfig(temperature=1.0)
    config = GenerationConfig(max_new_tokens=30, sampling=sampling, seed=0)
    prompt = torch.arange(6) % VOCAB
    calls = []
    proposer = make_proposer(draft, lm_head, None, sampling=sampling)
    original_verify = proposer.verify

    def counting_verify(*args, **kwargs):
        calls.append(1)
        return original_verify(*args, **kwargs)

    proposer.verify = counting_verify
    result = speculative_generate(adapter, proposer, prompt, config)  # the engine calls tree.extras["verifier"]
    assert result.new_tokens == 30 and len(calls) == result.cycles
    # the same seeds reproduce the same output
    proposer2 = make_proposer(draft, lm_head, None, sampling=sampling)
    again = speculative_generate(adapter, proposer2, prompt, config)
    assert again.tokens == result.tokens
