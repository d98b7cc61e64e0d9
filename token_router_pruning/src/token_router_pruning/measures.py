"""Estimates of ``token_router_pruning reproduce`` over their unit of replication: test items for accuracies
(both arms' per-item correctness resampled together), interleaved latency rounds for the prefill speed-up."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from effrepro import stats


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
