"""The mixed-precision part of Double Rounding's miniature: claims, estimates and the report table of the
``mixed`` arm (:meth:`double_rounding.miniature.SeedRun.mixed`).

Per seed, one SuperNet on ``plan.mixed_bits`` is exported to one int8 file; every sub-net below is evaluated from
that file on the same test images, without fine-tuning. Three kinds of sub-net: ``uniform`` (every layer at b
bits), ``searched`` (the ILP's least Hessian-weighted perturbation at an average of exactly omega bits over the
layers) and ``random`` (configurations drawn uniformly among those averaging exactly omega bits). The unit of
replication is the seed: each claim is a per-seed difference, paired by seed, with a t-interval.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from effrepro import stats
from effrepro.report import seed_span
from effrepro.reproduce import ClaimSpec, require_new_seeds

from double_rounding.mixed import area_under_curve

# ResNet-18, {4,3,2} SuperNet without KD (Table 3): 3 bits on average (3MP) minus uniform w3a3
PAPER_3MP_GAIN = round(68.85 - 68.63, 2)

_GAIN = (f"also fails when the interval lies below half the paper's gain ({PAPER_3MP_GAIN / 2:g} points: ResNet-18, "
         "3MP 68.85 vs w3a3 68.63)")
MIXED_CLAIMS = [
    ClaimSpec(id="mixed_minus_uniform_3bit", description="top-1 of the ILP sub-net at an average of 3 bits minus the "
              "uniform w3a3 configuration, both from the SuperNet's one int8 file, paired by seed; pre-registered "
              "confirmatory run on new seeds alone (smoke: 60-209, n = 150 fixed before the run from the pilot's "
              "mean -0.069 and sd 0.73 for about 85 % probability of a decided interval; no seeds added whatever the "
              f"result); {_GAIN}", paper=PAPER_3MP_GAIN, unit="top-1 points", baseline="uniform w3a3",
              expect=f"> 0, fails below {PAPER_3MP_GAIN / 2:g}", headline=True),
    ClaimSpec(id="mixed_minus_uniform_3bit_pilot", description="the same difference on the pilot seeds (smoke: 0-59, "
              f"grown in three looks 16/40/60; it set the confirmatory run's n); {_GAIN}", paper=PAPER_3MP_GAIN,
              unit="top-1 points", baseline="uniform w3a3", expect=f"> 0, fails below {PAPER_3MP_GAIN / 2:g}"),
    ClaimSpec(id="searched_minus_random", description="ILP sub-net minus the mean of the random sub-nets at the same "
              "average bits (drawn uniformly among all configurations with that average), averaged over the "
              "budgets, paired by seed; pilot seeds", paper=None, unit="top-1 points",
              baseline="random sub-nets at equal average bits", expect="> 0"),
    ClaimSpec(id="mixed_auc_minus_uniform", description="area under top-1 vs average bits (divided by the bit range) "
              "of the ILP sub-nets over the budgets minus that of the uniform configurations (linear between 2, 3 "
              "and 4 bits), paired by seed; pilot seeds", paper=None, unit="top-1 points",
              baseline="uniform precision", expect=">= 0"),
]
# claim id -> (per-seed difference, seed set): only the headline is decided on the confirmatory seeds
_SOURCES = {"mixed_minus_uniform_3bit": ("mixed_minus_uniform_3bit", "confirm"),
            "mixed_minus_uniform_3bit_pilot": ("mixed_minus_uniform_3bit", "pilot"),
            "searched_minus_random": ("searched_minus_random", "pilot"),
            "mixed_auc_minus_uniform": ("mixed_auc_minus_uniform", "pilot")}


def mixed_jobs(plan: Any) -> dict[int, tuple[str, ...]]:
    """One ``mixed`` arm per pilot and confirmatory seed; the two seed sets must be disjoint."""
    require_new_seeds(mixed_pilot_seeds=plan.mixed_pilot_seeds, mixed_confirm_seeds=plan.mixed_confirm_seeds)
    return {seed: ("mixed",) for seed in (*plan.mixed_pilot_seeds, *plan.mixed_confirm_seeds)}


def _by_kind(run: Mapping[str, Any], kind: str) -> dict[float, list[float]]:
    out: dict[float, list[float]] = {}
    for row in run["rows"]:
        if row["kind"] == kind:
            out.setdefault(float(row["budget"]), []).append(row["top1"])
    return out


def _uniform_at(uniform: Mapping[float, list[float]], budget: float) -> float:
    """Top-1 of the uniform configurations, linear between the neighbouring integer bit-widths."""
    xs = sorted(uniform)
    lo = max(x for x in xs if x <= budget)
    hi = min(x for x in xs if x >= budget)
    if hi == lo:
        return uniform[lo][0]
    w = (budget - lo) / (hi - lo)
    return (1 - w) * uniform[lo][0] + w * uniform[hi][0]


def per_seed(run: Mapping[str, Any]) -> dict[str, float]:
    """The three per-seed differences of one ``mixed`` run."""
    uniform, searched, random = _by_kind(run, "uniform"), _by_kind(run, "searched"), _by_kind(run, "random")
    budgets = sorted(searched)
    diffs = {
        "mixed_auc_minus_uniform": area_under_curve({b: searched[b][0] for b in budgets})
        - area_under_curve({b: _uniform_at(uniform, b) for b in budgets}),
        "searched_minus_random": statistics.fmean(searched[b][0] - statistics.fmean(random[b]) for b in budgets),
    }
    if 3.0 in searched and 3.0 in uniform:
        diffs["mixed_minus_uniform_3bit"] = searched[3.0][0] - uniform[3.0][0]
    return diffs


def _split(plan: Any, runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    return {"pilot": [r for r in runs if r["seed"] in plan.mixed_pilot_seeds],
            "confirm": [r for r in runs if r["seed"] in plan.mixed_confirm_seeds]}


def mixed_estimates(plan: Any, runs: Sequence[Mapping[str, Any]]) -> dict[str, stats.Estimate]:
    """The mixed-precision claims: t-intervals of the per-seed differences, each over its own seed set."""
    diffs = {name: [(r["seed"], per_seed(r)) for r in group] for name, group in _split(plan, runs).items()}
    estimates = {}
    for claim, (diff, group) in _SOURCES.items():
        pairs = [(seed, d[diff]) for seed, d in diffs[group] if diff in d]  # a plan without a 3-bit budget: none
        if pairs and len(pairs) == len(diffs[group]):
            seeds, values = [s for s, _ in pairs], [v for _, v in pairs]
            estimates[claim] = stats.mean_ci(values, seeds=seeds, per_seed=values, unit="seed (paired differences)")
    return estimates


def mixed_tables(plan: Any, runs: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`mixed_table` for the confirmatory and the pilot seeds."""
    groups = _split(plan, runs)
    return "".join(f"\n\n{mixed_table(groups[key], label)}" for key, label in
                   (("confirm", "confirmatory"), ("pilot", "pilot")) if groups[key])


