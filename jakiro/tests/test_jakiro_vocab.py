"""Jakiro and Jakiro* heads with the engine's reduced draft vocabulary: drafts only its tokens, output lossless,
the map saved with the weights."""

import pytest
import torch
from effrepro.specdec import (
    GenerationConfig,
    SamplingConfig,
    TreeConfig,
    autoregressive_generate,
    speculative_generate,
)
from jakiro.jakiro import load_official_state_dict, make_proposer

VOCAB = 16  # the conftest target's vocabulary


D2T = torch.tensor([3, 0, 7, 12, 5, 9, 1, 14])


@pytest.mark.parametrize(("variant", "options"), [("jakiro", {}), ("star", {"sampling": SamplingConfig(0.0)})])
def test_reduced_vocabulary_drafts_are_lossless_and_in_vocabulary(target, variant, options, draft_for):
    model, adapter = target
    draft = draft_for(model, variant)
    draft.set_draft_vocab(D2T)
    lm_head = model.get_output_embeddings().weight.detach()
    config = GenerationConfig(max_new_tokens=24)
    for seed in range(3):
        prompt = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(seed))
        proposer = make_proposer(draft, lm_head, TreeConfig(top_k=3, depth=3, total_tokens=12), **options)
        spec = speculative_generate(adapter, proposer, prompt, config)
        assert spec.tokens == autoregressive_generate(adapter, prompt, config).tokens
        tree = proposer.propose(*_round(adapter, proposer, prompt))
        assert set(tree.tokens[1:].tolist()) <= set(D2T.tolist())
    fresh = draft_for(model, variant, seed=5)
    load_official_state_dict(fresh, draft.trainable_state_dict())
    assert torch.equal(fresh.draft_vocab, D2T) and torch.equal(fresh.fc.weight, draft.fc.weight)


def _round(adapter, proposer, prompt):
    proposer.reset()
    _, features = adapter.prefill(prompt)
    return features, torch.cat([prompt[1:], torch.tensor([2])])
