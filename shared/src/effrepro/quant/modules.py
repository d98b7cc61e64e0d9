"""Quantised layers: a shared weight scale with double rounding, per-bit activation quantisers, switchable BN.

A quantised layer holds FP32 master weights, **one** learnable weight scale ``s_h`` (per tensor) and, per
bit-width ``b``, a learnable activation scale ``s_b`` (and zero point ``z_b`` when its input can be negative).
With ``weight_scales="unshared"`` (the paper's "Ours*" variant) every bit-width below ``h`` has its own learnable
weight step as well (``low_weight_scales[str(b)]``; ``weight_scale`` stays the step at ``h``), and the weight is
quantised directly from the FP32 master weight at each bit-width (plain LSQ per bit, no second rounding).
Its active bit-width is the attribute ``bits`` (``None``: full precision, nothing quantised). With
``dequantized = True`` the layer uses its ``weight`` as given: the de-quantised evaluation path
(:func:`effrepro.quant.export.load_dequantized`) writes the weights it derives from the int8 codes there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effrepro.errors import UsageError
from effrepro.quant.functional import (
    check_bits,
    check_tie_mode,
    fake_quant_act,
    fake_quant_weight,
    lsq_grad_factor,
    lsq_init,
    mse_act_scale,
    mse_weight_scale,
    signed_range,
    unsigned_range,
    weight_codes,
)

SCALE_INITS = ("mse", "lsq")
WEIGHT_SCALE_MODES = ("shared", "unshared")


def check_weight_scales(mode: str) -> str:
    if mode not in WEIGHT_SCALE_MODES:
        raise UsageError(f"unknown weight_scales mode {mode!r}; use one of: {', '.join(WEIGHT_SCALE_MODES)}")
    return mode


class ActQuantizer(nn.Module):
    """Per-bit unsigned activation quantiser: its own learnable ``s_b`` (and ``z_b``) for every bit-width.

    ``signed_input`` (a buffer) is set at calibration when the observed input has negative values (e.g. a
    MobileNetV2 block input after the residual add); only then is the learnable zero point used (LSQ+ form).
    After ReLU, ``z = 0`` as in the paper.
    """

    def __init__(self, bits: Sequence[int]) -> None:
        super().__init__()
        self.bit_list = tuple(bits)
        self.scale = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(1.0)) for b in bits})
        self.zero_point = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(0.0)) for b in bits})
        self.register_buffer("signed_input", torch.tensor(False))
        self.register_buffer("initialized", torch.zeros(len(self.bit_list), dtype=torch.bool))
        self.calibrating = False
        self.lsq_grad_scale = False
        self.scale_init = "mse"

    def _index(self, bits: int) -> int:
        return self.bit_list.index(bits)

    @torch.no_grad()
    def calibrate(self, x: Tensor, bits: int) -> None:
        """Initialise ``s_b`` (and ``z_b``) from a batch of inputs."""
        low = float(x.min())
        if low < 0.0:
            self.signed_input.fill_(True)
        zero = min(low, 0.0) if bool(self.signed_input) else 0.0
        self.zero_point[str(bits)].fill_(zero)
        qmax = unsigned_range(bits)[1]
        if self.scale_init == "mse":
            scale = mse_act_scale(x, zero, bits)
        else:
            scale = lsq_init(x - zero, qmax)
        self.scale[str(bits)].fill_(max(scale, 1e-6))
        self.initialized[self._index(bits)] = True

    def forward(self, x: Tensor, bits: int) -> Tensor:
        if self.calibrating and not bool(self.initialized[self._index(bits)]):
            self.calibrate(x, bits)
        key = str(bits)
        factor = lsq_grad_factor(x[0].numel(), unsigned_range(bits)[1]) if self.lsq_grad_scale else None
        zero = self.zero_point[key] if bool(self.signed_input) else None
        return fake_quant_act(x, self.scale[key], zero, bits, factor)


class QuantLayerMixin:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`: weight and input quantisation at ``bits``."""

    weight: nn.Parameter

    def _setup_quant(self, bits: Sequence[int], tie_mode: str, weight_scales: str = "shared") -> None:
        if not bits:
            raise UsageError("a quantised layer needs at least one bit-width")
        for b in bits:
            check_bits(b)
        self.bit_list = tuple(sorted(set(bits), reverse=True))
        self.high_bits = self.bit_list[0]
        self.tie_mode = check_tie_mode(tie_mode)
        self.weight_scale_mode = check_weight_scales(weight_scales)
        self.weight_scale = nn.Parameter(torch.tensor(1.0))
        if self.weight_scale_mode == "unshared":
            self.low_weight_scales = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(1.0))
                                                       for b in self.bit_list[1:]})
        self.act_quant = ActQuantizer(self.bit_list)
        self.bits: int | None = self.high_bits
        self.dequantized = False
        self.lsq_grad_scale = False

    def _check_active(self) -> int:
        bits = self.bits
        if bits not in self.bit_list:
            raise UsageError(f"bit-width {bits} is not one of this layer's {list(self.bit_list)}")
        return bits

    def _own_scale(self, bits: int) -> bool:
        """Whether ``bits`` has its own weight step (unshared mode, below ``h``) instead of ``s_h * 2^(h-b)``."""
        return self.weight_scale_mode == "unshared" and bits != self.high_bits

    def weight_scale_at(self, bits: int) -> nn.Parameter:
        """The learnable weight step used at ``bits``: the shared ``s_h`` or, unshared, that bit-width's own."""
        return self.low_weight_scales[str(bits)] if self._own_scale(bits) else self.weight_scale

    def weight_scale_params(self) -> list[nn.Parameter]:
        """Every learnable weight step of the layer (one shared, or one per bit-width)."""
        return [self.weight_scale, *(self.low_weight_scales.values() if self.weight_scale_mode == "unshared"
                                     else ())]

    def quantized_weight(self, bits: int | None = None) -> Tensor:
        """The fake-quant weight at ``bits`` (default: the active bit-width): double-rounded from the shared
        ``s_h``, or (unshared, below ``h``) rounded once from the FP32 weight with that bit-width's own step."""
        b = self.bits if bits is None else bits
        factor = lsq_grad_factor(self.weight.numel(), signed_range(b)[1]) if self.lsq_grad_scale else None
        if self._own_scale(b):
            return fake_quant_weight(self.weight, self.low_weight_scales[str(b)], b, b, self.tie_mode, factor)
        return fake_quant_weight(self.weight, self.weight_scale, self.high_bits, b, self.tie_mode, factor)

    def codes(self, bits: int | None = None) -> Tensor:
        """The stored h-bit integer codes (int8) of the current weight; with ``bits`` below ``h`` in unshared
        mode, that bit-width's own codes (its weight step, no second rounding)."""
        if bits is not None and self._own_scale(bits):
            return weight_codes(self.weight, self.low_weight_scales[str(bits)], bits)
        return weight_codes(self.weight, self.weight_scale, self.high_bits)

    @torch.no_grad()
    def init_weight_scale(self, method: str = "mse") -> None:
        """Shared: ``s_h`` for all bit-widths at once (double rounding). Unshared: each bit-width's step for that
        bit-width alone, by the same method."""
        if method not in SCALE_INITS:
            raise UsageError(f"unknown scale init {method!r}; use one of: {', '.join(SCALE_INITS)}")
        if self.weight_scale_mode == "shared":
            targets = [(self.weight_scale, self.high_bits, self.bit_list)]
        else:
            targets = [(self.weight_scale_at(b), b, (b,)) for b in self.bit_list]
        for param, high, bits in targets:
            if method == "mse":
                scale = mse_weight_scale(self.weight, high, bits, self.tie_mode)
            else:
                scale = lsq_init(self.weight, signed_range(high)[1])
            param.fill_(max(scale, 1e-8))

    def _quant_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.bits is None:
            return x, self.weight
        bits = self._check_active()
        self.act_quant.lsq_grad_scale = self.lsq_grad_scale
        x = self.act_quant(x, bits)
        weight = self.weight if self.dequantized else self.quantized_weight(bits)
        return x, weight

    def extra_quant_repr(self) -> str:
        unshared = ", weight_scales=unshared" if self.weight_scale_mode == "unshared" else ""
        return f"bits={self.bit_list}, active={self.bits}, tie={self.tie_mode}{unshared}"


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with double-rounded weights (shared ``s_h``) and per-bit input activation quantisers."""

    def __init__(self, *args, bits: Sequence[int] = (8, 6, 4, 2), tie_mode: str = "half_up",
                 weight_scales: str = "shared", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_quant(bits, tie_mode, weight_scales)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: Sequence[int], tie_mode: str, weight_scales: str = "shared",
                   ) -> QuantConv2d:
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, bits=bits,
                    tie_mode=tie_mode, weight_scales=weight_scales, device=conv.weight.device,
                    dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        x, weight = self._quant_inputs(x)
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.extra_quant_repr()}"


class QuantLinear(QuantLayerMixin, nn.Linear):
    """``nn.Linear`` with double-rounded weights and per-bit input activation quantisers."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 bits: Sequence[int] = (8, 6, 4, 2), tie_mode: str = "half_up", weight_scales: str = "shared",
                 **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._setup_quant(bits, tie_mode, weight_scales)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: Sequence[int], tie_mode: str, weight_scales: str = "shared",
                   ) -> QuantLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                    tie_mode=tie_mode, weight_scales=weight_scales, device=linear.weight.device,
                    dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        x, weight = self._quant_inputs(x)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.extra_quant_repr()}"


