"""Double Rounding: one-shot multi/mixed-precision QAT with INT8 storage, ALRS, HASB.

The method is :mod:`double_rounding.double_rounding` (ALRS, HASB) on top of :mod:`effrepro.quant` (the double
rounding itself and the bit switch); both are exported here, imported on first use so that
``double_rounding --help`` does not load torch.
"""

from effrepro.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "double_rounding.double_rounding": ("ALRS", "ALRS_MODES", "SAMPLERS", "BitSampler", "eta", "gradient_term",
                                        "roulette_probs", "sensitive_layers", "sigma_at"),
    "effrepro.quant": ("export_int8", "load_dequantized", "load_int8", "quantize_model", "set_bits", "shift_codes"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
