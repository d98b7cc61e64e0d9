"""Fake quantisation with straight-through estimators, and the double-rounding bit switch on integer codes.

Everything that must agree bit-for-bit between training (fake-quant on float master weights) and deployment
(integer codes read from an int8 file) is written here once:

* the first rounding ``W -> clip(round(W / s_h))`` (torch.round, half-to-even: float ties do not occur in
  practice, and both paths call the same op);
* the second rounding ``q_h -> clip(round_tie(q_h / 2^D))`` in float with an STE (training) and as an integer
  shift (deployment), for the three tie rules;
* the de-quantisation ``q_l * (s_h * 2^D)``; multiplying by a power of two is exact in floating point, so the
  fake-quant weight and the de-quantised exported weight are the same floats.

Rounding and gradient scaling use custom autograd functions whose forward is the plain op, so the forward
value is exact (the common ``x + (round(x) - x).detach()`` trick can be one ulp off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from effrepro.errors import UsageError

TIE_MODES = ("half_up", "half_even", "floor")
MIN_BITS, MAX_BITS = 2, 8
SCALE_EPS = 1e-8  # scales are clamped above zero: a learned step that turns negative would invert the grid


def check_tie_mode(mode: str) -> str:
    if mode not in TIE_MODES:
        raise UsageError(f"unknown tie mode {mode!r}; use one of: {', '.join(TIE_MODES)}")
    return mode


def check_bits(bits: int, allowed: Sequence[int] | None = None, what: str = "bit-width") -> int:
    """A bit-width in 2..8 (and, when ``allowed`` is given, one of those) or a clear :class:`UsageError`."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UsageError(f"unsupported {what} {bits!r}; use an integer from {MIN_BITS} to {MAX_BITS}")
    if allowed is not None and bits not in allowed:
        raise UsageError(f"{what} {bits} is not one this model was trained for; available: "
                         f"{', '.join(str(b) for b in sorted(allowed, reverse=True))}")
    return bits


