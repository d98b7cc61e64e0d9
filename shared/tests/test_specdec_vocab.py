"""The reduced draft vocabulary: the id map, the reduced soft-CE, lossless drafting, the head checkpoint, and the
verification LM head on the rows greedy reads. Tiny random Llama in float64."""

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    DraftBatch,
    DraftLevel,
    GenerationConfig,
    TargetAdapter,
    TreeConfig,
    autoregressive_generate,
    build_eagle_head,
    feature_losses,
    greedy_verify,
    speculative_generate,
    tree_from_levels,
)
from effrepro.specdec.oracle import OracleProposer
from effrepro.specdec.tree import tree_from_parents
from effrepro.specdec.verify import greedy_verify_features
from effrepro.specdec.vocab import check_d2t, frequent_tokens, scatter_full, target_to_draft, vocab_digest
from effrepro.testing import tiny_llama as _tiny_llama
from transformers import LlamaForCausalLM

VOCAB = 97


def tiny_llama(vocab: int = VOCAB, hidden: int = 64, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    return _tiny_llama(vocab, hidden, seed, layers)


def random_tree(seed: int, size: int = 12, vocab: int = VOCAB):
    gen = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]
    return tree_from_parents(torch.randint(0, vocab, (size,), generator=gen), torch.tensor(parents))


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_frequent_tokens_ranks_by_count_then_id_and_the_map_round_trips():
    counts = torch.tensor([5, 0, 9, 5, 1, 0, 9])
    d2t = frequent_tokens(counts, 5)
    assert d2t.tolist() == [2, 6, 0, 3, 4]  # ties: smaller id first
    assert frequent_tokens(counts, 7).tolist() == [2, 6, 0, 3, 4, 1, 5]  # unseen ids fill up
    t2d = target_to_draft(d2t, 7)
    assert torch.equal(t2d[d2t], torch.arange(5))  # target -> draft -> target
    assert t2d[[1, 5]].tolist() == [-1, -1]
    assert torch.equal(d2t[t2d[t2d >= 0]], torch.nonzero(t2d >= 0).flatten())
    for bad in (0, 8):
        with pytest.raises(UsageError, match="draft vocabulary"):
            frequent_tokens(counts, bad)
    with pytest.raises(UsageError, match="repeats"):
        check_d2t(torch.tensor([1, 1]), 7)
    with pytest.raises(UsageError, match="outside"):
        check_d2t(torch.tensor([1, 7]), 7)
    assert vocab_digest(None) == "full" and vocab_digest(d2t) != vocab_digest(d2t.flip(0))


def test_head_map_to_target_ids_and_lm_head_rows(model):
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    assert head.draft_vocab is None and head.draft_vocab_size == VOCAB
    assert head.draft_lm_head(model.lm_head.weight) is model.lm_head.weight
    d2t = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:13]
    head.set_draft_vocab(d2t)
    assert head.draft_vocab_size == 13
    rows = head.draft_lm_head(model.lm_head.weight)
    assert torch.equal(rows, model.lm_head.weight[d2t])
    assert head.to_target_ids(torch.tensor([[0, 12], [3, 4]])).tolist() == [d2t[[0, 12]].tolist(), d2t[[3, 4]].tolist()]
    with pytest.raises(UsageError, match="full LM head"):
        head.draft_lm_head(rows)
    # the map is a buffer: saved with the weights and restored (with its size) into a fresh head
    fresh = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    fresh.load_state_dict(head.trainable_state_dict(), strict=False)
    assert torch.equal(fresh.draft_vocab, d2t)
    logits = torch.randn(2, 13, dtype=torch.float64)
    full = scatter_full(logits, d2t, VOCAB)
    assert torch.equal(full[:, d2t], logits) and bool(torch.isinf(full).sum() == 2 * (VOCAB - 13))


def _batch(seed: int, hidden: int = 64) -> DraftBatch:
    gen = torch.Generator().manual_seed(seed)
    b, length = 2, 7
    ids = torch.randint(0, VOCAB, (b, length), generator=gen)
    mask = (torch.rand(b, length, generator=gen) > 0.3).double()
    feats = torch.randn(b, length, hidden, generator=gen, dtype=torch.float64)
    return DraftBatch(ids, feats, ids, torch.randn(b, length, hidden, generator=gen, dtype=torch.float64), mask,
                      torch.ones(b, length, dtype=torch.long))


def test_reduced_soft_ce_equals_the_full_one_when_k_is_v_and_renormalises_below(model):
    lm_head = model.lm_head.weight.detach()
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    batch = _batch(0)
    pred = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg_full, cls_full = feature_losses(pred, batch, lm_head)
    head.set_draft_vocab(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(2)))  # K = V, permuted
    reg, cls = feature_losses(pred, batch, head.draft_lm_head(lm_head))
    assert torch.allclose(cls, cls_full, rtol=1e-6) and torch.equal(reg, reg_full)
    d2t = torch.arange(0, VOCAB, 3)
    head.set_draft_vocab(d2t)
    _, cls_small = feature_losses(pred, batch, head.draft_lm_head(lm_head))
    rows = batch.loss_mask.reshape(-1) > 0
    teacher_logits = (batch.target_features.reshape(-1, 64)[rows] @ lm_head.t())[:, d2t]
    student_logits = (pred.reshape(-1, 64)[rows] @ lm_head.t())[:, d2t]
    want = -(torch.softmax(teacher_logits, -1) * torch.log_softmax(student_logits, -1)).sum(-1)
    want = (want * batch.loss_mask.reshape(-1)[rows]).sum() / (batch.loss_mask.sum() + 1e-5)
    assert torch.allclose(cls_small.double(), want, rtol=1e-5)  # teacher renormalised over the K tokens
    assert not torch.allclose(cls_small, cls_full)


