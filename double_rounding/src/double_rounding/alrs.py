"""Moved to :mod:`double_rounding.double_rounding` (re-exported while train.py and cli.py still import it here)."""

from double_rounding.double_rounding import ALRS, ALRS_MODES, eta, gradient_term

__all__ = ["ALRS", "ALRS_MODES", "eta", "gradient_term"]
