"""Jakiro: speculative decoding with an MoE draft head and contrastive parallel drafting.

The method is :mod:`jakiro.jakiro` (head, MoE blocks, loss, hybrid drafting, Jakiro*) on the shared engine
:mod:`effrepro.specdec`; its public names are exported here, imported on first use so that ``jakiro --help`` does
not load torch.
"""

from effrepro.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "jakiro.jakiro": ("ALIGNMENTS", "JAKIRO_STAR_TREE", "LAST_LEVELS", "JakiroConfig", "JakiroDraft", "JakiroMoE",
                      "JakiroProposer", "JakiroStarMoE", "StarProposer", "count_parameters", "jakiro_loss",
                      "load_official_state_dict", "make_proposer", "star_sample_verify"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