def mixed_table(runs: Sequence[Mapping[str, Any]], label: str = "") -> str:
    """Mean top-1 over seeds of each kind of sub-net at each average bit-width."""
    cells: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        for kind in ("uniform", "searched", "random"):
            for budget, values in _by_kind(run, kind).items():
                cells.setdefault((kind, budget), []).append(statistics.fmean(values))
    budgets = sorted({b for _, b in cells})
    lines = [f"Mixed precision {{4,3,2}} SuperNet (HASB, sandwich), {len(runs)} {label + ' ' if label else ''}seeds: "
             "top-1 (%) from its one int8 file, mean over seeds (random: the mean of each seed's random sub-nets "
             "first).", "",
             "| sub-net | " + " | ".join(f"{b:g} bits" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for kind in ("uniform", "searched", "random"):
        row = [f"{statistics.fmean(cells[kind, b]):.2f}" if (kind, b) in cells else "–" for b in budgets]
        lines.append(f"| {kind} | {' | '.join(row)} |")
    return "\n".join(lines)


def mixed_notes(plan: Any, runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return ""
    return (f"\n\nMixed precision: per seed (pilot {seed_span(plan.mixed_pilot_seeds)}; confirmatory "
            f"{seed_span(plan.mixed_confirm_seeds)}, which alone decide the headline mixed_minus_uniform_3bit), a "
            f"joint {list(plan.mixed_bits)} model "
            f"({plan.q_epochs} epochs, ALRS) from the seed's FP32 start, then the SuperNet ({plan.mixed_epochs} "
            "epochs, transitional BN, one step per precision per batch; the highest and lowest precisions uniform "
            "every step, the middle one HASB-sampled per layer with probability sigma_e = (e + 1) / E). Hessian "
            f"traces of the FP32 model: Hutchinson, {plan.hessian_probes} probes on {plan.hessian_batches} training "
            f"batches. Budgets {list(plan.mixed_budgets)} bits (unweighted average over the five quantised layers); "
            f"per budget the ILP sub-net (least trace-weighted weight perturbation) and {plan.mixed_random} random "
            "sub-nets, every sub-net evaluated from the one int8 file without fine-tuning.")
