"""Moved to :mod:`double_rounding.double_rounding` (re-exported while cli.py, being edited, still imports it here)."""

from double_rounding.double_rounding import SAMPLERS, BitSampler, roulette_probs, sensitive_layers, sigma_at

__all__ = ["SAMPLERS", "BitSampler", "roulette_probs", "sensitive_layers", "sigma_at"]
