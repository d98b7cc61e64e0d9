"""Kernels for the papers' deployment claims, each with a PyTorch reference beside it and dispatch by device.

* :mod:`~effrepro.kernels.lowbit`: low-bit matmul / conv straight from Double Rounding's int8 store
  (weight-only: Triton on GPU, ``torch._weight_int8pack_mm`` on CPU; integer inference: ``torch._int_mm`` or
  a Triton int8 kernel, exact int32 accumulation), packed 4-/2-bit storage.
* :mod:`~effrepro.kernels.momentum`: the fused multi-momentum SGD step (DOT / DeepKD): one Triton kernel pass
  per parameter on GPU, one pass of a C++ loop (compiled on first use) on CPU, or whole-list
  ``torch._foreach_*`` calls.
* :mod:`~effrepro.kernels.bench`: ``python -m effrepro.kernels.bench`` (kernel vs reference timings);
  :mod:`~effrepro.kernels.gpu_check`: ``python -m effrepro.kernels.gpu_check`` (the one-GPU check).

A backend that cannot run (no Triton, no CUDA, an operator missing from the torch build) falls back to the
reference with a one-line notice on stderr, never silently to something else.
"""

from effrepro.kernels._dispatch import notice, triton_runs_on
from effrepro.kernels.lowbit import (
    INT_BACKENDS,
    LINEAR_BACKENDS,
    conv_weight_matrix,
    im2col,
    int_conv2d,
    int_linear,
    int_linear_reference,
    lowbit_codes,
    lowbit_conv2d,
    lowbit_linear,
    lowbit_linear_reference,
    output_scale,
    pack_codes,
    quantize_activation,
    unpack_codes,
)
from effrepro.kernels.momentum import (
    MOMENTUM_BACKENDS,
    multi_momentum_cpp,
    multi_momentum_foreach,
    multi_momentum_reference,
    multi_momentum_step,
    multi_momentum_triton,
)

__all__ = [
    "INT_BACKENDS", "LINEAR_BACKENDS", "MOMENTUM_BACKENDS", "conv_weight_matrix", "im2col", "int_conv2d", "int_linear",
    "int_linear_reference", "lowbit_codes", "lowbit_conv2d", "lowbit_linear", "lowbit_linear_reference",
    "multi_momentum_cpp", "multi_momentum_foreach", "multi_momentum_reference", "multi_momentum_step",
    "multi_momentum_triton", "notice", "output_scale", "pack_codes", "quantize_activation", "triton_runs_on",
    "unpack_codes",
]
