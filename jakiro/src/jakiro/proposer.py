"""Moved to :mod:`jakiro.jakiro` (kept while shared/tests/test_specdec_fullscale.py, being edited, names it)."""

from jakiro.jakiro import ALIGNMENTS, LAST_LEVELS, JakiroProposer, make_proposer

__all__ = ["ALIGNMENTS", "LAST_LEVELS", "JakiroProposer", "make_proposer"]
