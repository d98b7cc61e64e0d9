"""Gradient signal-to-noise ratio (GSNR, Liu et al., ICLR 2020) per gradient component.

For parameter j and gradient component k, over a set of samples (or mini-batches) x::

    GSNR_j^k = E_x[g_j^k(x)]^2 / Var_x[g_j^k(x)]

A model-level number is the median (robust; the default) or mean over all parameter entries. Mini-batch
GSNR is about B times the per-sample GSNR (the variance of a mean of B samples shrinks by 1/B). Scaling a
loss by a positive constant leaves its GSNR unchanged, so loss weights (alpha, beta, warm-up) do not move
it. The variance is the unbiased sample variance (M - 1 in the denominator); entries with zero variance
(e.g. parameters that no sample touches) are left out of the summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from effrepro.optim.components import component_grads, sum_grads

TOTAL = "total"


class GSNRAccumulator:
    """Running mean and variance (Welford, float64) of each component's gradient, entry by entry."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: dict[str, list[Tensor | None]] = {}
        self._m2: dict[str, list[Tensor | None]] = {}

    def update(self, grads: Mapping[str, Sequence[Tensor | None]]) -> None:
        """Add one sample: ``{component: [gradient or None per parameter]}`` (the same keys every time)."""
        if self.count and set(grads) != set(self._mean):
            raise ValueError(f"components changed from {sorted(self._mean)} to {sorted(grads)}")
        self.count += 1
        for name, values in grads.items():
            means = self._mean.setdefault(name, [None] * len(values))
            m2s = self._m2.setdefault(name, [None] * len(values))
            for i, g in enumerate(values):
                x = torch.zeros(()) if g is None else g.detach().to(torch.float64)
                if means[i] is None:
                    means[i] = torch.zeros_like(x)
                    m2s[i] = torch.zeros_like(x)
                delta = x - means[i]
                means[i] = means[i] + delta / self.count
                m2s[i] = m2s[i] + delta * (x - means[i])

    def per_parameter(self) -> dict[str, list[Tensor]]:
        """``{component: [GSNR tensor per parameter]}``; NaN where the variance is zero."""
        if self.count < 2:
            raise ValueError("GSNR needs at least two gradient samples")
        out = {}
        for name in self._mean:
            ratios = []
            for mean, m2 in zip(self._mean[name], self._m2[name]):
                var = m2 / (self.count - 1)
                ratios.append(torch.where(var > 0, mean.square() / var, torch.full_like(var, float("nan"))))
            out[name] = ratios
        return out

    def summary(self, reduction: str = "median") -> dict[str, float]:
        """One number per component: ``median`` (default) or ``mean`` over all finite parameter entries."""
        if reduction not in ("median", "mean"):
            raise ValueError("reduction must be 'median' or 'mean'")
        result = {}
        for name, ratios in self.per_parameter().items():
            flat = torch.cat([r.reshape(-1) for r in ratios])
            flat = flat[torch.isfinite(flat)]
            if flat.numel() == 0:
                result[name] = float("nan")
            else:
                result[name] = float(flat.median() if reduction == "median" else flat.mean())
        return result


def measure_gsnr(
    losses_fn: Callable[[Any], tuple[Mapping[str, Tensor], Sequence[Tensor]]],
    params: Sequence[Tensor],
    batches: Iterable[Any],
    method: str = "backward",
    include_total: bool = True,
    reduction: str = "median",
) -> dict[str, float]:
    """GSNR of each loss component over ``batches`` (each batch is one gradient sample).

    ``losses_fn(batch) -> ({component: scalar loss}, outputs)``; ``outputs`` (the logits) are used only by
    ``method="batched"``. With ``include_total`` the summed gradient is measured too, under ``"total"``.
    """
    acc = GSNRAccumulator()
    params = list(params)
    for batch in batches:
        losses, outputs = losses_fn(batch)
        grads = component_grads(losses, params, method=method, outputs=outputs)
        if include_total:
            grads[TOTAL] = sum_grads(grads)
        acc.update(grads)
    return acc.summary(reduction)
