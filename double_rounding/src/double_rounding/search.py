"""Sub-net search for the mixed-precision SuperNet: an integer linear program under an average-bit budget.

Variables ``x_{l,b}`` in {0, 1}, one bit-width per layer (``sum_b x_{l,b} = 1``). Constraint: the average
bit-width ``sum_l a_l sum_b b x_{l,b} <= omega`` with ``a_l = 1/L`` (the paper's unweighted average) or
``a_l = n_l / sum n`` (parameter-weighted, i.e. a model-size budget). Objective, ``sum_l sum_b c_{l,b} x_{l,b}``:

* ``hawq_perturbation`` (default): ``c_{l,b} = t_l * ||W_hat_{l,b} - W_l||^2 / n_l``, the Hessian-weighted
  quantisation perturbation of HAWQ-V2/V3, measured on the SuperNet's own double-rounded weights. It falls
  with bits and is largest on sensitive layers, so sensitive layers get the high bits (what HASB intends).
* ``paper_literal``: ``c_{l,b} = (t_l / n_l) * b`` as printed in the paper (Algorithm 2 / A.5.3). Minimising
  it pushes the *low* bits onto the sensitive layers and, under a ``<=`` budget, every layer to the lowest
  bit; it is kept as an ablation with an equality budget, as the paper states ``= omega``.

Solved with PuLP's CBC. :func:`enumerate_subnets` adds the paper's procedure for more Pareto points: after
the first solution, fix each layer in turn to each other bit-width (below the solution's highest), re-solve,
keep new unique feasible solutions.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from effrepro.errors import UsageError
from effrepro.quant import fake_quant_weight, quant_layers

OBJECTIVES = ("hawq_perturbation", "paper_literal")
WEIGHTINGS = ("layers", "params")
Costs = Mapping[str, Mapping[int, float]]


@torch.no_grad()
def perturbation_costs(model: torch.nn.Module, traces: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``t_l * ||Q_b(W_l) - W_l||^2 / n_l`` from a (SuperNet) model with FP32 master weights."""
    costs = {}
    for name, layer in quant_layers(model):
        w = layer.weight.detach().float()
        costs[name] = {}
        for b in layer.bit_list:
            q = fake_quant_weight(w, layer.weight_scale.detach(), layer.high_bits, b, layer.tie_mode)
            costs[name][b] = float(traces[name]) * float((q - w).pow(2).sum()) / w.numel()
    return costs


def literal_costs(traces: Mapping[str, float], numel: Mapping[str, int], bits: Sequence[int]) -> dict:
    return {name: {b: float(traces[name]) / numel[name] * b for b in bits} for name in traces}


def layer_weights(layers: Sequence[str], numel: Mapping[str, int] | None, weighting: str) -> dict[str, float]:
    if weighting not in WEIGHTINGS:
        raise UsageError(f"unknown weighting {weighting!r}; use one of: {', '.join(WEIGHTINGS)}")
    if weighting == "layers":
        return dict.fromkeys(layers, 1.0 / len(layers))
    if numel is None:
        raise UsageError("a parameter-weighted budget needs the layer sizes")
    total = float(sum(numel[l] for l in layers))
    return {l: numel[l] / total for l in layers}


def average_bits(config: Mapping[str, int], weights: Mapping[str, float]) -> float:
    return sum(weights[l] * config[l] for l in weights)


def check_budget(costs: Costs, budget: float, weights: Mapping[str, float], equality: bool = False) -> None:
    low = sum(w * min(costs[l]) for l, w in weights.items())
    high = sum(w * max(costs[l]) for l, w in weights.items())
    if budget < low - 1e-9 or (equality and budget > high + 1e-9):
        raise UsageError(f"average-bit budget {budget:g} is infeasible: possible averages lie in "
                         f"[{low:g}, {high:g}]; choose a budget in that range")


def solve_ilp(costs: Costs, budget: float, weights: Mapping[str, float], equality: bool = False,
              fixed: Mapping[str, int] | None = None) -> dict[str, int] | None:
    """The configuration of least total cost with average bits ``<= budget`` (``== budget`` with
    ``equality``); ``None`` when the fixed assignments make it infeasible."""
    import pulp

    check_budget(costs, budget, weights, equality)
    layers = list(weights)
    problem = pulp.LpProblem("subnet", pulp.LpMinimize)
    x = {(l, b): pulp.LpVariable(f"x_{i}_{b}", cat="Binary") for i, l in enumerate(layers) for b in costs[l]}
    problem += pulp.lpSum(costs[l][b] * x[l, b] for l in layers for b in costs[l])
    for l in layers:
        problem += pulp.lpSum(x[l, b] for b in costs[l]) == 1
    avg = pulp.lpSum(weights[l] * b * x[l, b] for l in layers for b in costs[l])
    problem += (avg == budget) if equality else (avg <= budget + 1e-9)
    for l, b in (fixed or {}).items():
        problem += x[l, b] == 1
    status = problem.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus[status] != "Optimal":
        return None
    return {l: next(b for b in costs[l] if x[l, b].value() > 0.5) for l in layers}


def brute_force(costs: Costs, budget: float, weights: Mapping[str, float],
                equality: bool = False) -> tuple[dict[str, int], float] | None:
    """Exhaustive search (tests only): the cheapest feasible configuration and its cost."""
    layers = list(weights)
    best = None
    for choice in itertools.product(*(sorted(costs[l]) for l in layers)):
        config = dict(zip(layers, choice))
        avg = average_bits(config, weights)
        if (abs(avg - budget) > 1e-9) if equality else (avg > budget + 1e-9):
            continue
        cost = sum(costs[l][config[l]] for l in layers)
        if best is None or cost < best[1] - 1e-12:
            best = (config, cost)
    return best


def config_cost(costs: Costs, config: Mapping[str, int]) -> float:
    return sum(costs[l][b] for l, b in config.items())


def enumerate_subnets(costs: Costs, budget: float, weights: Mapping[str, float],
                      equality: bool = False) -> list[dict[str, int]]:
    """The ILP solution plus the paper's fix-one-layer re-solves (unique, each within the budget)."""
    first = solve_ilp(costs, budget, weights, equality)
    if first is None:
        raise UsageError(f"no sub-net satisfies the average-bit budget {budget:g}")
    found = [first]
    top = max(first.values())
    for layer in weights:
        for b in sorted(costs[layer], reverse=True):
            if b >= top or b == first[layer]:
                continue
            config = solve_ilp(costs, budget, weights, equality, fixed={layer: b})
            if config is not None and config not in found:
                found.append(config)
    return found
