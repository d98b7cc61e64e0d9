import itertools

import pytest
import torch
from double_rounding.hessian import hutchinson_traces
from double_rounding.mixed import equal_bit_configs
from double_rounding.search import (
    average_bits,
    brute_force,
    config_cost,
    enumerate_subnets,
    layer_weights,
    literal_costs,
    solve_ilp,
)
from effrepro.errors import UsageError
from torch import nn


def test_hutchinson_on_linear_regression_matches_exact_trace():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = torch.randn(256, 3)
    model = nn.Sequential(nn.Linear(6, 3, bias=False))

    def loss(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum(1).mean()

    batches = [(x[:100], y[:100]), (x[100:], y[100:])]  # batching must not change the result
    result = hutchinson_traces(model, {"w": model[0].weight}, batches, loss, probes=500)
    exact = 3 * float(2 * (x.T @ x).trace() / len(x))  # H = I_out (x) 2 X^T X / N
    assert result.traces["w"] == pytest.approx(exact, rel=0.05)
    assert result.images == 256


def test_hutchinson_per_layer_blocks_match_autograd_hessian():
    torch.manual_seed(1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    params = {"first": model[0].weight, "second": model[2].weight}

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    result = hutchinson_traces(model, params, [(x, y)], loss, probes=2000, seed=3)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()

    def as_function(a, b):
        h = torch.tanh(x @ a.T + model[0].bias.detach())
        return nn.functional.cross_entropy(h @ b.T + model[2].bias.detach(), y)

    (h11, _), (_, h22) = torch.autograd.functional.hessian(as_function, (w1, w2))
    exact1 = float(h11.reshape(w1.numel(), w1.numel()).trace())
    exact2 = float(h22.reshape(w2.numel(), w2.numel()).trace())
    assert result.traces["first"] == pytest.approx(exact1, rel=0.1, abs=4 * result.stderr["first"])
    assert result.traces["second"] == pytest.approx(exact2, rel=0.1, abs=4 * result.stderr["second"])


def _costs(seed=0, layers=5, bits=(8, 4, 2)):
    gen = torch.Generator().manual_seed(seed)
    costs = {}
    for l in range(layers):
        base = float(torch.rand(1, generator=gen)) * 10
        costs[f"l{l}"] = {b: base * 4.0 ** -b + float(torch.rand(1, generator=gen)) * 1e-3 for b in bits}
    return costs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilp_matches_brute_force(seed):
    costs = _costs(seed)
    weights = layer_weights(list(costs), None, "layers")
    for budget in (2.0, 2.8, 3.6, 4.4, 5.2, 6.0, 8.0):
        ilp = solve_ilp(costs, budget, weights)
        best, best_cost = brute_force(costs, budget, weights)
        assert average_bits(ilp, weights) <= budget + 1e-9
        assert config_cost(costs, ilp) == pytest.approx(best_cost, abs=1e-9)
    numel = {f"l{l}": 10 ** (l % 3 + 1) for l in range(5)}
    by_params = layer_weights(list(costs), numel, "params")
    ilp = solve_ilp(costs, 4.0, by_params)
    assert config_cost(costs, ilp) == pytest.approx(brute_force(costs, 4.0, by_params)[1], abs=1e-9)


def test_literal_objective_with_equality_budget():
    traces = {f"l{i}": float(i + 1) for i in range(5)}
    numel = dict.fromkeys(traces, 100)
    costs = literal_costs(traces, numel, [8, 4, 2])
    weights = layer_weights(list(costs), None, "layers")
    config = solve_ilp(costs, 4.4, weights, equality=True)
    assert average_bits(config, weights) == pytest.approx(4.4)
    assert config_cost(costs, config) == pytest.approx(brute_force(costs, 4.4, weights, equality=True)[1])


def test_enumeration_is_unique_and_within_budget():
    costs = _costs(4)
    weights = layer_weights(list(costs), None, "layers")
    found = enumerate_subnets(costs, 4.4, weights)
    assert len(found) > 1
    assert len({tuple(sorted(c.items())) for c in found}) == len(found)
    assert all(average_bits(c, weights) <= 4.4 + 1e-9 for c in found)
    first_cost = config_cost(costs, found[0])
    assert all(config_cost(costs, c) >= first_cost - 1e-12 for c in found)
    assert all(c in [dict(zip(costs, combo)) for combo in itertools.product((8, 4, 2), repeat=5)] for c in found)


def test_infeasible_budget_is_a_clear_error():
    costs = _costs()
    weights = layer_weights(list(costs), None, "layers")
    with pytest.raises(UsageError, match="infeasible"):
        solve_ilp(costs, 1.5, weights)
    with pytest.raises(UsageError, match="infeasible"):
        solve_ilp(costs, 9.0, weights, equality=True)


def test_random_configs_at_equal_average_bits():
    layers = [f"l{i}" for i in range(5)]
    found = equal_bit_configs(layers, [4, 3, 2], 2.6, 8, torch.Generator().manual_seed(0))
    assert len(found) == 8 and len({tuple(c.values()) for c in found}) == 8
    assert all(set(c) == set(layers) and sum(c.values()) == 13 and set(c.values()) <= {2, 3, 4} for c in found)
    # all 51 configurations averaging 3 bits exist, so asking for more returns each once
    everything = equal_bit_configs(layers, [4, 3, 2], 3.0, 100, torch.Generator().manual_seed(1))
    assert len(everything) == len({tuple(c.values()) for c in everything}) == 51
    assert equal_bit_configs(layers, [4, 3, 2], 3.0, 4, torch.Generator().manual_seed(2)) != \
        equal_bit_configs(layers, [4, 3, 2], 3.0, 4, torch.Generator().manual_seed(3))
    with pytest.raises(UsageError, match="not reachable"):
        equal_bit_configs(layers, [4, 3, 2], 2.5, 4, torch.Generator())
    with pytest.raises(UsageError, match="no configuration"):
        equal_bit_configs(layers, [4, 3, 2], 4.4, 4, torch.Generator())
