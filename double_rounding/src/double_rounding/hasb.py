"""Moved to :mod:`double_rounding.double_rounding` (re-exported while train.py and cli.py still import it here)."""

from double_rounding.double_rounding import SAMPLERS, BitSampler, roulette_probs, sensitive_layers, sigma_at

__all__ = ["SAMPLERS", "BitSampler", "roulette_probs", "sensitive_layers", "sigma_at"]