class SwitchableNorm(nn.Module):
    """One copy of a BatchNorm per key (per bit-width ``"8"``, or per bit pair ``"8_4"`` for transitional BN).

    ``active`` selects the copy; running statistics and affine parameters of the others are untouched.
    """

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, keys: Sequence[str]) -> None:
        super().__init__()
        if not keys:
            raise ValueError("SwitchableNorm needs at least one key")
        self.norms = nn.ModuleDict({key: copy.deepcopy(norm) for key in keys})
        self.active = keys[0]

    @property
    def keys(self) -> list[str]:
        return list(self.norms.keys())

    def add_keys(self, keys: Sequence[str], source: dict[str, str] | None = None) -> None:
        """Add copies for new keys, each initialised from ``source[key]`` (default: the active copy)."""
        for key in keys:
            if key not in self.norms:
                origin = (source or {}).get(key, self.active)
                self.norms[key] = copy.deepcopy(self.norms[origin])

    def forward(self, x: Tensor) -> Tensor:
        if self.active not in self.norms:
            raise UsageError(f"no BatchNorm copy for key {self.active!r}; available: {', '.join(self.keys)}")
        return self.norms[self.active](x)

    def extra_repr(self) -> str:
        return f"active={self.active}"


QUANT_LAYER_TYPES = (QuantConv2d, QuantLinear)
