"""Target adapter, verification and the generate loop on a tiny random Llama.

float64 throughout, so equalities are exact up to round-off and greedy ties never flip.
"""

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    GenerationConfig,
    SamplingConfig,
    TargetAdapter,
    TreeConfig,
    autoregressive_generate,
    build_eagle_head,
    greedy_verify,
    speculative_generate,
    tree_from_parents,
)
from effrepro.specdec.oracle import OracleProposer
from effrepro.testing import tiny_llama as _tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 97


def tiny_llama(vocab: int = VOCAB, hidden: int = 64, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    return _tiny_llama(vocab, hidden, seed, layers)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def random_tree(seed: int, size: int = 12, vocab: int = VOCAB):
    gen = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]
    return tree_from_parents(torch.randint(0, vocab, (size,), generator=gen), torch.tensor(parents))


@torch.no_grad()
def test_tree_logits_equal_per_path_causal_runs(model):
    """One tree-masked pass equals running every root-to-node path alone with a plain causal mask."""
    adapter = TargetAdapter(model, max_length=128)
    prefix = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(1))
    adapter.prefill(prefix)
    tree = random_tree(2)
    logits, features = adapter.verify(tree)
    for node in range(tree.size):
        path = torch.nonzero(tree.tree_mask[node]).flatten()
        ids = torch.cat([prefix, tree.tokens[path]])[None]
        out = model(ids, output_hidden_states=True)
        assert torch.allclose(logits[node], out.logits[0, -1], atol=1e-10)
        assert torch.allclose(features[node], out.hidden_states[-1][0, -1], atol=1e-10)


@torch.no_grad()
def test_kv_compaction_equals_fresh_prefill(model):
    adapter = TargetAdapter(model, max_length=128)
    prefix = torch.randint(0, VOCAB, (7,), generator=torch.Generator().manual_seed(3))
    adapter.prefill(prefix)
    tree = random_tree(4, size=15)
    adapter.verify(tree)
    leaf_row = tree.retrieve_indices[int(torch.argmax((tree.retrieve_indices >= 0).sum(1)))]
    nodes = leaf_row[leaf_row >= 0]
    adapter.commit(nodes)
    assert adapter.length == prefix.numel() + nodes.numel()
    fresh = TargetAdapter(model, max_length=128)
    full = torch.cat([prefix, tree.tokens[nodes]])
    fresh.prefill(full)
    for kept, ref in zip(adapter.cache.layers, fresh.cache.layers, strict=True):
        n = adapter.length
        assert torch.allclose(kept.keys[:, :, :n], ref.keys[:, :, :n], atol=1e-12)
        assert torch.allclose(kept.values[:, :, :n], ref.values[:, :, :n], atol=1e-12)
    nxt = torch.tensor([5])
    assert torch.allclose(adapter.decode(nxt)[0], fresh.decode(nxt)[0], atol=1e-10)


def test_greedy_verify_known_values():
    tree = tree_from_parents(torch.tensor([9, 1, 2, 3, 4]), torch.tensor([-1, 0, 0, 1, 2]))
    logits = torch.full((5, 10), -5.0)
    logits[0, 2] = 1  # root predicts 2 -> node 2 matches
    logits[2, 4] = 1  # node 2 predicts 4 -> node 4 matches
    logits[4, 7] = 1  # bonus after node 4
    logits[1, 3] = 1
    verdict = greedy_verify(tree, logits)
    assert verdict.nodes.tolist() == [0, 2, 4] and verdict.bonus_token == 7 and verdict.accepted == 2


