"""INT8 export / import of a whole switchable-precision model, and the de-quantised evaluation path.

The file holds, per quantised layer, the h-bit integer codes ``W~_h`` (int8) and the shared scale ``s_h``;
everything else the forward pass needs is in ``state`` (FP32 first conv and last linear, per-bit activation
scales and zero points, every per-bit / transitional BN copy). No FP32 master weight of a quantised layer is
stored. Any bit-width ``l`` (or per-layer mixed configuration) is derived from the codes at load time by the
integer shift of :func:`effrepro.quant.functional.shift_codes` and de-quantised as ``q_l * s_h * 2^(h-l)``.

A model with unshared weight steps (``weight_scales="unshared"``, the paper's "Ours*") cannot derive its lower
bit-widths from the h-bit codes: its file also holds, per quantised layer and bit-width ``l < h``, the l-bit codes
(int8 container, ``low_codes``) and that bit-width's step (``low_weight_scales``), i.e. one code set per
bit-width, as many bytes for {8,6,4,2} as the FP32 weights (the paper stores FP32 for this variant).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effrepro.errors import UsageError
from effrepro.quant.convert import BitConfig, bit_config, calibrated_bits, graph_of, quant_layers, set_bits
from effrepro.quant.functional import check_bits, dequantize_codes, shift_codes
from effrepro.train import load_checkpoint, save_checkpoint

FORMAT = "effrepro-int8/1"


def _quant_keys(names: Sequence[str], keys: Sequence[str] = ()) -> set[str]:
    """State keys that the artefact stores as codes and steps instead of in ``state`` (of ``keys``, the unshared
    per-bit steps ``<layer>.low_weight_scales.<b>``)."""
    low = {k for k in keys for n in names if k.startswith(f"{n}.low_weight_scales.")}
    return {f"{n}.weight" for n in names} | {f"{n}.weight_scale" for n in names} | low


def _unshared(graph: Mapping[str, Any]) -> bool:
    return graph.get("weight_scales", "shared") == "unshared"


@torch.no_grad()
def export_int8(model: nn.Module, meta: Mapping[str, Any] | None = None,
                available_bits: Sequence[int] | None = None) -> dict[str, Any]:
    """The int8 artefact of ``model`` as a dict (see the module docstring). ``meta`` is free-form (e.g. the
    architecture to rebuild); ``available_bits`` (default: the calibrated ones) are the bit-widths the file
    may be evaluated at."""
    graph = graph_of(model)
    layers = quant_layers(model)
    codes = {name: layer.codes().cpu() for name, layer in layers}
    scales = {name: layer.weight_scale.detach().float().cpu().clone() for name, layer in layers}
    full_state = model.state_dict()
    skip = _quant_keys(graph.layers, list(full_state))
    state = {k: v.detach().cpu().clone() for k, v in full_state.items() if k not in skip}
    bits = list(available_bits) if available_bits is not None else calibrated_bits(model)
    artefact = {"format": FORMAT, "meta": dict(meta or {}), "graph": graph.as_dict(), "available_bits": bits,
                "codes": codes, "weight_scales": scales, "state": state}
    if graph.weight_scales == "unshared":
        low = graph.bits[1:]
        artefact["low_codes"] = {name: {str(b): layer.codes(b).cpu() for b in low} for name, layer in layers}
        artefact["low_weight_scales"] = {name: {str(b): layer.weight_scale_at(b).detach().float().cpu().clone()
                                                for b in low} for name, layer in layers}
    return artefact


def save_int8(path: str | os.PathLike, artefact: Mapping[str, Any]) -> Path:
    """Write the artefact atomically (torch zip format: int8 codes take one byte each)."""
    return save_checkpoint(path, dict(artefact))


def load_int8(path: str | os.PathLike) -> dict[str, Any]:
    """Read an int8 artefact; a foreign or damaged file is a clear :class:`UsageError`."""
    artefact = load_checkpoint(path, required=("format", "graph", "codes", "weight_scales", "state"), expect="int8")
    if artefact["format"] != FORMAT:
        raise UsageError(f"{path} is a {artefact['format']!r} file, not {FORMAT!r}; export it again")
    low = artefact.get("low_codes", {})
    if _unshared(artefact["graph"]) and not low:
        raise UsageError(f"{path}: a model with unshared weight scales but no per-bit codes (low_codes); export it "
                         "again")
    named = [(name, codes) for name, codes in artefact["codes"].items()]
    named += [(f"{name} at {b} bits", codes) for name, per_bit in low.items() for b, codes in per_bit.items()]
    for name, codes in named:
        if codes.dtype != torch.int8:
            raise UsageError(f"{path}: codes of {name} are {codes.dtype}, expected int8")
    return artefact


def payload_bytes(artefact: Mapping[str, Any]) -> dict[str, int]:
    """Tensor bytes in the artefact: int8 codes, FP32 scales, and the FP32 rest (BN copies, FP layers)."""
    def size(tensors: Mapping[str, Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors.values())

    parts = {"codes": size(artefact["codes"]), "weight_scales": size(artefact["weight_scales"]),
             "state": size(artefact["state"])}
    for key in ("low_codes", "low_weight_scales"):  # unshared weight scales: one code set per bit-width
        if key in artefact:
            parts[key] = sum(size(per_bit) for per_bit in artefact[key].values())
    parts["total"] = sum(parts.values())
    return parts


def _check_matches(model: nn.Module, artefact: Mapping[str, Any]) -> None:
    graph = graph_of(model)
    saved = artefact["graph"]
    if list(saved["layers"]) != list(graph.layers) or list(saved["bits"]) != list(graph.bits):
        raise UsageError("the int8 file was exported from a different architecture or bit list "
                         f"({len(saved['layers'])} quantised layers, bits {saved['bits']}; this model has "
                         f"{len(graph.layers)}, bits {list(graph.bits)}); build the model it was exported from")
    saved_scales = saved.get("weight_scales", "shared")
    if saved["bn_mode"] != graph.bn_mode or saved["tie_mode"] != graph.tie_mode or \
            saved_scales != graph.weight_scales:
        raise UsageError(f"the int8 file uses bn_mode={saved['bn_mode']}, tie_mode={saved['tie_mode']}, "
                         f"weight_scales={saved_scales}; this model uses {graph.bn_mode}, {graph.tie_mode}, "
                         f"{graph.weight_scales}")
    for name, layer in quant_layers(model):
        if tuple(artefact["codes"][name].shape) != tuple(layer.weight.shape):
            raise UsageError(f"the int8 file does not match the model at {name}: codes "
                             f"{tuple(artefact['codes'][name].shape)} vs weight {tuple(layer.weight.shape)}")


def _check_available(artefact: Mapping[str, Any], bits: Mapping[str, int]) -> None:
    available = artefact.get("available_bits") or artefact["graph"]["bits"]
    for b in set(bits.values()):
        check_bits(b, available, what="bit-width (of the int8 file)")


def layer_codes(artefact: Mapping[str, Any], name: str, bits: int) -> tuple[Tensor, Tensor, int]:
    """``(codes, scale, delta)`` of layer ``name`` at ``bits`` from the file: the h-bit codes shifted by
    ``delta = h - bits`` with the shared ``s_h`` or, for unshared weight scales below ``h``, the stored
    ``bits``-bit codes with their own step (``delta = 0``). De-quantise with :func:`dequantize_codes`."""
    graph = artefact["graph"]
    high = graph["bits"][0]
    if _unshared(graph) and bits != high:
        return artefact["low_codes"][name][str(bits)], artefact["low_weight_scales"][name][str(bits)], 0
    delta = high - bits
    return (shift_codes(artefact["codes"][name], delta, bits, graph["tie_mode"]), artefact["weight_scales"][name],
            delta)


@torch.no_grad()
def apply_codes(model: nn.Module, artefact: Mapping[str, Any], config: BitConfig) -> dict[str, int]:
    """Switch a de-quantised model: derive every layer's weight at its bit-width from the int8 codes by the
    integer shift, de-quantise it into ``layer.weight`` and select the matching activation scales and BNs."""
    bits = bit_config(model, config)
    _check_available(artefact, bits)
    for name, layer in quant_layers(model):
        codes, scale, delta = layer_codes(artefact, name, bits[name])
        layer.weight.copy_(dequantize_codes(codes, scale, delta).to(layer.weight.device, layer.weight.dtype))
        layer.weight_scale.copy_(artefact["weight_scales"][name])
        for b, low_scale in artefact.get("low_weight_scales", {}).get(name, {}).items():
            layer.low_weight_scales[b].copy_(low_scale)
        layer.dequantized = True
    return set_bits(model, bits)


def load_dequantized(model: nn.Module, artefact: Mapping[str, Any], config: BitConfig) -> nn.Module:
    """Fill a freshly built quantised model of the same architecture from the artefact alone and switch it to
    ``config``. Every tensor the forward pass reads comes from the file: FP32 master weights of the quantised
    layers are overwritten with the de-quantised codes."""
    _check_matches(model, artefact)
    graph = graph_of(model)
    keys = list(model.state_dict())
    own = {k for k in keys if k not in _quant_keys(graph.layers, keys)}
    state = artefact["state"]
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise UsageError(f"the int8 file does not match the model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}; build the model it was exported from")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UsageError(f"the int8 file does not match the model: {str(exc).splitlines()[-1].strip()}") from None
    apply_codes(model, artefact, config)
    return model