def signed_range(bits: int) -> tuple[int, int]:
    """Integer range of a signed ``bits``-bit code: ``[-2^(b-1), 2^(b-1) - 1]`` (full range, no level dropped)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, (1 << bits) - 1


# ---- straight-through autograd functions -------------------------------------------------------------
class _RoundHalfEven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


class _Clip(torch.autograd.Function):
    """``clamp`` whose gradient passes where ``lo <= x <= hi`` (LSQ's inclusive range), whatever the torch
    version does at the boundary."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:  # noqa: D102
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def clip(x: Tensor, lo: float, hi: float) -> Tensor:
    return _Clip.apply(x, lo, hi)


class _GradScale(torch.autograd.Function):
    """Identity forward (exact copy), gradient multiplied by ``factor`` (LSQ's ``g``)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # noqa: D102
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad * ctx.factor, None


def round_ste(x: Tensor, tie_mode: str = "half_even") -> Tensor:
    """Round with an identity gradient. ``half_up`` is ``floor(x + 0.5)``, what ``(q + 2^(D-1)) >> D`` computes."""
    if tie_mode == "half_even":
        return _RoundHalfEven.apply(x)
    if tie_mode == "half_up":
        return _Floor.apply(x + 0.5)
    if tie_mode == "floor":
        return _Floor.apply(x)
    raise UsageError(f"unknown tie mode {tie_mode!r}; use one of: {', '.join(TIE_MODES)}")


def grad_scale(x: Tensor, factor: float | None) -> Tensor:
    return x if factor is None or factor == 1.0 else _GradScale.apply(x, float(factor))


def lsq_grad_factor(numel: int, qmax: int) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N * Q_p)`` (the paper does not say whether it is used)."""
    return 1.0 / math.sqrt(max(numel, 1) * max(qmax, 1))


def positive(scale: Tensor) -> Tensor:
    """The scale the quantiser uses: clamped to at least ``SCALE_EPS`` (zero gradient below it)."""
    return scale.clamp_min(SCALE_EPS)


# ---- weights: first rounding, second rounding, de-quantisation ---------------------------------------
def first_rounding(weight: Tensor, scale: Tensor, high_bits: int) -> Tensor:
    """``clip(round(W / s_h), -2^(h-1), 2^(h-1)-1)`` as float with an STE (the stored h-bit codes)."""
    lo, hi = signed_range(high_bits)
    return round_ste(clip(weight / scale, lo, hi), "half_even")


def second_rounding(codes_h: Tensor, delta: int, bits: int, tie_mode: str) -> Tensor:
    """``clip(round_tie(q_h / 2^D), -2^(l-1), 2^(l-1)-1)`` in float with an STE; identity for ``D = 0``.

    The clip after the second rounding is needed: 127 / 4 = 31.75 rounds to 32, outside the 6-bit range.
    """
    if delta == 0:
        return codes_h
    lo, hi = signed_range(bits)
    return round_ste(clip(codes_h / float(1 << delta), lo, hi), tie_mode)


def fake_quant_weight(weight: Tensor, scale: Tensor, high_bits: int, bits: int, tie_mode: str,
                      grad_factor: float | None = None) -> Tensor:
    """Double-rounding fake quantisation ``W_hat_l = W~_l * s_h * 2^D`` of a weight (training path).

    ``scale`` is the shared learnable ``s_h`` (scalar). Each rounding clips first, then rounds (same values
    as round-then-clip for integer bounds), so "clipped" means the unrounded value lies outside the range, as
    in LSQ. Gradients: STE through both roundings, zero to ``W`` where a clip is active;
    ``d W_hat / d s_h = 2^D (W~_l - W / s_l)`` inside, ``2^D W~_l`` when clipped.
    """
    delta = high_bits - bits
    s = grad_scale(positive(scale), grad_factor)
    codes = second_rounding(first_rounding(weight, s, high_bits), delta, bits, tie_mode)
    return codes * (s * float(1 << delta))


def fake_quant_act(x: Tensor, scale: Tensor, zero: Tensor | None, bits: int,
                   grad_factor: float | None = None) -> Tensor:
    """Unsigned activation fake quantisation ``clip(round((X - z) / s), 0, 2^b - 1) * s + z`` (LSQ+ form).

    ``zero`` is ``None`` for inputs known to be non-negative (after ReLU: ``z = 0``, as in the paper).
    """
    lo, hi = unsigned_range(bits)
    s = grad_scale(positive(scale), grad_factor)
    if zero is None:
        return round_ste(clip(x / s, lo, hi)) * s
    z = grad_scale(zero, grad_factor)
    return round_ste(clip((x - z) / s, lo, hi)) * s + z


# ---- deployment: integer codes ---------------------------------------------------------------------
@torch.no_grad()
def weight_codes(weight: Tensor, scale: Tensor, high_bits: int) -> Tensor:
    """The stored h-bit integer codes of a weight (int8 container): identical values to the training path."""
    return first_rounding(weight.detach(), positive(scale.detach()), high_bits).to(torch.int8)


def shift_codes(codes: Tensor, delta: int, bits: int, tie_mode: str = "half_up") -> Tensor:
    """Double rounding on integers: h-bit codes -> l-bit codes by a rounding right shift by ``delta`` bits.

    ``half_up``: ``(q + 2^(D-1)) >> D``; ``floor``: ``q >> D`` (a plain arithmetic shift); ``half_even``: the
    shift plus a round-to-even correction on exact ties. The result is clipped to the signed l-bit range.
    Integer ops only; returns int8.
    """
    check_tie_mode(tie_mode)
    if codes.is_floating_point():
        raise TypeError("shift_codes works on integer codes; got a floating-point tensor")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    q = codes.to(torch.int32)
    if delta == 0:
        out = q
    elif tie_mode == "floor":
        out = q >> delta
    elif tie_mode == "half_up":
        out = (q + (1 << (delta - 1))) >> delta
    else:
        down = q >> delta
        remainder = q - (down << delta)  # in [0, 2^D)
        half = 1 << (delta - 1)
        round_up = (remainder > half) | ((remainder == half) & ((down & 1) == 1))
        out = down + round_up.to(torch.int32)
    lo, hi = signed_range(bits)
    return out.clamp(lo, hi).to(torch.int8)


def dequantize_codes(codes: Tensor, scale: Tensor, delta: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q_l * (s_h * 2^D)``: the same float product the training path computes."""
    s = positive(scale.to(dtype))
    return codes.to(dtype) * (s * float(1 << delta))


# ---- scale initialisation ---------------------------------------------------------------------------
def lsq_init(values: Tensor, qmax: int) -> float:
    """LSQ's initial step ``2 * mean|x| / sqrt(Q_p)``."""
    return float(2.0 * values.detach().abs().mean() / math.sqrt(qmax))


@torch.no_grad()
def mse_weight_scale(weight: Tensor, high_bits: int, bits: Sequence[int], tie_mode: str,
                     grid: int = 100) -> float:
    """The shared ``s_h`` that minimises the summed *relative* MSE of the double-rounded weight over ``bits``.

    Reconstruction (the paper does not state its initialisation): LSQ's ``2 mean|W| / sqrt(Q_p)`` at 8 bits
    gives a 2-bit step of about ``11 mean|W|``, which rounds almost every weight to zero at 2 bits. We search
    ``s_h = r * max|W| / 2^(h-1)`` for ``r`` on a grid and minimise ``sum_b MSE_b(s) / min_s' MSE_b(s')`` so
    that every bit-width lands close to its own best error (EQ-Net also initialises by an MSE search).
    """
    w = weight.detach().float().flatten()
    top = float(w.abs().max()) / (1 << (high_bits - 1))
    if top == 0.0:
        return 1.0
    ratios = torch.linspace(1.0 / grid, 1.0, grid)
    errors = torch.empty(len(bits), grid)
    for j, r in enumerate(ratios.tolist()):
        s = torch.tensor(r * top, device=w.device)
        for i, b in enumerate(bits):
            errors[i, j] = (fake_quant_weight(w, s, high_bits, b, tie_mode) - w).pow(2).mean()
    relative = errors / errors.min(dim=1, keepdim=True).values.clamp_min(1e-30)
    return float(ratios[int(relative.sum(0).argmin())] * top)


@torch.no_grad()
def mse_act_scale(x: Tensor, zero: float, bits: int, grid: int = 80, max_samples: int = 1 << 16) -> float:
    """Activation step minimising the MSE of the unsigned ``bits``-bit quantisation of ``x`` (grid search)."""
    flat = x.detach().float().flatten()
    if flat.numel() > max_samples:
        flat = flat[torch.linspace(0, flat.numel() - 1, max_samples, device=flat.device).long()]
    span = float(flat.max()) - zero
    if span <= 0.0:
        return 1.0
    top = span / ((1 << bits) - 1)
    z = torch.tensor(zero, device=flat.device)
    best, best_err = top, math.inf
    for r in torch.linspace(1.0 / grid, 1.0, grid).tolist():
        s = torch.tensor(r * top, device=flat.device)
        err = float((fake_quant_act(flat, s, z, bits) - flat).pow(2).mean())
        if err < best_err:
            best, best_err = r * top, err
    return best
