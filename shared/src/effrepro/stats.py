"""Intervals and verdicts for the reproduce contract: every comparative claim is an :class:`Estimate` over its
unit of replication (seeds, items, turns) with a 95 % interval, and its verdict says whether the whole interval
meets the expectation (``holds``), misses it (``fails``) or straddles it (``inconclusive``).

Two interval methods, named in each claim's ``details["interval"]``:

* ``t``: Student-t interval of a mean (of values, or of paired differences / per-unit ratios); right for means of a
  handful of seeds whose spread is roughly normal.
* ``bootstrap``: percentile bootstrap over the units (paired: both arms resampled together), for ratios of means,
  proportions over items and anything skewed. Seeded, so a rerun gives the same interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
BOOTSTRAP_DRAWS = 10_000
VERDICTS = ("holds", "fails", "inconclusive")
_EXPECT = re.compile(
    r"^\s*(?:(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[-+0-9.eE]+|inf|-inf)|between\s+(?P<lo>[-+0-9.eE]+)\s+"
    r"(?P<hi>[-+0-9.eE]+))\s*(?:,\s*fails\s+(?P<side>below|above)\s+(?P<smallest>[-+0-9.eE]+)\s*)?$"
)


@dataclass(frozen=True)
class Expectation:
    """A parsed ``expect`` string: ``">= 1.0"``, ``"< 0.5"``, ``"between 0.9 1.1"`` (``==``/``!=`` only for checks
    of exact values, never for claims with an interval).

    A one-sided expectation may name a smallest effect of interest: ``"> 0, fails below 9.5"``. A claim that a
    method is better (``> 0``) cannot be decided at any ``n`` when the true effect is 0; the paper, however, claims
    an effect of a stated size. The claim then fails when the whole interval lies on the wrong side of that
    smallest effect (here: below 9.5, i.e. an effect as large as 9.5 is excluded), even where it also lies above 0:
    a gain far smaller than the paper's does not reproduce the paper's claim. It holds when the whole interval meets
    the direction (``> 0``) and reaches the smallest effect.
    """

    op: str
    lo: float
    hi: float
    smallest: float | None = None

    @classmethod
    def parse(cls, text: str) -> Expectation:
        match = _EXPECT.match(text)
        if match is None:
            raise ValueError(f"cannot parse expect {text!r}; use e.g. '>= 1.0', '< 0.5', 'between 0.9 1.1' or "
                             "'> 0, fails below 5'")
        if match["op"] is None:
            lo, hi = float(match["lo"]), float(match["hi"])
            if lo > hi:
                raise ValueError(f"expect {text!r}: the lower bound exceeds the upper one")
            if match["side"] is not None:
                raise ValueError(f"expect {text!r}: a smallest effect needs a one-sided expectation (>, >=, <, <=)")
            return cls("between", lo, hi)
        value = float(match["value"])
        if match["side"] is None:
            return cls(match["op"], value, value)
        smallest = float(match["smallest"])
        upward = match["op"] in (">", ">=")
        if match["op"] in ("==", "!=") or (match["side"] == "below") != upward or \
                (smallest < value if upward else smallest > value):
            raise ValueError(f"expect {text!r}: use '> x, fails below y' with y >= x or '< x, fails above y' with "
                             "y <= x")
        return cls(match["op"], value, value, smallest)

    def met_by(self, value: float) -> bool:
        """Whether one number meets the expectation (NaN never does)."""
        if math.isnan(value):
            return False
        if self.op == "between":
            return self.lo <= value <= self.hi
        close = math.isclose(value, self.lo, rel_tol=1e-9, abs_tol=1e-12)
        return {">=": value >= self.lo, "<=": value <= self.lo, ">": value > self.lo, "<": value < self.lo,
                "==": close, "!=": not close}[self.op]

    def verdict(self, lo: float, hi: float) -> str:
        """``holds`` iff every value of ``[lo, hi]`` meets the expectation, ``fails`` iff none does."""
        if self.op in ("==", "!="):
            raise ValueError(f"expect '{self.op}' compares exact values; a claim with an interval needs >=, <=, >, <"
                             " or between")
        if math.isnan(lo) or math.isnan(hi):
            return "inconclusive"
        if self.op == "between":
            if self.lo <= lo and hi <= self.hi:
                return "holds"
            return "fails" if hi < self.lo or lo > self.hi else "inconclusive"
        if self.smallest is not None and (hi < self.smallest if self.op in (">", ">=") else lo > self.smallest):
            return "fails"  # an effect of the smallest size of interest is excluded
        if self.met_by(lo) and self.met_by(hi):
            return "holds"
        if not self.met_by(lo) and not self.met_by(hi):
            return "fails"
        return "inconclusive"

    def threshold_distance(self, value: float) -> float:
        """How far ``value`` is from the boundary an interval around it must clear to decide (for the n that would
        decide): the nearest boundary, or with a smallest effect the farther of the two it can be decided by."""
        if self.op == "between":
            return min(abs(value - self.lo), abs(value - self.hi))
        if self.smallest is None:
            return abs(value - self.lo)
        upward = self.op in (">", ">=")
        to_direction = max(0.0, value - self.lo if upward else self.lo - value)
        to_smallest = max(0.0, self.smallest - value if upward else value - self.smallest)
        return max(to_direction, to_smallest)


def check_expect(measured: float, expect: str) -> bool:
    """Whether one number meets an ``expect`` string (``">= 1.0"``, ``"between 0.9 1.1"``, ``"== 5"``)."""
    return Expectation.parse(expect).met_by(float(measured))


def verdict(ci: Sequence[float], expect: str) -> str:
    """The verdict of an interval against an ``expect`` string (see :meth:`Expectation.verdict`)."""
    return Expectation.parse(expect).verdict(float(ci[0]), float(ci[1]))


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95 % interval over ``n`` units and how the interval was computed."""

    value: float
    n: int
    ci: tuple[float, float]
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def half_width(self) -> float:
        return (self.ci[1] - self.ci[0]) / 2


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("an estimate needs at least one value")
    return array


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _clean(a), _clean(b)
    if x.shape != y.shape:
        raise ValueError(f"paired arms need the same units (seeds, items or turns): {x.size} vs {y.size}")
    return x, y


