"""Learned-scale fake quantisers (LSQ-style, STE), the double-rounding bit switch, switchable BN, int8 export.

Users: double_rounding (the whole package: its method, :mod:`double_rounding.double_rounding`, adds ALRS and HASB
on top) and :mod:`effrepro.kernels` (the low-bit integer kernels read the same codes and apply the same integer
shift, :func:`shift_codes` / :func:`dequantize_codes`, so the two must stay one definition). The design keeps the
quantisers here, apart from the paper, for any project that trains a quantised model.

* :mod:`~effrepro.quant.functional`: rounding with STEs, the tie rules, weight / activation fake quantisation,
  the integer shift on codes, scale initialisation.
* :mod:`~effrepro.quant.modules`: :class:`QuantConv2d`, :class:`QuantLinear`, :class:`ActQuantizer`,
  :class:`SwitchableNorm`.
* :mod:`~effrepro.quant.convert`: :func:`quantize_model`, :func:`set_bits`, :func:`calibrate`, parameter split.
* :mod:`~effrepro.quant.export`: int8 artefact export / import and the de-quantised evaluation path.
"""

from effrepro.quant.convert import (
    BN_MODES,
    QuantGraph,
    bit_config,
    calibrate,
    calibrated_bits,
    clamp_scales_,
    graph_of,
    quant_layers,
    quantize_model,
    scale_groups,
    set_bits,
    split_parameters,
    to_transitional,
)
from effrepro.quant.export import (
    FORMAT,
    apply_codes,
    export_int8,
    layer_codes,
    load_dequantized,
    load_int8,
    payload_bytes,
    save_int8,
)
from effrepro.quant.functional import (
    MAX_BITS,
    MIN_BITS,
    TIE_MODES,
    check_bits,
    check_tie_mode,
    dequantize_codes,
    fake_quant_act,
    fake_quant_weight,
    round_ste,
    shift_codes,
    signed_range,
    unsigned_range,
    weight_codes,
)
from effrepro.quant.modules import WEIGHT_SCALE_MODES, ActQuantizer, QuantConv2d, QuantLinear, SwitchableNorm

__all__ = [
    "BN_MODES", "FORMAT", "MAX_BITS", "MIN_BITS", "TIE_MODES", "WEIGHT_SCALE_MODES", "ActQuantizer", "QuantConv2d",
    "QuantGraph", "QuantLinear", "SwitchableNorm", "apply_codes", "bit_config", "calibrate", "calibrated_bits",
    "check_bits", "check_tie_mode", "clamp_scales_", "dequantize_codes", "export_int8", "fake_quant_act",
    "fake_quant_weight", "graph_of", "layer_codes", "load_dequantized", "load_int8", "payload_bytes", "quant_layers",
    "quantize_model", "round_ste", "save_int8", "scale_groups", "set_bits", "shift_codes", "signed_range",
    "split_parameters", "to_transitional", "unsigned_range", "weight_codes",
]
