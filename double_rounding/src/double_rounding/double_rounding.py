"""Double Rounding: one-shot multi/mixed-precision quantisation with one INT8 store (the paper's method).

The method's parts and where they live:

* **Double rounding and bit switching** (shared with effrepro.kernels' integer kernels, hence in
  :mod:`effrepro.quant`): the model keeps one highest-precision set of integer codes ``q_h`` with scale ``s_h``;
  precision ``b`` is obtained by a second rounding of those codes, ``q_b = clip(round_tie(q_h / 2^(h-b)))``
  (:func:`effrepro.quant.functional.second_rounding` in training with an STE, the integer shift
  :func:`effrepro.quant.shift_codes` in deployment), de-quantised as ``q_b * s_h * 2^(h-b)``. Switching the
  whole model is :func:`effrepro.quant.set_bits`; ``quantize_model`` inserts the quantisers.
* **ALRS** (adaptive learning rate of the scales, per precision) and **HASB** (Hessian-aware stochastic bit
  switching for the mixed-precision SuperNet): this module, below.

ALRS, the adaptive learning rate of the quantisation scales, per precision (paper eqs. 6-7).

After precision ``b``'s backward, the scales (not the weights) are updated with

    lambda_b = eta(D) * (lambda - (1/L) * sum_i min(maxabs(clip_grad(grad s_b^i, 1)), 1)),   D = h - b,
    eta(D) = 10^(-D/2) for even D, 5 * 10^(-(D+1)/2) for odd D.

Three readings, chosen by ``mode`` (the printed equation and its reviewers' reading disagree):

* ``literal``: the equation as printed. With the paper's lambda = 5e-4 the bracket is negative whenever a scale
  gradient exceeds lambda, so it is clamped at 0 (and the clamp rate is logged).
* ``simple``: ``eta(D) * lambda`` (the reviewers' reading: the LR shrinks by ~0.316 per bit of Delta).
* ``off``: ``lambda`` (no ALRS).

Reconstruction: ``grad s_b^i`` is the gradient vector of layer i's scales used at bit b, i.e. the shared
weight scale ``s_h`` and the activation scale ``s_b``; ``clip_grad`` clips that vector to norm 1.

HASB, Hessian-aware stochastic bit-switching for the one-shot mixed-precision SuperNet (Algorithm 1, A.3).

For each training step at the "base" precision b, every quantised layer independently keeps b or, with
probability ``sigma_e``, draws a bit-width from a roulette wheel: uniform for insensitive layers (Hessian
trace below the mean), ``p_i = b_i / sum_j b_j`` for sensitive ones (more mass on high bits). ``sigma_e``
ramps linearly over the epochs, ``sigma_e = sigma_0 (e + 1) / E`` (the paper writes ``sigma = sigma (e+1)/E``;
we read it as a ramp, not a cumulative product). ``mode="uniform"`` is the baseline: every layer's wheel is
uniform (random bit sampling without Hessian information).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from effrepro.errors import UsageError
from torch import Tensor

# ---- ALRS ---------------------------------------------------------------------------------------------------
ALRS_MODES = ("literal", "simple", "off")


def eta(delta: int) -> float:
    """``10^(-D/2)`` for even D, ``5 * 10^(-(D+1)/2)`` for odd D: 1, .5, .1, .05, .01, .005, .001 for D = 0..6."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if delta % 2 == 0:
        return 10.0 ** (-delta / 2)
    return 5.0 * 10.0 ** (-(delta + 1) / 2)


def gradient_term(grads_per_layer: Iterable[Sequence[Tensor | None]], max_norm: float = 1.0) -> float:
    """``(1/L) sum_i min(maxabs(clip_grad(g_i, max_norm)), 1)`` over the layers' scale gradients."""
    values = []
    for grads in grads_per_layer:
        flat = [g.detach().flatten() for g in grads if g is not None]
        if not flat:
            values.append(0.0)
            continue
        vector = torch.cat(flat).float()
        norm = float(vector.norm())
        if norm > max_norm:
            vector = vector * (max_norm / norm)
        values.append(min(float(vector.abs().max()), 1.0))
    return sum(values) / max(len(values), 1)


class ALRS:
    """Computes the scale learning rate per precision step and keeps counts for the logs (resumable)."""

    def __init__(self, mode: str, high_bits: int) -> None:
        if mode not in ALRS_MODES:
            raise UsageError(f"unknown alrs mode {mode!r}; use one of: {', '.join(ALRS_MODES)}")
        self.mode, self.high_bits = mode, high_bits
        self.steps: dict[int, int] = {}
        self.clamped: dict[int, int] = {}

    def scale_lr(self, base_lr: float, bits: int, grads_per_layer: Iterable[Sequence[Tensor | None]]) -> float:
        """The LR of the scale optimizer for this step at ``bits`` (the weight optimizer keeps ``base_lr``)."""
        self.steps[bits] = self.steps.get(bits, 0) + 1
        if self.mode == "off":
            return base_lr
        factor = eta(self.high_bits - bits)
        if self.mode == "simple":
            return factor * base_lr
        bracket = base_lr - gradient_term(grads_per_layer)
        if bracket < 0.0:
            self.clamped[bits] = self.clamped.get(bits, 0) + 1
            bracket = 0.0
        return factor * bracket

    def clamp_rate(self) -> dict[int, float]:
        return {b: self.clamped.get(b, 0) / n for b, n in self.steps.items() if n}

    def state_dict(self) -> dict:
        return {"steps": dict(self.steps), "clamped": dict(self.clamped)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.clamped = dict(state["steps"]), dict(state["clamped"])


# ---- HASB ---------------------------------------------------------------------------------------------------
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
