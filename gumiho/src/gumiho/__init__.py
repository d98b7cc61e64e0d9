"""Gumiho: speculative decoding with serial transformer + parallel MLP draft heads.

The method is :mod:`gumiho.gumiho` (head, loss, Full Tree Attention, proposer) on the shared engine
:mod:`effrepro.specdec`; its public names are exported here, imported on first use so that ``gumiho --help`` does
not load torch.
"""

from effrepro.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "gumiho.gumiho": ("FTA_MODES", "GumihoConfig", "GumihoDraft", "GumihoProposer", "LossWeights", "ProposerConfig",
                      "count_parameters", "fta_pad", "gumiho_loss", "head_from_checkpoint", "load_official_state_dict",
                      "make_proposer"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
