"""Estimates of ``token_router_pruning reproduce`` over their unit of replication (test items for accuracies,
both arms' per-item correctness resampled together; interleaved latency rounds for the prefill speed-up) and the
run's facts."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from effrepro import stats

from token_router_pruning.pipeline import pct


def per_item(row: dict, field: str = "correct", exclude: tuple[str, ...] = (), per_family: int | None = None
           ) -> np.ndarray:
    return np.array([v for t in sorted(row[field]) if t not in exclude for v in row[field][t][:per_family]],
                    dtype=float)


def common_per_family(*rows: dict) -> int:
    """Items per family that every row has scored (the first ones: arms on a subset share them)."""
    return min(len(v) for row in rows for v in row["correct"].values())


def _family_ids(row: dict, exclude: tuple[str, ...] = ()) -> np.ndarray:
    tasks = [t for t in sorted(row["correct"]) if t not in exclude]
    return np.array([i for i, t in enumerate(tasks) for _ in row["correct"][t]], dtype=float)


def _retention(data: np.ndarray) -> float:
    """Paper's Avg. %: mean over task families of accuracy / dense accuracy (rows: method, dense, family)."""
    ratios = []
    for family in np.unique(data[:, 2]):
        rows = data[data[:, 2] == family]
        if rows[:, 1].mean() > 0:
            ratios.append(rows[:, 0].mean() / rows[:, 1].mean())
    return 100.0 * float(np.mean(ratios)) if ratios else float("nan")


def retention_estimate(row: dict, dense: dict, exclude: tuple[str, ...] = ()) -> stats.Estimate:
    units = np.stack([per_item(row, exclude=exclude), per_item(dense, exclude=exclude), _family_ids(dense, exclude)], 1)
    return stats.bootstrap(units, _retention, method_accuracy=float(units[:, 0].mean()),
                           dense_accuracy=float(units[:, 1].mean()), excluded=list(exclude))


def accuracy_gap(a: dict, b: dict) -> stats.Estimate:
    n = common_per_family(a, b)
    return stats.proportion_diff(100 * per_item(a, per_family=n), 100 * per_item(b, per_family=n), per_family=n)


def speedup_estimate(dense: list[float], method: list[float], **details: Any) -> stats.Estimate:
    """Median over interleaved rounds of the per-round ratio dense / method, bootstrap over rounds: a round
    slowed by another process slows both arms of its pair, and the median ignores the few rounds it does not."""
    pairs = np.stack([np.asarray(dense, float), np.asarray(method, float)], 1)
    est = stats.bootstrap(pairs, lambda d: float(np.median(d[:, 0] / d[:, 1])))
    return dataclasses.replace(est, method=est.method + ", median of per-round ratios",
                               details={**est.details, **details,
                                        "ratio_of_medians": float(np.median(pairs[:, 0]) / np.median(pairs[:, 1]))})


def _router_facts(summary: dict, steps: int) -> dict[str, Any]:
    """Held-out KL of the hard-routed model at the scored positions, last epoch, with the static router's KL on
    the same prompts and the relative change of the KL over the last quarter of training (the plateau)."""
    kl = [h["eval_kl"] for h in summary["history"] if "eval_kl" in h]
    quarter = max(1, len(kl) // 4)
    change = (kl[-1] - kl[-1 - quarter]) / kl[-1 - quarter] if len(kl) > quarter and kl[-1 - quarter] else None
    return {"history": summary["history"], "steps": steps, "static_router_kl": summary["static_heldout_kl"],
            "relative_change_last_quarter": change, "examples": summary.get("examples"),
            "heldout_prompts": summary.get("heldout"), "warm_start_bce": summary.get("warm_start_bce"),
            "kl_after_warm_start": summary.get("start_heldout_kl"), "best_epoch": summary.get("best_epoch")}


def facts(exp: Any, matched, searched, tuned, latency, determinism, router, router_summary,
          ablation=None) -> dict[str, Any]:
    rows, dense = exp.rows, exp.rows["dense"]
    per_task = {t: v["acc"] for t, v in dense["tasks"].items()}
    lengths = exp.prompt_lengths or [exp.ref_len]
    final = router_summary["final"]
    out: dict[str, Any] = {
        "dense_accuracy": (float(per_item(dense).mean()), {"per_task": per_task}),
        "test_items": (int(per_item(dense).size), {"per_task": {t: v["n"] for t, v in dense["tasks"].items()},
                                                 "prompt_tokens": {"mean": float(np.mean(lengths)),
                                                                   **{f"q{q}": float(np.percentile(lengths, q))
                                                                      for q in (0, 10, 50, 90, 100)}},
                                                 "secondary_arms_per_family": exp.cfg.data.secondary_per_family}),
        "router_parameters": sum(p.numel() for p in router.parameters()),
        "router_final_distill": (float(final.get("train_distill", float("nan"))),
                                 {"distill_positions": exp.cfg.router.distill_positions}),
        "router_heldout_kl": (float(final.get("eval_kl", float("nan"))),
                              _router_facts(router_summary, exp.cfg.router.steps)),
        "router_training_seconds": round(router_summary["seconds"], 1),
        "determinism_router_max_abs_diff": determinism["router_max_abs_diff"],
        "determinism_fitness_abs_diff": determinism["fitness_abs_diff"],
    }
    if ablation is not None:
        out["router_all_positions_heldout_kl"] = (float(ablation[1]["final"].get("eval_kl", float("nan"))),
                                                  _router_facts(ablation[1], exp.cfg.router.steps))
    for b in exp.cfg.budgets:
        p, m = pct(b), matched[b]
        gap = max(abs(m["shortgpt"] / m["ftp"] - 1), abs(m["blockpruner"] / m["ftp"] - 1))
        out[f"flops_ratio_{p}"] = (m["ftp"], {"matched": m, "largest_relative_gap": gap, "ref_len": exp.ref_len})
        out[f"schedule_sparsity_{p}"] = (float(np.mean(tuned[b]["best"])), {
            "ga_static": searched[b]["best"], "ga_finetune": tuned[b]["best"],
            "fitness_static": searched[b]["history"], "fitness_finetune": tuned[b]["history"]})
        out[f"ga_calibration_gain_{p}"] = (searched[b]["best_fitness"] - searched[b]["uniform_fitness"], {
            "best": searched[b]["best_fitness"], "uniform": searched[b]["uniform_fitness"],
            "evaluations": searched[b]["evaluations"], "calibration_items": len(exp.calib_items)})
        ppl = {k: rows[k]["ppl"] / dense["ppl"] for k in rows if rows[k]["budget"] == b}
        out[f"ppl_ratio_{p}"] = (ppl[f"ftp_{p}"], {"all_methods": ppl})
        speed = {k: float(np.mean(latency["dense"]) / np.mean(v)) for k, v in latency.items() if k.endswith(f"_{p}")}
        if f"ftp_{p}" in speed:
            out[f"prefill_speedups_{p}"] = (speed[f"ftp_{p}"], {
                "all_methods": speed, "median_seconds": {k: float(np.median(v)) for k, v in latency.items()}})
    return out
