"""Mixed precision around the SuperNet: Hessian traces of the FP32 model, ILP sub-nets from the int8 file,
and the area under the accuracy-vs-average-bits curve."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.quant import dequantize_codes, graph_of, layer_codes
from torch import nn

from double_rounding.config import Config, MixedConfig
from double_rounding.eval import evaluate_int8
from double_rounding.hessian import TraceResult, hutchinson_traces
from double_rounding.models import build_quant_model
from double_rounding.search import average_bits, enumerate_subnets, layer_weights, literal_costs, solve_ilp


def quantised_layer_names(cfg: Config, float_model: nn.Module) -> list[str]:
    """The layers the quantised model will quantise (first conv and last FC excluded), in execution order."""
    return graph_of(build_quant_model(cfg.model, cfg.quant.bits, float_model=copy.deepcopy(float_model))).layers


def compute_traces(cfg: Config, float_model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | str = "cpu") -> TraceResult:
    """Per-layer Hutchinson traces of the FP32 model's CE loss over the calibration images."""
    names = quantised_layer_names(cfg, float_model)
    model = float_model.to(device)
    params = {name: model.get_submodule(name).weight for name in names}

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(m(x.to(device)), y.to(device))

    return hutchinson_traces(model, params, batches, loss_fn, probes=cfg.mixed.hessian_probes, seed=cfg.seed)


@torch.no_grad()
def artefact_costs(artefact: Mapping[str, Any], traces: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``t_l * ||W_hat_{l,b} - W_hat_{l,h}||^2 / n_l`` from the int8 file alone (the stored h-bit weight stands
    in for the FP32 master weight, which the file does not hold; for h = 8 the difference is negligible)."""
    graph = artefact["graph"]
    costs = {}
    for name in graph["layers"]:
        codes, scale = artefact["codes"][name], artefact["weight_scales"][name]
        reference = dequantize_codes(codes, scale, 0).double()
        costs[name] = {}
        for b in graph["bits"]:
            w = dequantize_codes(*layer_codes(artefact, name, b)).double()
            costs[name][b] = float(traces[name]) * float((w - reference).pow(2).sum()) / codes.numel()
    return costs


def search_configs(artefact: Mapping[str, Any], traces: Mapping[str, float], mc: MixedConfig,
                   budgets: Iterable[float] | None = None) -> list[dict[str, Any]]:
    """ILP sub-nets for each average-bit budget (plus the fix-one-layer re-solves when ``mc.enumerate``)."""
    graph = artefact["graph"]
    layers = list(graph["layers"])
    numel = {n: artefact["codes"][n].numel() for n in layers}
    weights = layer_weights(layers, numel, mc.weighting)
    if mc.objective == "paper_literal":
        costs, equality = literal_costs(traces, numel, graph["bits"]), True
    else:
        costs, equality = artefact_costs(artefact, traces), False
    rows = []
    for budget in budgets if budgets is not None else mc.budgets:
        if mc.enumerate:
            found = enumerate_subnets(costs, budget, weights, equality)
        else:
            found = [solve_ilp(costs, budget, weights, equality)]
        for index, config in enumerate(found):
            rows.append({"budget": budget, "rank": index, "config": config,
                         "avg_bits": average_bits(config, weights),
                         "cost": sum(costs[l][config[l]] for l in layers)})
    return rows


def evaluate_subnets(artefact: Mapping[str, Any], rows: list[dict[str, Any]], loader: Iterable,
                     device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    metrics = evaluate_int8(artefact, loader, [r["config"] for r in rows], device)
    return [{**row, **{k: v for k, v in m.items() if k != "config"}} for row, m in zip(rows, metrics)]


def pareto_by_budget(rows: Sequence[Mapping[str, Any]]) -> dict[float, float]:
    """Best top-1 among the sub-nets found for each budget."""
    best: dict[float, float] = {}
    for row in rows:
        best[row["budget"]] = max(best.get(row["budget"], -1.0), row["top1"])
    return dict(sorted(best.items()))


def area_under_curve(points: Mapping[float, float]) -> float:
    """Trapezoidal area under accuracy(budget), divided by the budget range (= mean accuracy over the range)."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    area = sum((xs[i + 1] - xs[i]) * (points[xs[i]] + points[xs[i + 1]]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def equal_bit_configs(layers: Sequence[str], bits: Sequence[int], budget: float, count: int,
                      generator: torch.Generator) -> list[dict[str, int]]:
    """``count`` configurations drawn uniformly (without replacement) from all those whose unweighted average
    bit-width is exactly ``budget``: the random baseline at equal average bits (enumerates ``len(bits) **
    len(layers)`` configurations, so for small models only)."""
    total = round(budget * len(layers))
    if abs(total - budget * len(layers)) > 1e-9:
        raise UsageError(f"average bit-width {budget:g} is not reachable with {len(layers)} layers")
    pool = [choice for choice in itertools.product(sorted(bits), repeat=len(layers)) if sum(choice) == total]
    if not pool:
        raise UsageError(f"no configuration of {list(bits)} over {len(layers)} layers averages {budget:g} bits")
    order = torch.randperm(len(pool), generator=generator)[:count].tolist()
    return [dict(zip(layers, pool[i])) for i in order]


def searched_and_random(artefact: Mapping[str, Any], traces: Mapping[str, float], budgets: Sequence[float],
                        random_count: int, seed: int) -> list[dict[str, Any]]:
    """Per budget: the ILP sub-net (perturbation objective, average bits ``== budget`` over layers) and
    ``random_count`` random sub-nets at the same average, as rows ``{kind, budget, config}``."""
    graph = artefact["graph"]
    layers, bits = list(graph["layers"]), list(graph["bits"])
    costs, weights = artefact_costs(artefact, traces), layer_weights(layers, None, "layers")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for budget in budgets:
        config = solve_ilp(costs, budget, weights, equality=True)
        if config is None:
            raise UsageError(f"the ILP found no sub-net at an average of {budget:g} bits")
        rows.append({"kind": "searched", "budget": budget, "config": config})
        rows += [{"kind": "random", "budget": budget, "config": c}
                 for c in equal_bit_configs(layers, bits, budget, random_count, generator)]
    return rows
