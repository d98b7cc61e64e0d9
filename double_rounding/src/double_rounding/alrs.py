"""ALRS: the adaptive learning rate of the quantisation scales, per precision (paper eqs. 6-7).

After precision ``b``'s backward, the scales (not the weights) are updated with

    lambda_b = eta(D) * (lambda - (1/L) * sum_i min(maxabs(clip_grad(grad s_b^i, 1)), 1)),   D = h - b,
    eta(D) = 10^(-D/2) for even D, 5 * 10^(-(D+1)/2) for odd D.

Three readings (spec §1.5), chosen by ``mode``:

* ``literal``: the equation as printed. With the paper's lambda = 5e-4 the bracket is negative whenever a scale
  gradient exceeds lambda, so it is clamped at 0 (and the clamp rate is logged).
* ``simple``: ``eta(D) * lambda`` (the reviewers' reading: the LR shrinks by ~0.316 per bit of Delta).
* ``off``: ``lambda`` (no ALRS).

Reconstruction: ``grad s_b^i`` is the gradient vector of layer i's scales used at bit b, i.e. the shared
weight scale ``s_h`` and the activation scale ``s_b``; ``clip_grad`` clips that vector to norm 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from effrepro.errors import UsageError
from torch import Tensor

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