def t_quantile(n: int, level: float = LEVEL) -> float:
    return float(_scipy_stats.t.ppf(0.5 + level / 2, df=n - 1)) if n > 1 else math.nan


def mean_ci(values: Sequence[float], level: float = LEVEL, **details: Any) -> Estimate:
    """Mean of ``values`` with a Student-t interval (NaN interval for a single value: undecidable)."""
    array = _clean(values)
    mean = float(array.mean())
    if array.size < 2:
        return Estimate(mean, 1, (math.nan, math.nan), "t", {"values": array.tolist(), **details})
    sd = float(array.std(ddof=1))
    half = t_quantile(array.size, level) * sd / math.sqrt(array.size)
    return Estimate(mean, int(array.size), (mean - half, mean + half), "t",
                    {"values": array.tolist(), "sd": sd, **details})


def paired_diff(a: Sequence[float], b: Sequence[float], level: float = LEVEL, **details: Any) -> Estimate:
    """Mean of the per-unit differences ``a_i - b_i`` (same seed / item / turn) with a t-interval."""
    x, y = _pair(a, b)
    est = mean_ci(x - y, level)
    return Estimate(est.value, est.n, est.ci, "t (paired differences)",
                    {**est.details, "a_mean": float(x.mean()), "b_mean": float(y.mean()), **details})


def bootstrap(units: Sequence[Any] | np.ndarray, statistic: Callable[[np.ndarray], float], level: float = LEVEL,
              draws: int = BOOTSTRAP_DRAWS, seed: int = 0, **details: Any) -> Estimate:
    """Percentile bootstrap of ``statistic`` over ``units`` (rows of an array: resampled together, so paired)."""
    data = np.asarray(units, dtype=np.float64)
    if data.shape[0] == 0:
        raise ValueError("a bootstrap needs at least one unit")
    value = float(statistic(data))
    n = int(data.shape[0])
    if n < 2:
        return Estimate(value, n, (math.nan, math.nan), "bootstrap", dict(details))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(draws, n))
    samples = np.array([statistic(data[row]) for row in index], dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail]) if samples.size else (math.nan, math.nan)
    return Estimate(value, n, (float(lo), float(hi)), f"percentile bootstrap ({draws} draws)", dict(details))


def paired_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL, **details: Any) -> Estimate:
    """Ratio of means ``mean(a) / mean(b)`` over paired units, with a paired percentile bootstrap."""
    x, y = _pair(a, b)
    est = bootstrap(np.stack([x, y], axis=1), lambda d: d[:, 0].mean() / d[:, 1].mean(), level)
    return Estimate(est.value, est.n, est.ci, est.method + ", paired ratio of means",
                    {"a_mean": float(x.mean()), "b_mean": float(y.mean()), **details})


def proportion_diff(a: Sequence[float], b: Sequence[float], level: float = LEVEL, **details: Any) -> Estimate:
    """Paired difference of two per-item scores (e.g. 0/1 correctness), bootstrap over items."""
    x, y = _pair(a, b)
    est = bootstrap(np.stack([x, y], axis=1), lambda d: d[:, 0].mean() - d[:, 1].mean(), level)
    return Estimate(est.value, est.n, est.ci, est.method + ", paired over items",
                    {"a_mean": float(x.mean()), "b_mean": float(y.mean()), **details})


def exact(value: float, n: int = 1, **details: Any) -> Estimate:
    """A value measured without sampling error at this scale (a deterministic count or size): its interval is the
    point itself. Use only where re-running cannot change the number; otherwise it is a fact, not a claim."""
    value = float(value)
    return Estimate(value, n, (value, value), "exact (deterministic measurement)", dict(details))


def n_to_decide(estimate: Estimate, expect: str) -> int | None:
    """The number of units at which an interval of the same spread would exclude the nearest boundary of
    ``expect`` (``None`` when the estimate sits on the boundary or has no spread to scale)."""
    if estimate.n < 2 or not all(math.isfinite(v) for v in estimate.ci):
        return None
    distance = Expectation.parse(expect).threshold_distance(estimate.value)
    half = estimate.half_width()
    if distance <= 0 or half <= 0:
        return None
    return max(estimate.n + 1, math.ceil(estimate.n * (half / distance) ** 2))


def min_detectable_effect(estimate: Estimate, power: float = 0.8) -> float | None:
    """The smallest true effect this ``n`` and spread would detect at 5 % two-sided with the given power
    (normal approximation: (z_{0.975} + z_power) * standard error)."""
    if estimate.n < 2 or not all(math.isfinite(v) for v in estimate.ci):
        return None
    z = _scipy_stats.norm.ppf(0.5 + LEVEL / 2)
    stderr = estimate.half_width() / z
    return float((z + _scipy_stats.norm.ppf(power)) * stderr)
