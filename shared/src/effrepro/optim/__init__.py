"""Per-component gradients, GSNR measurement and the multi-buffer momentum optimizer.

Users: deepkd (its DeepKD and DOT optimizers, :mod:`deepkd.deepkd`, are configurations of
:class:`MultiMomentumSGD`; its GSNR analysis uses :func:`measure_gsnr`) and :mod:`effrepro.kernels`, whose fused
momentum step :class:`MultiMomentumSGD` calls and whose benchmark measures. The design keeps these generic
pieces here, apart from the paper, so that any method with several gradients of one forward pass can use them.

* :func:`component_grads`: one gradient per named loss for the same forward pass (several reverse passes,
  or one batched vector-Jacobian product through the network), :func:`all_reduce_grads` for DDP.
* :class:`GSNRAccumulator`, :func:`measure_gsnr`: gradient signal-to-noise ratio per component.
* :class:`MultiMomentumSGD`: one momentum buffer per component, each with its own coefficient.
"""

from effrepro.optim.components import GRAD_METHODS, all_reduce_grads, component_grads, sum_grads
from effrepro.optim.gsnr import TOTAL, GSNRAccumulator, measure_gsnr
from effrepro.optim.multi_momentum import MultiMomentumSGD

__all__ = [
    "GRAD_METHODS", "TOTAL", "GSNRAccumulator", "MultiMomentumSGD", "all_reduce_grads", "component_grads",
    "measure_gsnr", "sum_grads",
]
