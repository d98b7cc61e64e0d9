"""A Gumiho head with the engine's reduced draft vocabulary: drafts only its tokens (serial and MLP levels), output
lossless, the map restored by ``head_from_checkpoint``."""

import torch
from effrepro.specdec import TreeConfig
from effrepro.specdec.generate import GenerationConfig, autoregressive_generate, speculative_generate
from gumiho.gumiho import GumihoConfig, GumihoDraft, head_from_checkpoint, make_proposer

VOCAB = 97  # the conftest target's vocabulary
TREE = TreeConfig(top_k=4, depth=7, total_tokens=16)
OPTIONS = {"mlptopk": 3, "pruning": 4}


def make_draft(target, steps=2, seed=0):
    torch.manual_seed(seed)
    config = GumihoConfig.from_target(target.config, serial_steps=steps, mlp_num=7 - steps, num_layers=2)
    draft = GumihoDraft(config).eval()
    draft.freeze_embedding(target.embed_weight)
    for p in draft.mlp.parameters():  # untrained but not degenerate
        torch.nn.init.normal_(p, std=0.2)
    return draft


def assert_lossless(target, proposer, max_new=32):
    config = GenerationConfig(max_new_tokens=max_new)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (10,), generator=generator)
        assert speculative_generate(target, proposer, ids, config).tokens == \
            autoregressive_generate(target, ids, config).tokens

D2T = torch.arange(1, VOCAB, 4)


def test_reduced_vocabulary_drafts_are_lossless_and_in_vocabulary(target):
    draft = make_draft(target, steps=2)
    draft.set_draft_vocab(D2T)
    proposer = make_proposer(draft, target.lm_head_weight, TREE, **OPTIONS)
    assert_lossless(target, proposer)
    proposer.reset()
    ids = torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(3))
    _, features = target.prefill(ids)
    levels = proposer.propose_levels(features, torch.cat([ids[1:], torch.tensor([4])]))
    assert len(levels) == 7 and all(set(level.tokens.tolist()) <= set(D2T.tolist()) for level in levels)
    state = {"method": "GumihoDraft", "config": draft.config_dict(), "state_dict": draft.trainable_state_dict()}
    loaded = head_from_checkpoint(state, target.embed_weight)
    assert torch.equal(loaded.draft_vocab, D2T)
