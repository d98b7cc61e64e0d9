"""The multi-momentum SGD step (one buffer per gradient component, DOT / DeepKD) for parameters whose buffers
all exist, in three interchangeable forms with the same float operations in the same order:

* :func:`multi_momentum_reference`: per parameter, per component, plain tensor ops (the definition);
* :func:`multi_momentum_foreach`: the whole parameter list in a handful of ``torch._foreach_*`` calls
  (all buffers scaled by their coefficients in one call, all gradients without weight decay added in one
  call; only the decayed component waits for the parameter updates before it);
* :func:`multi_momentum_triton`: one Triton kernel per parameter reading the parameter, the gradients and
  the buffers once and writing the buffers and the parameter once (up to three components);
* :func:`multi_momentum_cpp`: the same single pass on CPU, a C++ loop compiled on first use
  (:mod:`effrepro.kernels._cpu`), bit-identical to the reference.

For component ``k`` in order: ``d = g_k (+ wd * theta if k is the decayed one)``, ``B_k = mu_k B_k + (1 -
dampening) d``, ``theta -= lr B_k`` (in place, before the next component). :func:`multi_momentum_step`
dispatches by device and falls back with a one-line notice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from effrepro.errors import UsageError
from effrepro.kernels._dispatch import check_backend, kernel_for, notice, triton_runs_on

MOMENTUM_BACKENDS = ("auto", "cpp", "foreach", "triton", "reference")
MAX_TRITON_COMPONENTS = 3
BLOCK = 1024


def _check(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]], bufs: Sequence[Sequence[Tensor]],
           momenta: Sequence[float], decay_index: int | None) -> None:
    if not len(grads) == len(bufs) == len(momenta):
        raise UsageError(f"need one gradient list, buffer list and coefficient per component; got {len(grads)}, "
                         f"{len(bufs)}, {len(momenta)}")
    for k, (gs, bs) in enumerate(zip(grads, bufs)):
        if len(gs) != len(params) or len(bs) != len(params):
            raise UsageError(f"component {k}: {len(gs)} gradients and {len(bs)} buffers for {len(params)} parameters")
    if decay_index is not None and not 0 <= decay_index < len(grads):
        raise UsageError(f"decay_index {decay_index} is not a component index (0..{len(grads) - 1})")


@torch.no_grad()
def multi_momentum_reference(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]],
                             bufs: Sequence[Sequence[Tensor]], momenta: Sequence[float], lr: float,
                             weight_decay: float = 0.0, decay_index: int | None = None,
                             dampening: float = 0.0) -> None:
    """In place: ``grads[k][i]`` / ``bufs[k][i]`` are component ``k``'s gradient / buffer of ``params[i]``."""
    _check(params, grads, bufs, momenta, decay_index)
    for i, p in enumerate(params):
        for k, mu in enumerate(momenta):
            g = grads[k][i]
            d = g.add(p, alpha=weight_decay) if k == decay_index else g
            bufs[k][i].mul_(mu)
            bufs[k][i].add_(d, alpha=1.0 - dampening)
            p.add_(bufs[k][i], alpha=-lr)


@torch.no_grad()
def multi_momentum_foreach(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]],
                           bufs: Sequence[Sequence[Tensor]], momenta: Sequence[float], lr: float,
                           weight_decay: float = 0.0, decay_index: int | None = None,
                           dampening: float = 0.0) -> None:
    """The same step as :func:`multi_momentum_reference` in ``2 + 2 * components`` foreach calls."""
    _check(params, grads, bufs, momenta, decay_index)
    params = list(params)
    if not params:
        return
    keep = 1.0 - dampening
    all_bufs = [b for bs in bufs for b in bs]
    torch._foreach_mul_(all_bufs, [float(mu) for mu in momenta for _ in params])
    free = [k for k in range(len(momenta)) if k != decay_index]
    if free:
        torch._foreach_add_([b for k in free for b in bufs[k]], [g for k in free for g in grads[k]], alpha=keep)
    for k in range(len(momenta)):
        if k == decay_index:
            d = torch._foreach_add(list(grads[k]), params, alpha=weight_decay)
            torch._foreach_add_(list(bufs[k]), d, alpha=keep)
        torch._foreach_add_(params, list(bufs[k]), alpha=-lr)


