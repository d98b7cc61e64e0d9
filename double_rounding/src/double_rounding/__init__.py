"""Double Rounding: one-shot multi/mixed-precision QAT with INT8 storage, ALRS, HASB."""

__version__ = "0.1.0"
