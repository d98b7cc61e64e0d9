"""Paired A/B timing (warm-up, interleaved repeats, medians, ratios) and parameter / FLOP counting."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call over the measured repeats (warm-up excluded)."""

    samples: tuple[float, ...] = field(repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, float]:
        return {"median_s": self.median, "mean_s": self.mean, "min_s": self.min, "max_s": self.max,
                "repeats": len(self.samples)}


def cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def paired_benchmark(
    fns: dict[str, Callable[[], object]],
    warmup: int = 3,
    repeats: int = 21,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, TimingStats]:
    """Time several callables against each other on the same machine state.

    Each callable is warmed up ``warmup`` times, then the callables run round-robin ``repeats`` times,
    with the order rotated every round so that drift (thermal, other processes) hits all of them alike.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before reading the clock.
    """
    if not fns:
        raise ValueError("paired_benchmark needs at least one callable")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(fns)
    sync = sync or (lambda: None)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            fns[name]()
            sync()
            samples[name].append(clock() - start)
    return {name: TimingStats(tuple(values)) for name, values in samples.items()}


def ratio(stats: dict[str, TimingStats], num: str, den: str) -> float:
    """``median(num) / median(den)``: e.g. latency ratio method / baseline (< 1 means faster)."""
    return stats[num].median / stats[den].median


def speedup(stats: dict[str, TimingStats], method: str, baseline: str) -> float:
    """``median(baseline) / median(method)``: > 1 means ``method`` is faster."""
    return stats[baseline].median / stats[method].median


def throughput(stats: TimingStats, items_per_call: int) -> float:
    """Items per second at the median call time."""
    return items_per_call / stats.median


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """Forward FLOPs of ``module(*inputs, **kwargs)`` by ``torch.utils.flop_counter`` (1 MAC = 2 FLOPs).

    Papers in this field usually quote MACs as "FLOPs"; divide by 2 to compare with them.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs, **kwargs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())