@pytest.mark.parametrize("seed", range(6))
def test_greedy_speculative_equals_plain_for_random_and_oracle_drafts(model, seed):
    adapter = TargetAdapter(model, max_length=256)
    prompt = torch.randint(0, VOCAB, (5 + seed,), generator=torch.Generator().manual_seed(seed))
    config = GenerationConfig(max_new_tokens=48)
    plain = autoregressive_generate(adapter, prompt, config)
    reference = model.generate(prompt[None], max_new_tokens=48, min_new_tokens=48, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, prompt.numel():].tolist()
    assert plain.tokens == reference  # our adapter's plain decoding == transformers' generate
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    for tree in (TreeConfig(4, 3, 16), TreeConfig(3, 5, 40)):
        proposer = head.make_proposer(model.lm_head.weight, tree)
        streamed: list[int] = []
        result = speculative_generate(adapter, proposer, prompt, config, streamer=streamed.extend)
        assert result.tokens == plain.tokens and streamed == plain.tokens
        assert result.draft_forwards == result.cycles * (tree.depth + 1)
    oracle = OracleProposer(plain.tokens, prompt.numel(), depth=4, vocab=VOCAB)
    result = speculative_generate(adapter, oracle, prompt, config)
    assert result.tokens == plain.tokens
    assert all(a == 4 for a in result.accept_lengths[:-1])  # every full-depth path accepted
    assert result.cycles == -(-(48 - 1) // 5)


def test_stop_token_and_max_new_tokens_rules(model):
    adapter = TargetAdapter(model, max_length=256)
    prompt = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(11))
    plain = autoregressive_generate(adapter, prompt, GenerationConfig(max_new_tokens=40))
    stop = plain.tokens[17]
    config = GenerationConfig(max_new_tokens=40, stop_token_ids=(stop,))
    cut = autoregressive_generate(adapter, prompt, config)
    first = plain.tokens.index(stop)
    assert cut.tokens == plain.tokens[: first + 1] and cut.stopped_by == "stop_token"
    oracle = OracleProposer(plain.tokens, prompt.numel(), depth=5, vocab=VOCAB)
    spec = speculative_generate(adapter, oracle, prompt, config)
    assert spec.tokens == cut.tokens and spec.stopped_by == "stop_token"
    short = speculative_generate(adapter, oracle, prompt, GenerationConfig(max_new_tokens=9))
    assert short.tokens == plain.tokens[:9] and short.stopped_by == "max_new_tokens"


def test_context_budget_stops_both_loops(model):
    adapter = TargetAdapter(model, max_length=40)
    prompt = torch.randint(0, VOCAB, (10,), generator=torch.Generator().manual_seed(5))
    plain = autoregressive_generate(adapter, prompt, GenerationConfig(max_new_tokens=100))
    assert plain.stopped_by == "max_length" and len(plain.tokens) == 40 - 10 + 1
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    spec = speculative_generate(adapter, head.make_proposer(model.lm_head.weight, TreeConfig(2, 2, 8)), prompt,
                                GenerationConfig(max_new_tokens=100))
    assert spec.stopped_by == "max_length" and spec.tokens == plain.tokens[: len(spec.tokens)]


def test_bad_input_is_a_clear_error(model):
    adapter = TargetAdapter(model, max_length=32)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    proposer = head.make_proposer(model.lm_head.weight, TreeConfig(2, 2, 6))
    with pytest.raises(UsageError, match="empty prompt"):
        speculative_generate(adapter, proposer, torch.tensor([], dtype=torch.long), GenerationConfig())
    with pytest.raises(UsageError, match="context budget"):
        autoregressive_generate(adapter, torch.zeros(40, dtype=torch.long), GenerationConfig())
    other = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=VOCAB)
    with pytest.raises(UsageError, match="hidden 32"):
        build_eagle_head(other).check_compatible(64, VOCAB)
    with pytest.raises(UsageError, match=f"vocab {VOCAB}, the target has hidden 64 / vocab {VOCAB + 5}"):
        head.check_compatible(64, VOCAB + 5)
    with pytest.raises(UsageError, match="does not fit the head"):
        head.freeze_embedding(torch.zeros(VOCAB + 5, 64))
    with pytest.raises(UsageError, match="empty prompt"):
        autoregressive_generate(adapter, torch.tensor([], dtype=torch.long), GenerationConfig())
    with pytest.raises(UsageError, match="context budget"):
        speculative_generate(adapter, proposer, torch.zeros(32, dtype=torch.long), GenerationConfig())
    with pytest.raises(UsageError):
        SamplingConfig(temperature=-1)
    with pytest.raises(UsageError):
        TreeConfig(top_k=0)


@pytest.mark.slow
def test_smollm2_speculative_greedy_equals_plain_greedy():
    """The embedded SmolLM2-135M-Instruct (fp32): an untrained EAGLE head and an oracle proposer (the plain
    continuation plus a distractor per level) both give exactly plain greedy decoding's tokens."""
    from effrepro.data import load_target
    from effrepro.specdec import ChatFormatter

    model, tokenizer = load_target()
    adapter = TargetAdapter(model, max_length=256)
    prompt = ChatFormatter(tokenizer).prompt_ids([{"role": "user", "content": "Name three primary colours."}])
    config = GenerationConfig(max_new_tokens=24)
    plain = autoregressive_generate(adapter, prompt, config)
    torch.manual_seed(0)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight)
    spec = speculative_generate(adapter, head.make_proposer(model.lm_head.weight, TreeConfig(4, 3, 12)), prompt,
                                config)
    assert spec.tokens == plain.tokens and len(plain.tokens) == 24

    oracle = OracleProposer(plain.tokens, prompt.numel(), depth=3, vocab=model.config.vocab_size)
    result = speculative_generate(adapter, oracle, prompt, config)
    assert result.tokens == plain.tokens and all(a == 3 for a in result.accept_lengths[:-1])
