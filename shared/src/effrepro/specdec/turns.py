"""Per-turn statistics of the harness's turn records, with intervals over turns (the unit of replication).

The harness pools its metrics over all turns (``summarize``); a comparison between two methods needs an interval,
and the turns are what is replicated. Every method of one ``evaluate`` call answers the same turns in the same
order, so two methods are paired by turn and resampled together (``effrepro.stats.bootstrap``):

* :func:`ratio_of_sums`: ``(sum num_a / sum den_a) / (sum num_b / sum den_b)`` over the resampled turns, e.g. tau
  (``cycle_tokens`` / ``cycles``), pooled tokens/s (``new_tokens`` / ``wall_time``) or draft seconds per cycle;
* :func:`acceptance_difference`: conditional acceptance (accepted / reached, pooled over turns) at one set of draft
  positions minus another (same method or two methods), from the per-cycle ``accept_lengths`` and ``tree_depths``;
* :func:`mismatch_rate`: the share of turns whose greedy tokens differ from the baseline's (a count, exact), with
  the near-ties of those turns in its details.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from effrepro.stats import Estimate, bootstrap, exact


def _paired(a: Sequence[dict], b: Sequence[dict]) -> None:
    keys_a = [(r["question_id"], r["turn"]) for r in a]
    keys_b = [(r["question_id"], r["turn"]) for r in b]
    if keys_a != keys_b:
        raise ValueError("paired turn statistics need both methods' records of the same turns in the same order")


def ratio_of_sums(a: Sequence[dict], b: Sequence[dict], num: str, den: str, **details: Any) -> Estimate:
    """``(sum num / sum den)`` of method ``a`` over that of ``b``, paired bootstrap over turns."""
    _paired(a, b)
    rows = np.array([[ra[num], ra[den], rb[num], rb[den]] for ra, rb in zip(a, b, strict=True)], dtype=np.float64)

    def statistic(d: np.ndarray) -> float:
        sums = d.sum(axis=0)
        return float((sums[0] / sums[1]) / (sums[2] / sums[3])) if sums[1] and sums[2] and sums[3] else np.nan

    a_value, b_value = rows[:, 0].sum() / rows[:, 1].sum(), rows[:, 2].sum() / rows[:, 3].sum()
    est = bootstrap(rows, statistic, **details)
    return Estimate(est.value, est.n, est.ci, est.method + ", paired over turns, ratio of sums",
                    {"a": float(a_value), "b": float(b_value), "unit": "turns", **est.details})


def acceptance_counts(record: dict, positions: Sequence[int]) -> tuple[int, int]:
    """``(accepted, reached)`` over one turn's cycles at the draft ``positions`` (1-based): a position d is reached
    when the first d - 1 drafts were accepted and the tree reaches depth d."""
    accepted = reached = 0
    for length, depth in zip(record["accept_lengths"], record["tree_depths"], strict=True):
        for d in positions:
            if length >= d - 1 and depth >= d:
                reached += 1
                accepted += int(length >= d)
    return accepted, reached


def acceptance_difference(first: Sequence[dict], first_positions: Sequence[int], second: Sequence[dict],
                          second_positions: Sequence[int], **details: Any) -> Estimate:
    """Conditional acceptance of ``first`` at ``first_positions`` minus that of ``second`` at ``second_positions``
    (each pooled over turns; the same records for a within-method contrast, or two methods' records of the same
    turns), bootstrap over turns. NaN value when either side was never reached."""
    _paired(first, second)
    rows = np.array([[*acceptance_counts(a, first_positions), *acceptance_counts(b, second_positions)]
                     for a, b in zip(first, second, strict=True)], dtype=np.float64)

    def statistic(d: np.ndarray) -> float:
        s = d.sum(axis=0)
        return float(s[0] / s[1] - s[2] / s[3]) if s[1] and s[3] else np.nan

    sums = rows.sum(axis=0)
    est = bootstrap(rows, statistic, **details)
    return Estimate(est.value, est.n, est.ci, est.method + ", paired over turns, pooled accepted / reached",
                    {"first": {"positions": list(first_positions), "accepted": int(sums[0]), "reached": int(sums[1])},
                     "second": {"positions": list(second_positions), "accepted": int(sums[2]),
                                "reached": int(sums[3])}, "unit": "turns", **est.details})


def mismatch_rate(records: Sequence[Sequence[dict]], baseline: Sequence[dict], **details: Any) -> Estimate:
    """Share of turns (over every method in ``records``) whose tokens differ from ``baseline``'s. Greedy decoding
    is deterministic, so the count is exact: any mismatch makes ``<= 0`` fail.

    The details also count near-ties (``near_ties`` of the turn records: greedy decisions with a top-2 logit gap
    below the dtype's tolerance, ``generate.py``) over the checked turns of both sides, and how many mismatched
    turns had one on either side: a mismatch at a near-tie can be round-off, one without is a bug."""
    for rows in records:
        _paired(rows, baseline)
    turns = sum(len(rows) for rows in records)
    pairs = [(r, p) for rows in records for r, p in zip(rows, baseline, strict=True)]
    mismatched = [(r, p) for r, p in pairs if r["tokens"] != p["tokens"]]
    ties = sum(r.get("near_ties", 0) for rows in records for r in rows) + sum(p.get("near_ties", 0) for p in baseline)
    at_tie = sum(1 for r, p in mismatched if r.get("near_ties", 0) or p.get("near_ties", 0))
    return exact(len(mismatched) / turns if turns else np.nan, n=max(turns, 1), mismatched_turns=len(mismatched),
                 turns_checked=int(turns), near_ties=int(ties), mismatched_turns_with_near_tie=int(at_tie),
                 **details)
