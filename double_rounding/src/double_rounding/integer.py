"""Integer inference from the one int8 file: every quantised layer runs on integer codes, no float weight.

:func:`integer_model` rebuilds the model from the artefact (as the de-quantised evaluation path does) and
replaces each quantised conv / linear by an :class:`IntegerLayer` that holds only the stored h-bit int8 codes
(or, for a fixed deployment precision, the b-bit codes packed two or four per byte) and the scale ``s_h``.
At ``b`` bits a layer

1. derives the b-bit weight codes from the store by the integer double-rounding shift (once per switch),
2. quantises its input to unsigned b-bit activation codes with the model's own activation scale (the same
   float ops as the fake-quantiser, so the same codes),
3. multiplies codes by codes with int32 accumulation (``effrepro.kernels``: ``torch._int_mm`` on CPU and
   CUDA, a Triton kernel where cuBLAS's shape rules do not allow it), convolutions by im2col,
4. scales the exact integer result by ``s_a * s_h * 2^(h-b)``.

The integer product is exact; the fake-quant model sums the same products in float, so the outputs agree up
to float summation error (a relative 1e-6 per layer), which can flip the rounding of a later activation code
that sits on a rounding boundary. :func:`compare_outputs` measures the agreement. Layers whose input has a
zero point (signed inputs), grouped convolutions or non-zero padding modes fall back to the float
computation with a one-line notice. BatchNorm, the FP32 first conv and last linear stay in float.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.kernels import (
    conv_weight_matrix,
    int_conv2d,
    int_linear,
    lowbit_codes,
    notice,
    output_scale,
    pack_codes,
    quantize_activation,
    unpack_codes,
)
from effrepro.quant import QuantConv2d, QuantLinear, check_bits, graph_of, load_dequantized, set_bits
from effrepro.quant.convert import BitConfig
from effrepro.quant.functional import positive
from torch import Tensor, nn

from double_rounding.eval import model_from_artefact


class IntegerLayer(nn.Module):
    """A quantised conv / linear that computes on integer codes read from the int8 store.

    ``packed_bits`` (4 or 2): keep only the codes of that precision, packed; the layer then runs at that
    bit-width only (the deployment form with the smallest weights). Otherwise the h-bit store is kept and
    ``bits`` may be switched to any trained bit-width (``set_bits`` of :mod:`effrepro.quant` works unchanged).
    """

    def __init__(self, layer: QuantConv2d | QuantLinear, codes: Tensor, scale: Tensor,
                 packed_bits: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.is_conv = isinstance(layer, QuantConv2d)
        if self.is_conv:
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            self.groups, self.padding_mode = layer.groups, layer.padding_mode
        self.act_quant = layer.act_quant
        self.bit_list, self.high_bits, self.tie_mode = layer.bit_list, layer.high_bits, layer.tie_mode
        self.weight_shape = tuple(codes.shape)
        self.backend = backend
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.register_buffer("weight_scale", scale.detach().float().clone())
        self.packed_bits = packed_bits
        if packed_bits is not None:
            check_bits(packed_bits, self.bit_list, what="packed bit-width")
            low = self._matrix(lowbit_codes(codes, packed_bits, self.high_bits, self.tie_mode))
            self.register_buffer("store", pack_codes(low, packed_bits))
        else:  # the h-bit codes, kept in the kernels' matrix order (conv columns: kh, kw, C)
            self.register_buffer("store", self._matrix(codes.to(torch.int8)).clone())
        self._active: Tensor | None = None
        self._bits: int | None = None
        self.bits = packed_bits if packed_bits is not None else layer.bits

    # ---- bit switch ---------------------------------------------------------------------------------------
    @property
    def bits(self) -> int | None:
        return self._bits

    @bits.setter
    def bits(self, value: int | None) -> None:
        if value is None:
            raise UsageError("an integer layer has no full-precision mode; choose a bit-width")
        check_bits(value, self.bit_list)
        if self.packed_bits is not None and value != self.packed_bits:
            raise UsageError(f"this layer stores packed {self.packed_bits}-bit codes only; it cannot run at {value}")
        self._bits = value
        # the b-bit codes, derived once per switch (at h bits: the store itself; the packed form unpacks at
        # every call instead, so that only the packed bytes stay resident)
        if self.packed_bits is not None:
            self._active = None
        elif value == self.high_bits:
            self._active = self.store
        else:
            self._active = lowbit_codes(self.store, value, self.high_bits, self.tie_mode)

    def _matrix(self, codes: Tensor) -> Tensor:
        """Weight codes as the (Cout, K) matrix the kernels take (conv: :func:`conv_weight_matrix` order)."""
        return conv_weight_matrix(codes) if self.is_conv else codes

    def weight_codes(self) -> Tensor:
        """The active b-bit codes as the int8 (Cout, K) matrix (conv columns: kh, kw, C)."""
        if self._active is not None:
            return self._active
        k = 1
        for d in self.weight_shape[1:]:
            k *= d
        return unpack_codes(self.store, self.packed_bits, k)

    def _apply(self, fn: Any, recurse: bool = True) -> IntegerLayer:  # keep the cached codes on the module's device
        super()._apply(fn, recurse)
        if self._bits is not None:
            self.bits = self._bits
        return self

    # ---- forward ------------------------------------------------------------------------------------------
    def _float_fallback(self, x: Tensor, bits: int, reason: str) -> Tensor:
        notice(f"{reason}: this layer runs in float (de-quantised codes) instead of integer arithmetic")
        x = self.act_quant(x, bits)
        delta = self.high_bits - bits
        w = self.weight_codes().float() * output_scale(self.weight_scale, self.weight_shape[0], delta)[:, None]
        if not self.is_conv:
            return F.linear(x, w, self.bias)
        cout, cin, kh, kw = self.weight_shape
        w = w.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2)
        if self.padding_mode != "zeros":
            pad = (self.padding[1], self.padding[1], self.padding[0], self.padding[0])
            x = F.pad(x, pad, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        bits = self._bits
        if bool(self.act_quant.signed_input):
            return self._float_fallback(x, bits, "input with a zero point")
        if self.is_conv and (self.groups != 1 or self.padding_mode != "zeros"):
            return self._float_fallback(x, bits, "grouped or non-zero-padded convolution")
        s_a = positive(self.act_quant.scale[str(bits)].detach())
        codes = quantize_activation(x, s_a, bits)
        col = output_scale(self.weight_scale, self.weight_shape[0], self.high_bits - bits).to(x.device)
        w = self.weight_codes()
        if not self.is_conv:
            return int_linear(codes, bits, s_a, w, col, self.bias, self.backend)
        return int_conv2d(codes, bits, s_a, w, col, self.bias, self.stride, self.padding, self.dilation, self.backend,
                          kernel_size=self.weight_shape[2:])

    def extra_repr(self) -> str:
        kind = "conv" if self.is_conv else "linear"
        store = f"packed {self.packed_bits}-bit" if self.packed_bits else f"int{self.high_bits}"
        return f"{kind}, weight {self.weight_shape}, store {store}, active {self._bits}, backend {self.backend}"


def integer_model(artefact: Mapping[str, Any], config: BitConfig, packed: bool = False,
                  backend: str = "auto") -> nn.Module:
    """The model of ``artefact`` with every quantised layer an :class:`IntegerLayer`, switched to ``config``.

    ``packed``: keep only the codes of ``config`` (a uniform bit-width), packed when it is 4 or 2 bits.
    """
    if artefact["graph"].get("weight_scales", "shared") != "shared":
        raise UsageError("integer inference derives every bit-width's codes from the h-bit store by the shift; this "
                         "file has unshared per-bit weight scales (use the de-quantised path, double_rounding eval)")
    model = model_from_artefact(artefact)
    load_dequantized(model, artefact, config)
    graph = graph_of(model)
    if packed and not isinstance(config, int):
        raise UsageError("packed storage needs one uniform bit-width (e.g. 4)")
    for name in graph.layers:
        layer = model.get_submodule(name)
        integer = IntegerLayer(layer, artefact["codes"][name], artefact["weight_scales"][name],
                               packed_bits=config if packed else None, backend=backend)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, integer)
    set_bits(model, config)
    return model.eval()


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Weight bytes of an integer model. ``stored``: the quantised layers' stores and scales (what the switchable
    model keeps); ``resident``: plus the b-bit codes cached by the last switch when they are not the store
    itself (what sits in memory while it runs); ``float_layers``: the FP32 conv / linear weights (stem, head)."""
    stored = resident = floating = 0
    for module in model.modules():
        if isinstance(module, IntegerLayer):
            stored += _nbytes(module.store) + _nbytes(module.weight_scale)
            active = module._active
            resident += _nbytes(active) if active is not None and active is not module.store else 0
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            floating += _nbytes(module.weight)
    return {"stored": stored, "resident": stored + resident, "float_layers": floating}


