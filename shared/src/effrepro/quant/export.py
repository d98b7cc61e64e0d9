"""INT8 export / import of a whole switchable-precision model, and the de-quantised evaluation path.

The file holds, per quantised layer, the h-bit integer codes ``W~_h`` (int8) and the shared scale ``s_h``;
everything else the forward pass needs is in ``state`` (FP32 first conv and last linear, per-bit activation
scales and zero points, every per-bit / transitional BN copy). No FP32 master weight of a quantised layer is
stored. Any bit-width ``l`` (or per-layer mixed configuration) is derived from the codes at load time by the
integer shift of :func:`effrepro.quant.functional.shift_codes` and de-quantised as ``q_l * s_h * 2^(h-l)``.
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


def _quant_keys(names: Sequence[str]) -> set[str]:
    return {f"{n}.weight" for n in names} | {f"{n}.weight_scale" for n in names}


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
    skip = _quant_keys(graph.layers)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    bits = list(available_bits) if available_bits is not None else calibrated_bits(model)
    return {"format": FORMAT, "meta": dict(meta or {}), "graph": graph.as_dict(), "available_bits": bits,
            "codes": codes, "weight_scales": scales, "state": state}


def save_int8(path: str | os.PathLike, artefact: Mapping[str, Any]) -> Path:
    """Write the artefact atomically (torch zip format: int8 codes take one byte each)."""
    return save_checkpoint(path, dict(artefact))


def load_int8(path: str | os.PathLike) -> dict[str, Any]:
    """Read an int8 artefact; a foreign or damaged file is a clear :class:`UsageError`."""
    artefact = load_checkpoint(path, required=("format", "graph", "codes", "weight_scales", "state"), expect="int8")
    if artefact["format"] != FORMAT:
        raise UsageError(f"{path} is a {artefact['format']!r} file, not {FORMAT!r}; export it again")
    for name, codes in artefact["codes"].items():
        if codes.dtype != torch.int8:
            raise UsageError(f"{path}: codes of {name} are {codes.dtype}, expected int8")
    return artefact


def payload_bytes(artefact: Mapping[str, Any]) -> dict[str, int]:
    """Tensor bytes in the artefact: int8 codes, FP32 scales, and the FP32 rest (BN copies, FP layers)."""
    def size(tensors: Mapping[str, Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors.values())

    parts = {"codes": size(artefact["codes"]), "weight_scales": size(artefact["weight_scales"]),
             "state": size(artefact["state"])}
    parts["total"] = sum(parts.values())
    return parts


def _check_matches(model: nn.Module, artefact: Mapping[str, Any]) -> None:
    graph = graph_of(model)
    saved = artefact["graph"]
    if list(saved["layers"]) != list(graph.layers) or list(saved["bits"]) != list(graph.bits):
        raise UsageError("the int8 file was exported from a different architecture or bit list "
                         f"({len(saved['layers'])} quantised layers, bits {saved['bits']}; this model has "
                         f"{len(graph.layers)}, bits {list(graph.bits)}); build the model it was exported from")
    if saved["bn_mode"] != graph.bn_mode or saved["tie_mode"] != graph.tie_mode:
        raise UsageError(f"the int8 file uses bn_mode={saved['bn_mode']}, tie_mode={saved['tie_mode']}; this "
                         f"model uses {graph.bn_mode}, {graph.tie_mode}")
    for name, layer in quant_layers(model):
        if tuple(artefact["codes"][name].shape) != tuple(layer.weight.shape):
            raise UsageError(f"the int8 file does not match the model at {name}: codes "
                             f"{tuple(artefact['codes'][name].shape)} vs weight {tuple(layer.weight.shape)}")


def _check_available(artefact: Mapping[str, Any], bits: Mapping[str, int]) -> None:
    available = artefact.get("available_bits") or artefact["graph"]["bits"]
    for b in set(bits.values()):
        check_bits(b, available, what="bit-width (of the int8 file)")


@torch.no_grad()
def apply_codes(model: nn.Module, artefact: Mapping[str, Any], config: BitConfig) -> dict[str, int]:
    """Switch a de-quantised model: derive every layer's weight at its bit-width from the int8 codes by the
    integer shift, de-quantise it into ``layer.weight`` and select the matching activation scales and BNs."""
    graph = graph_of(model)
    bits = bit_config(model, config)
    _check_available(artefact, bits)
    high = graph.bits[0]
    for name, layer in quant_layers(model):
        delta = high - bits[name]
        codes = shift_codes(artefact["codes"][name], delta, bits[name], graph.tie_mode)
        scale = artefact["weight_scales"][name]
        layer.weight.copy_(dequantize_codes(codes, scale, delta).to(layer.weight.device, layer.weight.dtype))
        layer.weight_scale.copy_(scale)
        layer.dequantized = True
    return set_bits(model, bits)


def load_dequantized(model: nn.Module, artefact: Mapping[str, Any], config: BitConfig) -> nn.Module:
    """Fill a freshly built quantised model of the same architecture from the artefact alone and switch it to
    ``config``. Every tensor the forward pass reads comes from the file: FP32 master weights of the quantised
    layers are overwritten with the de-quantised codes."""
    _check_matches(model, artefact)
    graph = graph_of(model)
    own = {k for k in model.state_dict() if k not in _quant_keys(graph.layers)}
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
