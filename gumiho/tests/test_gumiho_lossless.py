"""Exact fp32 greedy equivalence with FTA off: untrained, oracle and (briefly) trained Gumiho drafts."""

import pytest
import torch
from effrepro.specdec import DraftBatch, DraftLevel, TreeConfig
from effrepro.specdec.generate import GenerationConfig, autoregressive_generate, speculative_generate
from gumiho.gumiho import GumihoConfig, GumihoDraft, GumihoProposer, LossWeights, gumiho_loss, make_proposer

VOCAB = 97  # the conftest target's vocabulary
TREE = TreeConfig(top_k=4, depth=7, total_tokens=16)
OPTIONS = {"mlptopk": 3, "pruning": 4}


def prompts(n=3, length=10, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=generator) for _ in range(n)]


def make_draft(target, steps=2, seed=0):
    torch.manual_seed(seed)
    config = GumihoConfig.from_target(target.config, serial_steps=steps, mlp_num=7 - steps,
                                      num_layers=0 if steps == 0 else 2)
    draft = GumihoDraft(config).eval()
    draft.freeze_embedding(target.embed_weight)
    for p in draft.mlp.parameters():  # untrained but not degenerate
        torch.nn.init.normal_(p, std=0.2)
    return draft


def assert_lossless(target, proposer, max_new=32, seed=1):
    config = GenerationConfig(max_new_tokens=max_new)
    results = []
    for ids in prompts(seed=seed):
        reference = autoregressive_generate(target, ids, config)
        spec = speculative_generate(target, proposer, ids, config)
        assert spec.tokens == reference.tokens
        results.append(spec)
    return results


@pytest.mark.parametrize(("steps", "compat"), [(0, False), (1, False), (2, False), (2, True), (3, True)])
def test_untrained_drafts_are_lossless(target, steps, compat):
    options = dict(OPTIONS, sibling_mask="official", mlp_pairing="row") if compat else OPTIONS
    proposer = make_proposer(make_draft(target, steps), target.lm_head_weight, TREE, **options)
    results = assert_lossless(target, proposer)
    assert sum(r.draft_forwards for r in results) == steps * sum(r.cycles for r in results)


class OracleProposer(GumihoProposer):
    """Runs the real Gumiho drafting, then makes beam 0 of every level the target's true greedy continuation."""

    def __init__(self, draft, lm_head, config, references):
        super().__init__(draft, lm_head, config)
        self.references = references  # prompt tuple -> prompt + greedy continuation

    def reset(self):
        super().reset()
        self.seen: list[int] = []

    def propose_levels(self, new_features, next_ids):
        levels = super().propose_levels(new_features, next_ids)
        self.seen += next_ids.tolist()
        sequence = next(seq for seq in self.references if seq[1:len(self.seen) + 1] == self.seen)
        continuation = sequence[len(self.seen) + 1:]
        out = []
        for depth, level in enumerate(levels):
            tokens, scores, parents = level.tokens.clone(), level.scores.clone(), level.parents.clone()
            if depth < len(continuation):
                tokens[0], scores[0] = continuation[depth], 1.0 - depth * 1e-3  # ranked first, chain of beam 0
                parents[0] = -1 if depth == 0 else 0
            out.append(DraftLevel(tokens, scores, parents))
        return out


@pytest.mark.parametrize("steps", [0, 3])
def test_oracle_draft_accepts_full_depth_and_stays_exact(target, steps):
    config = GenerationConfig(max_new_tokens=40)
    references = [ids.tolist() + autoregressive_generate(target, ids, config).tokens for ids in prompts()]
    draft = make_draft(target, steps)
    proposer = OracleProposer(draft, target.lm_head_weight, make_proposer(draft, target.lm_head_weight, TREE,
                                                                                  **OPTIONS).config, references)
    results = assert_lossless(target, proposer)
    for result in results:
        # every cycle but the last (cut by max_new_tokens) accepts all 7 levels: KV compaction over long paths
        assert all(a == 7 for a in result.accept_lengths[:-1])


def test_briefly_trained_draft_is_lossless_and_accepts(target):
    torch.manual_seed(0)
    # training data: the target's own greedy continuations (self-distillation) and its post-norm features
    sequences = [torch.cat([ids, torch.tensor(autoregressive_generate(
        target, ids, GenerationConfig(max_new_tokens=32)).tokens)]) for ids in prompts(seed=7)]
    ids = torch.stack(sequences)
    with torch.no_grad():
        feats = target.model.get_decoder()(input_ids=ids).last_hidden_state
    next_ids = torch.roll(ids, -1, 1)
    next_ids[:, -1] = 0
    targets = torch.roll(feats, -1, 1)
    targets[:, -1] = 0
    mask = torch.ones(ids.shape)
    mask[:, :10] = 0
    mask[:, -1] = 0
    batch = DraftBatch(ids, feats, next_ids, targets, mask, torch.ones_like(ids))
    draft = make_draft(target, 2)
    draft.train()
    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        loss = gumiho_loss(draft, batch, target.lm_head_weight, epoch=5, weights=LossWeights())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    draft.eval()
    proposer = make_proposer(draft, target.lm_head_weight, TREE, **OPTIONS)
    results = assert_lossless(target, proposer, seed=7)  # the prompts it was trained on: it must have learned
    tau = sum(r.new_tokens for r in results) / sum(r.cycles + 1 for r in results)
    assert tau > 1.5
