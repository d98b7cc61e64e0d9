"""HASB: Hessian-aware stochastic bit-switching for the one-shot mixed-precision SuperNet (Algorithm 1, A.3).

For each training step at the "base" precision b, every quantised layer independently keeps b or, with
probability ``sigma_e``, draws a bit-width from a roulette wheel: uniform for insensitive layers (Hessian
trace below the mean), ``p_i = b_i / sum_j b_j`` for sensitive ones (more mass on high bits). ``sigma_e``
ramps linearly over the epochs, ``sigma_e = sigma_0 (e + 1) / E`` (the paper writes ``sigma = sigma (e+1)/E``;
we read it as a ramp, not a cumulative product). ``mode="uniform"`` is the baseline: every layer's wheel is
uniform (random bit sampling without Hessian information).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from effrepro.errors import UsageError

SAMPLERS = ("hasb", "uniform")


def roulette_probs(bits: Sequence[int], sensitive: bool) -> list[float]:
    """The wheel of one layer: ``b_i / sum(b)`` when sensitive, ``1/n`` otherwise."""
    if sensitive:
        total = float(sum(bits))
        return [b / total for b in bits]
    return [1.0 / len(bits)] * len(bits)


def sigma_at(epoch: int, epochs: int, sigma0: float = 1.0) -> float:
    """Linear ramp ``sigma_0 (e + 1) / E`` for epoch ``e`` in ``0..E-1``."""
    return sigma0 * (epoch + 1) / max(epochs, 1)


def sensitive_layers(traces: Mapping[str, float]) -> dict[str, bool]:
    """``t_l >= mean(t)``: sensitive (the paper: ``t_l < t_m`` is insensitive)."""
    if not traces:
        return {}
    mean = sum(traces.values()) / len(traces)
    return {name: value >= mean for name, value in traces.items()}


class BitSampler:
    """Per-layer bit sampling for one SuperNet step (draws from the global torch RNG unless a generator is
    given, so a resumed run continues the same stream)."""

    def __init__(self, layers: Sequence[str], bits: Sequence[int], traces: Mapping[str, float] | None,
                 mode: str = "hasb") -> None:
        if mode not in SAMPLERS:
            raise UsageError(f"unknown sampler {mode!r}; use one of: {', '.join(SAMPLERS)}")
        if mode == "hasb":
            missing = [l for l in layers if l not in (traces or {})]
            if missing:
                raise UsageError(f"HASB needs a Hessian trace for every quantised layer; missing {missing[:3]} "
                                 "(run `double_rounding hessian` on the FP32 model first)")
            flags = sensitive_layers({l: float(traces[l]) for l in layers})
        else:
            flags = dict.fromkeys(layers, False)
        self.layers, self.bits, self.mode, self.sensitive = list(layers), list(bits), mode, flags
        probs = [roulette_probs(self.bits, flags[l]) for l in self.layers]
        self.cumulative = torch.tensor(probs, dtype=torch.float64).cumsum(1)

    def sample(self, base_bits: int, sigma: float, generator: torch.Generator | None = None) -> dict[str, int]:
        """Each layer: with probability ``sigma`` a roulette draw, else ``base_bits``."""
        n = len(self.layers)
        switch = torch.rand(n, generator=generator, dtype=torch.float64) < sigma
        spin = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        index = (spin > self.cumulative).sum(1).clamp_max(len(self.bits) - 1)
        return {layer: (self.bits[int(index[i])] if bool(switch[i]) else base_bits)
                for i, layer in enumerate(self.layers)}
