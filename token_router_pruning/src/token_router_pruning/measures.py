"""Estimates of ``token_router_pruning reproduce`` over their unit of replication (test items for accuracies,
both arms' per-item correctness resampled together; interleaved latency rounds for the prefill speed-up) and the
run's facts."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from effrepro import stats

from token_router_pruning.pipeline import pct

RECALL_TASK = "ftp_mini_recall"  # a fact stated early in the prompt: reported with and without it


def per_item(row: dict, field: str = "correct", exclude: tuple[str, ...] = (), per_family: int | None = None
           ) -> np.ndarray:
    return np.array([v for t in sorted(row[field]) if t not in exclude for v in row[field][t][:per_family]],
                    dtype=float)


def common_per_family(*rows: dict) -> int:
    """Items per family that every row has scored (the first ones: arms on a subset share them)."""
    return min(len(v) for row in rows for v in row["correct"].values())


def _family_ids(row: dict, exclude: tuple[str, ...] = (), per_family: int | None = None) -> np.ndarray:
    tasks = [t for t in sorted(row["correct"]) if t not in exclude]
    return np.array([i for i, t in enumerate(tasks) for _ in row["correct"][t][:per_family]], dtype=float)


def _retention(data: np.ndarray) -> float:
    """Paper's Avg. %: mean over task families of accuracy / dense accuracy (rows: method, dense, family)."""
    ratios = []
    for family in np.unique(data[:, 2]):
        rows = data[data[:, 2] == family]
        if rows[:, 1].mean() > 0:
            ratios.append(rows[:, 0].mean() / rows[:, 1].mean())
    return 100.0 * float(np.mean(ratios)) if ratios else float("nan")


def retention_estimate(row: dict, dense: dict, exclude: tuple[str, ...] = ()) -> stats.Estimate:
    """Retention on the items the method scored (the first ``n`` of each family), paired with the dense model's
    correctness of the same items, bootstrap over items."""
    n = common_per_family(row, dense)
    units = np.stack([per_item(row, exclude=exclude, per_family=n), per_item(dense, exclude=exclude, per_family=n),
                      _family_ids(dense, exclude, per_family=n)], 1)
    return stats.bootstrap(units, _retention, method_accuracy=float(units[:, 0].mean()),
                           dense_accuracy=float(units[:, 1].mean()), excluded=list(exclude), per_family=n)


def _retention_gap(data: np.ndarray) -> float:
    """Retention points: the paper's Avg. % of arm a minus that of arm b (rows: a, b, dense, family), i.e. per
    family the accuracy gap divided by the dense accuracy on the same items, averaged over families."""
    return _retention(data[:, [0, 2, 3]]) - _retention(data[:, [1, 2, 3]])


def retention_gap(a: dict, b: dict, dense: dict) -> stats.Estimate:
    """Arm ``a`` minus arm ``b`` in retention points (the unit of the paper's comparisons) on the items both
    arms scored, with a paired percentile bootstrap over items: each draw resamples items and takes a's, b's and
    the dense model's correctness of the same items together."""
    n = common_per_family(a, b, dense)
    units = np.stack([per_item(a, per_family=n), per_item(b, per_family=n), per_item(dense, per_family=n),
                      _family_ids(dense, per_family=n)], 1)
    est = stats.bootstrap(units, _retention_gap)
    return dataclasses.replace(est, method=est.method + ", paired over items, retention points (per family "
                               "(a - b) / dense accuracy on the same items, mean over families, x100)",
                               details={**est.details, "per_family": n,
                                        "accuracy_gap_points": float(100 * (units[:, 0] - units[:, 1]).mean()),
                                        "a_accuracy": float(units[:, 0].mean()),
                                        "b_accuracy": float(units[:, 1].mean()),
                                        "dense_accuracy": float(units[:, 2].mean())})


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


def estimates(exp: Any, red: dict, latency: dict[str, list[float]]) -> dict[str, stats.Estimate]:
    """Every claim's estimate over its unit of replication (items, windows or latency rounds)."""
    rows, dense = exp.rows, exp.rows["dense"]
    out = {"redundancy_overall": stats.mean_ci(red["per_window_share"])}
    if red["per_window_gap"]:  # a model deep enough to have middle blocks besides the first/last 3
        out["redundancy_depth_gap"] = stats.mean_ci(100 * np.asarray(red["per_window_gap"]))
    for b in exp.cfg.budgets:
        p = pct(b)
        ftp = rows[f"ftp_{p}"]
        out[f"ftp_retention_{p}"] = retention_estimate(ftp, dense)
        if RECALL_TASK in dense["correct"]:
            out[f"ftp_retention_no_recall_{p}"] = retention_estimate(ftp, dense, exclude=(RECALL_TASK,))
        out[f"ftp_vs_shortgpt_{p}"] = retention_gap(ftp, rows[f"shortgpt_{p}"], dense)
        out[f"ftp_vs_blockpruner_{p}"] = retention_gap(ftp, rows[f"blockpruner_{p}"], dense)
        out[f"trained_vs_static_{p}"] = retention_gap(ftp, rows[f"ftp_static_{p}"], dense)
        out[f"static_vs_random_{p}"] = accuracy_gap(rows[f"ftp_static_{p}"], rows[f"random_{p}"])
        if f"ftp_all_positions_stage1_{p}" in rows:
            out[f"distill_scored_vs_all_{p}"] = accuracy_gap(rows[f"ftp_dynamic_stage1_{p}"],
                                                             rows[f"ftp_all_positions_stage1_{p}"])
        if f"uniform_{p}" in rows:
            n = common_per_family(rows[f"uniform_{p}"], rows[f"ftp_static_{p}"])
            out[f"ga_vs_uniform_loss_{p}"] = stats.paired_diff(
                -per_item(rows[f"uniform_{p}"], "gold_loglik", per_family=n),
                -per_item(rows[f"ftp_static_{p}"], "gold_loglik", per_family=n))
        if f"ftp_{p}" in latency:
            out[f"prefill_speedup_{p}"] = speedup_estimate(latency["dense"], latency[f"ftp_{p}"],
                                                           seq_len=exp.cfg.bench.seq_len)
    return out


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