@torch.no_grad()
def multi_momentum_triton(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]],
                          bufs: Sequence[Sequence[Tensor]], momenta: Sequence[float], lr: float,
                          weight_decay: float = 0.0, decay_index: int | None = None,
                          dampening: float = 0.0) -> None:
    """One kernel launch per parameter (at most three components; FP32 tensors)."""
    _check(params, grads, bufs, momenta, decay_index)
    num = len(momenta)
    if not 1 <= num <= MAX_TRITON_COMPONENTS:
        raise UsageError(f"the Triton step handles 1 to {MAX_TRITON_COMPONENTS} components, got {num}")
    from effrepro.kernels._triton import multi_momentum_kernel

    mus = [float(m) for m in momenta] + [0.0] * (MAX_TRITON_COMPONENTS - num)
    for i, p in enumerate(params):
        if p.numel() == 0:
            continue
        kernel = kernel_for(multi_momentum_kernel, p.device)
        gs = [grads[k][i].contiguous() for k in range(num)]
        targets = [p] + [bufs[k][i] for k in range(num)]
        work = [t if t.is_contiguous() else t.contiguous() for t in targets]
        gs += [gs[0]] * (MAX_TRITON_COMPONENTS - num)
        bs = work[1:] + [work[1]] * (MAX_TRITON_COMPONENTS - num)
        n = p.numel()
        kernel[((n + BLOCK - 1) // BLOCK,)](work[0], *gs, *bs, n, *mus, -float(lr), float(weight_decay),
                                            1.0 - float(dampening), NUM=num,
                                            DECAY=-1 if decay_index is None else decay_index, BLOCK=BLOCK)
        for target, done in zip(targets, work):
            if done is not target:
                target.copy_(done)


@torch.no_grad()
def multi_momentum_cpp(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]],
                       bufs: Sequence[Sequence[Tensor]], momenta: Sequence[float], lr: float,
                       weight_decay: float = 0.0, decay_index: int | None = None,
                       dampening: float = 0.0) -> None:
    """One pass per parameter on CPU (FP32, up to four components); a parameter whose tensors are not all
    contiguous FP32 CPU tensors takes the reference ops instead."""
    import ctypes

    from effrepro.kernels._cpu import MAX_COMPONENTS, library

    _check(params, grads, bufs, momenta, decay_index)
    lib = library()
    num = len(momenta)
    if lib is None or num > MAX_COMPONENTS:
        raise UsageError("the C++ multi-momentum kernel is not available (no C++ compiler, or > 4 components)")
    mus = (ctypes.c_float * num)(*[float(m) for m in momenta])
    decay = -1 if decay_index is None else decay_index
    for i, p in enumerate(params):
        tensors = [p] + [grads[k][i] for k in range(num)] + [bufs[k][i] for k in range(num)]
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
            multi_momentum_reference([p], [[grads[k][i]] for k in range(num)], [[bufs[k][i]] for k in range(num)],
                                     momenta, lr, weight_decay, decay_index, dampening)
            continue
        gp = (ctypes.c_void_p * num)(*[grads[k][i].data_ptr() for k in range(num)])
        bp = (ctypes.c_void_p * num)(*[bufs[k][i].data_ptr() for k in range(num)])
        lib.multi_momentum_f32(p.data_ptr(), gp, bp, p.numel(), num, mus, -float(lr), float(weight_decay),
                               1.0 - float(dampening), decay)


def cpp_available() -> bool:
    from effrepro.kernels._cpu import library

    return library() is not None


def pick_momentum_backend(device: torch.device, backend: str = "auto", dtype: torch.dtype = torch.float32,
                          components: int = 3) -> str:
    """``auto``: Triton on CUDA (FP32, up to three components), the C++ loop on CPU (FP32), foreach otherwise;
    a kernel request that cannot run falls back to foreach with a notice."""
    check_backend(backend, MOMENTUM_BACKENDS)
    if backend == "auto":
        backend = {"cuda": "triton", "cpu": "cpp"}.get(device.type, "foreach")
    if backend == "cpp":
        if device.type != "cpu" or dtype != torch.float32 or components > 4:
            if device.type == "cpu" and dtype != torch.float32 or components > 4:
                notice(f"the C++ multi-momentum kernel takes FP32 and 1-4 components (got {dtype}, {components}); "
                       "using torch._foreach_*")
            return "foreach"
        if not cpp_available():
            notice("no C++ compiler found for the CPU multi-momentum kernel; using torch._foreach_*")
            return "foreach"
    if backend == "triton":
        if not triton_runs_on(device):
            if device.type == "cuda":
                notice("Triton is not available; the multi-momentum step uses torch._foreach_*")
            else:
                notice("the Triton multi-momentum kernel needs CUDA (or TRITON_INTERPRET=1); using torch._foreach_*")
            return "foreach"
        if dtype != torch.float32 or not 1 <= components <= MAX_TRITON_COMPONENTS:
            notice(f"the Triton multi-momentum kernel takes FP32 and 1-3 components (got {dtype}, {components}); "
                   "using torch._foreach_*")
            return "foreach"
    return backend


STEPS = {"cpp": multi_momentum_cpp, "foreach": multi_momentum_foreach, "triton": multi_momentum_triton,
         "reference": multi_momentum_reference}


def multi_momentum_step(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]], bufs: Sequence[Sequence[Tensor]],
                        momenta: Sequence[float], lr: float, weight_decay: float = 0.0,
                        decay_index: int | None = None, dampening: float = 0.0, backend: str = "auto") -> str:
    """Run the step with the backend chosen for ``params``' device; returns the backend that ran."""
    if not params:
        return "reference"
    chosen = pick_momentum_backend(params[0].device, backend, params[0].dtype, len(momenta))
    STEPS[chosen](params, grads, bufs, momenta, lr, weight_decay, decay_index, dampening)
    return chosen
