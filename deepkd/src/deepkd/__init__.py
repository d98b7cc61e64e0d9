"""DeepKD: decoupled GSNR-based momenta and dynamic top-k mask for knowledge distillation.

The method is :mod:`deepkd.deepkd`; its public names are exported here (imported on first use, so that
``deepkd --help`` does not load torch).
"""

from effrepro.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "deepkd.deepkd": ("DEEPKD_MODES", "TopKSchedule", "build_optimizer", "deepkd_optimizer", "dot_optimizer",
                      "group_losses", "static_topk", "topk_schedule"),
    "deepkd.distillers": ("CRLD", "DKD", "KD", "MLKD", "build_distiller"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