def float_weight_bytes(model: nn.Module) -> dict[str, int]:
    """The same split for an FP32 (or de-quantised) model: the quantised layers' float weights (``stored`` =
    ``resident``) and the FP layers."""
    graph_layers = set(graph_of(model).layers) if hasattr(model, "quant_graph") else set()
    quant = floating = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            size = module.weight.numel() * module.weight.element_size()
            if name in graph_layers:
                quant += size
            else:
                floating += size
    return {"stored": quant, "resident": quant, "float_layers": floating}


@torch.no_grad()
def compare_outputs(reference: Tensor, output: Tensor) -> dict[str, float]:
    """Agreement of two logit batches: max |diff| relative to the reference's max |logit|, and top-1 agreement."""
    scale = float(reference.abs().max().clamp_min(1e-12))
    return {"max_abs_diff": float((output - reference).abs().max()),
            "max_rel_diff": float((output - reference).abs().max()) / scale,
            "top1_agreement": float((output.argmax(-1) == reference.argmax(-1)).float().mean())}


@torch.no_grad()
def layerwise_agreement(dequantized: nn.Module, integer: nn.Module, x: Tensor) -> dict[str, float]:
    """Per quantised layer, max |integer - float| / max |float| on the *same* input (the de-quantised model's
    input to that layer, captured by a hook): the kernel's error without code flips propagated from earlier
    layers. Both models must be switched to the same configuration."""
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    hooks = []
    for name in graph_of(dequantized).layers:
        def hook(_mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
            captured[name] = (inputs[0].detach().clone(), out.detach().clone())
        hooks.append(dequantized.get_submodule(name).register_forward_hook(hook))
    try:
        dequantized(x)
    finally:
        for h in hooks:
            h.remove()
    errors = {}
    for name, (inp, out) in captured.items():
        got = integer.get_submodule(name)(inp)
        errors[name] = float((got - out).abs().max()) / float(out.abs().max().clamp_min(1e-12))
    return errors