class VocabOracle(OracleProposer):
    """The best a K-token draft can do: the true greedy token when it is in the vocabulary, else a vocabulary
    token (never accepted), plus a distractor per level."""

    def __init__(self, future: list[int], prompt_len: int, d2t: torch.Tensor, depth: int = 4) -> None:
        self.d2t, self.inside = d2t, set(d2t.tolist())
        super().__init__(future, prompt_len, depth, vocab=0)

    def pair(self, true: int) -> tuple[int, int]:
        best = true if true in self.inside else int(self.d2t[0])
        return best, (int(self.d2t[1]) if best != int(self.d2t[1]) else int(self.d2t[2]))


@pytest.mark.parametrize("seed", range(3))
def test_reduced_vocabulary_drafts_stay_lossless_random_and_oracle(model, seed):
    adapter = TargetAdapter(model, max_length=256)
    prompt = torch.randint(0, VOCAB, (6 + seed,), generator=torch.Generator().manual_seed(seed))
    config = GenerationConfig(max_new_tokens=40)
    plain = autoregressive_generate(adapter, prompt, config)
    counts = torch.bincount(torch.tensor(plain.tokens), minlength=VOCAB)
    d2t = frequent_tokens(counts, 24)  # the answer's most frequent tokens first: many drafts can be accepted
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    head.set_draft_vocab(d2t)
    for tree in (TreeConfig(4, 3, 16), TreeConfig(3, 5, 40)):
        proposer = head.make_proposer(model.lm_head.weight, tree)
        result = speculative_generate(adapter, proposer, prompt, config)
        assert result.tokens == plain.tokens
    oracle = VocabOracle(plain.tokens, prompt.numel(), d2t)
    result = speculative_generate(adapter, oracle, prompt, config)
    assert result.tokens == plain.tokens
    inside = set(d2t.tolist())
    # accepted exactly up to the first true token outside the vocabulary (or the depth)
    position = 1
    for accepted in result.accept_lengths[:-1]:
        run = 0
        while run < 4 and position + run < len(plain.tokens) and plain.tokens[position + run] in inside:
            run += 1
        assert accepted == run
        position += accepted + 1


def test_eagle_proposer_drafts_only_vocabulary_tokens_with_the_reduced_head_scores(model):
    adapter = TargetAdapter(model, max_length=128)
    prompt = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(3))
    _, features = adapter.prefill(prompt)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    d2t = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(4))[:20]
    head.set_draft_vocab(d2t)
    proposer = head.make_proposer(model.lm_head.weight, TreeConfig(4, 3, 30))
    next_ids = torch.cat([prompt[1:], torch.tensor([5])])
    levels = proposer.propose_levels(features, next_ids)
    assert all(set(level.tokens.tolist()) <= set(d2t.tolist()) for level in levels)
    # level 1 = the top-4 of the draft's log-softmax over the 20 rows, mapped to target ids
    full = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    full.load_state_dict({k: v for k, v in head.state_dict().items() if k != "d2t"}, strict=False)
    reference = full.make_proposer(model.lm_head.weight, TreeConfig(4, 1, 5))
    g = reference.head.decode(features[None], next_ids[None], torch.arange(9)[None],
                              torch.ones(9, 9, dtype=torch.bool).tril()[None])[0, -1]
    want = torch.topk(torch.log_softmax(g @ model.lm_head.weight[d2t].t(), -1), 4)
    assert levels[0].tokens.tolist() == d2t[want.indices].tolist()
    assert torch.allclose(levels[0].scores.double(), want.values, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_verify_on_the_rows_it_reads_equals_full_logits(model, seed):
    adapter = TargetAdapter(model, max_length=128)
    prefix = torch.randint(0, VOCAB, (7,), generator=torch.Generator().manual_seed(seed))
    adapter.prefill(prefix)
    tree = random_tree(seed, size=20)
    logits, features = adapter.verify(tree)
    read: list[int] = []

    def head(rows: torch.Tensor) -> torch.Tensor:
        read.append(rows.shape[0])
        return adapter.logits(rows)

    lazy = greedy_verify_features(tree, features, head)
    full = greedy_verify(tree, logits)
    assert torch.equal(lazy.nodes, full.nodes) and lazy.bonus_token == full.bonus_token
    inner = torch.unique(tree.parents[tree.parents >= 0]).numel()
    assert read[0] == inner and sum(read) <= inner + 1
    # a chain whose draft is the target's own argmax: the accepted path ends at a leaf, whose row is computed
    with torch.no_grad():
        best = int(model(prefix[None]).logits[0, -1].argmax())
    adapter.prefill(prefix[:-1])
    chain = tree_from_levels([DraftLevel(torch.tensor([best]), torch.tensor([-0.1]), torch.tensor([-1]))],
                             int(prefix[-1]), 2)
    logits2, features2 = adapter.verify(chain)
    lazy2 = greedy_verify_features(chain, features2, adapter.logits)
    assert lazy2.accepted == 1 and lazy2.bonus_token == int(logits2[1].argmax())
