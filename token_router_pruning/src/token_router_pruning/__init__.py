"""FTP: fine-grained token-wise pruning of LLM blocks via a learnable token router.

The method is :mod:`token_router_pruning.ftp` (routers and token skipping); its public names are exported here,
imported on first use so that ``token_router_pruning --help`` does not load torch.
"""

from effrepro.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "token_router_pruning.ftp": ("BlockContext", "DynamicRouter", "FixedRouter", "RandomRouter", "Router", "Selection",
                                 "SkipPlan", "StaticRouter", "TokenSkipper", "attach", "count_router_params",
                                 "decoder_layers", "num_kept"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
