"""DeepKD's dynamic top-k mask (DTM): the curriculum that grows K from K0 to the class count.

The released code has only a static K (``SOLVER.DEEPKD.TOPK``, off in every config); the paper describes a
K that starts small and grows (easy -> hard). The curve is a *reconstruction* (spec §1.4)::

    s(e) = clip((e - e0) / (e1 - e0), 0, 1)          e = 1-indexed epoch
    K(e) = min(C, K0 + ceil((C - K0) * f(s)))         f = linear (s), cosine ((1 - cos(pi s)) / 2) or step

Defaults when not given: K0 = ceil(0.1 C), e0 = end of the KD warm-up, e1 = first LR decay epoch.
K is kept >= 3: K = 2 with a correct teacher leaves one class (NCKD = 0) and K = 1 masks every class, which
with the -1000 offset silently turns NCKD into the unmasked all-class KD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from effrepro.errors import UsageError

CURVES = ("linear", "cosine", "step")
MIN_K = 3


@dataclass(frozen=True)
class TopKSchedule:
    """``K(epoch)`` for the non-target mask; ``K(e <= e0) = K0``, ``K(e >= e1) = num_classes``."""

    num_classes: int
    k0: int
    start_epoch: float
    end_epoch: float
    curve: str = "linear"

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise UsageError(f"unknown top-k curve {self.curve!r}; use one of: {', '.join(CURVES)}")
        if self.k0 > self.num_classes:
            raise UsageError(f"mask K0={self.k0} is larger than the class count {self.num_classes}; "
                             f"use K0 <= {self.num_classes}")
        if self.k0 < MIN_K:
            raise UsageError(f"mask K0={self.k0} is degenerate (K <= 2 zeroes or breaks NCKD); use K0 >= {MIN_K}")
        if self.end_epoch <= self.start_epoch:
            raise UsageError(f"mask schedule needs end_epoch > start_epoch, got {self.start_epoch} .. {self.end_epoch}")

    def progress(self, epoch: float) -> float:
        s = min(max((epoch - self.start_epoch) / (self.end_epoch - self.start_epoch), 0.0), 1.0)
        if self.curve == "cosine":
            return (1.0 - math.cos(math.pi * s)) / 2.0
        if self.curve == "step":
            return 1.0 if s >= 1.0 else 0.0
        return s

    def __call__(self, epoch: float) -> int:
        grow = math.ceil((self.num_classes - self.k0) * self.progress(epoch) - 1e-9)
        return min(self.num_classes, self.k0 + grow)


def static_topk(k: int, num_classes: int) -> int:
    """Validate a static K (0 = off)."""
    if k == 0:
        return 0
    if k > num_classes:
        raise UsageError(f"mask K={k} is larger than the class count {num_classes}; use K <= {num_classes} or 0")
    if k < MIN_K:
        raise UsageError(f"mask K={k} is degenerate; use K >= {MIN_K} (or 0 for no mask)")
    return k
