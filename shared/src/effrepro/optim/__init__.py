"""Per-component gradients, GSNR measurement and the multi-buffer momentum optimizer (DOT / DeepKD).

* :func:`component_grads`: one gradient per named loss for the same forward pass (several reverse passes,
  or one batched vector-Jacobian product through the network), :func:`all_reduce_grads` for DDP.
* :class:`GSNRAccumulator`, :func:`measure_gsnr`: gradient signal-to-noise ratio per component.
* :class:`MultiMomentumSGD`: one momentum buffer per component; :func:`dot_optimizer` (two buffers) and
  :func:`deepkd_optimizer` (three buffers, the released ``"code"`` assignment or the ``"paper"`` one).
"""

from effrepro.optim.components import GRAD_METHODS, all_reduce_grads, component_grads, sum_grads
from effrepro.optim.gsnr import TOTAL, GSNRAccumulator, measure_gsnr
from effrepro.optim.multi_momentum import DEEPKD_MODES, MultiMomentumSGD, deepkd_optimizer, dot_optimizer

__all__ = [
    "DEEPKD_MODES", "GRAD_METHODS", "TOTAL", "GSNRAccumulator", "MultiMomentumSGD", "all_reduce_grads",
    "component_grads", "deepkd_optimizer", "dot_optimizer", "measure_gsnr", "sum_grads",
]
