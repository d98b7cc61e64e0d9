"""The hardware-sized tree: the cost-model choice on synthetic costs, and the offline greedy replay against real
speculative runs (tiny random Llama, float64)."""

import itertools

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    GenerationConfig,
    TargetAdapter,
    TreeConfig,
    autoregressive_generate,
    build_eagle_head,
    speculative_generate,
)
from effrepro.specdec.oracle import OracleProposer
from effrepro.specdec.tuning import (
    TreeCosts,
    TreeGrid,
    best_tree,
    expected_speedup,
    greedy_sequences,
    replay_acceptance,
    tune_tree,
)
from effrepro.specdec.vocab import frequent_tokens
from effrepro.testing import tiny_llama as _tiny_llama
from transformers import LlamaForCausalLM

VOCAB = 97


def tiny_llama(vocab: int = VOCAB, hidden: int = 64, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    return _tiny_llama(vocab, hidden, seed, layers)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def synthetic(seed: int) -> tuple[dict, TreeCosts]:
    """Acceptance that saturates with depth and width; draft cost linear in depth, verify linear in N."""
    gen = torch.Generator().manual_seed(seed)
    t_step = 0.1
    alpha = 0.5 + 0.4 * float(torch.rand((), generator=gen))
    draft_fwd, verify_node = 0.01 + 0.03 * float(torch.rand((), generator=gen)), 0.002 + 0.01 * float(
        torch.rand((), generator=gen))
    taus, draft, verify = {}, {}, {}
    for k, d, n in itertools.product((1, 2, 4, 8), (1, 2, 3, 4, 5, 6), (4, 8, 16, 32, 60)):
        width = 1 - (1 - alpha) ** min(k, n / d)
        taus[(k, d, n)] = 1 + sum(width ** j for j in range(1, d + 1))
        draft[(k, d)] = draft_fwd * (d + 1) * (1 + 0.05 * k)
        verify[(k, d, n)] = t_step + verify_node * n
    return taus, TreeCosts(t_step, draft, verify)


@pytest.mark.parametrize("seed", range(5))
def test_best_tree_is_the_cost_model_optimum(seed):
    taus, costs = synthetic(seed)
    choice = best_tree(taus, costs)
    brute = max(taus, key=lambda key: expected_speedup(taus[key], costs.t_step, costs.draft[key[:2]],
                                                       costs.verify[key]))
    assert (choice.tree.top_k, choice.tree.depth, choice.tree.total_tokens) == brute
    assert choice.speedup == pytest.approx(expected_speedup(taus[brute], costs.t_step, costs.draft[brute[:2]],
                                                            costs.verify[brute]))
    assert choice.table[0]["speedup"] == choice.speedup and len(choice.table) == len(taus)
    assert all(row["speedup"] <= choice.speedup for row in choice.table)


def test_best_tree_follows_the_costs():
    taus = {(4, 1, 4): 1.5, (4, 5, 60): 3.0}
    cheap_verify = TreeCosts(0.1, {(4, 1): 0.01, (4, 5): 0.05}, {(4, 1, 4): 0.1, (4, 5, 60): 0.12})
    dear_verify = TreeCosts(0.1, {(4, 1): 0.01, (4, 5): 0.05}, {(4, 1, 4): 0.1, (4, 5, 60): 0.6})
    assert best_tree(taus, cheap_verify).tree == TreeConfig(4, 5, 60)  # 3.0*0.1/0.17 > 1.5*0.1/0.11
    assert best_tree(taus, dear_verify).tree == TreeConfig(4, 1, 4)  # 3.0*0.1/0.65 < 1.36
    with pytest.raises(UsageError, match="no measured cost"):
        best_tree({(2, 2, 8): 2.0}, cheap_verify)


def _real_accepts(adapter, proposer, sequences):
    out = []
    for prompt, answer in sequences:
        result = speculative_generate(adapter, proposer, prompt, GenerationConfig(max_new_tokens=answer.numel()))
        assert result.tokens == answer.tolist()
        out += result.accept_lengths
    return out


def test_replay_equals_real_greedy_runs_for_random_heads_at_every_depth_and_total(model):
    adapter = TargetAdapter(model, max_length=256)
    prompts = [torch.randint(0, VOCAB, (6 + i,), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    sequences = greedy_sequences(adapter, prompts, 30)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    counts = torch.bincount(torch.cat([a for _, a in sequences]), minlength=VOCAB)
    head.set_draft_vocab(frequent_tokens(counts, 16))  # a vocabulary of the answers: some drafts get accepted
    deep = head.make_proposer(model.lm_head.weight, TreeConfig(3, 4, 40))
    replay = replay_acceptance(adapter, deep, sequences, depths=[1, 4], totals=[4, 40])
    accepted_any = False
    for d, n in itertools.product((1, 4), (4, 40)):
        real = _real_accepts(adapter, head.make_proposer(model.lm_head.weight, TreeConfig(3, d, n)), sequences)
        assert replay[(d, n)]["accept_lengths"] == real, (d, n)
        accepted_any |= any(real)
        assert replay[(d, n)]["tau"] == pytest.approx(sum(a + 1 for a in real) / len(real))
    assert accepted_any  # the comparison covers accepted drafts, not only rejections


def test_replay_of_an_oracle_accepts_every_level():
    model = tiny_llama(seed=1)
    adapter = TargetAdapter(model, max_length=256)
    prompt = torch.randint(0, VOCAB, (5,), generator=torch.Generator().manual_seed(5))
    plain = autoregressive_generate(adapter, prompt, GenerationConfig(max_new_tokens=25))
    sequences = [(prompt, torch.tensor(plain.tokens))]
    oracle = OracleProposer(plain.tokens, prompt.numel(), depth=4, vocab=VOCAB)
    replay = replay_acceptance(adapter, oracle, sequences, depths=[4], totals=[9])
    real = speculative_generate(adapter, oracle, prompt, GenerationConfig(max_new_tokens=25)).accept_lengths
    assert replay[(4, 9)]["accept_lengths"] == real
    assert all(a == 4 for a in real[:-1])


def test_tune_tree_runs_and_records_its_choice(model):
    adapter = TargetAdapter(model, max_length=256)
    prompts = [torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(7))]
    sequences = greedy_sequences(adapter, prompts, 16)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    messages = []
    choice = tune_tree(adapter, lambda tree: head.make_proposer(model.lm_head.weight, tree), sequences,
                       TreeGrid(top_k=(2, 3), depth=(1, 2), total_tokens=(3, 6)), repeats=3, log=messages.append)
    assert len(choice.table) == 8 and choice.table[0]["speedup"] == choice.speedup
    assert {"t_step", "costs", "context"} <= set(choice.details) and "chose" in messages[-1]
    assert choice.as_dict()["tree"] == {"top_k": choice.tree.top_k, "depth": choice.tree.depth,
                                        "total_tokens": choice.tree.total_tokens}
