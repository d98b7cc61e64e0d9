"""Backend choice shared by the kernels: which of Triton / a torch operator / the reference runs, and the
one-line notice printed (once per reason) whenever a request falls back to the reference.

Triton kernels are written once as plain functions and compiled lazily with ``triton.jit``. On CUDA
tensors that is the GPU compiler; with ``TRITON_INTERPRET=1`` in the environment before Triton is imported,
it is Triton's interpreter (numpy; slow, meant for tests), which runs the very same kernel source on CPU
tensors. Without either, a Triton request falls back to the reference with a notice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from effrepro.errors import UsageError

_NOTICED: set[str] = set()


def notice(message: str) -> None:
    """Print ``message`` on one line of stderr, once per process (fallbacks must be visible, not noisy)."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"effrepro.kernels: {message}", file=sys.stderr, flush=True)


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpret_requested() -> bool:
    """``TRITON_INTERPRET=1``: run Triton kernels on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_runs_on(device: torch.device) -> bool:
    """Can a Triton kernel run on tensors of ``device``: CUDA with Triton installed, or CPU when
    ``TRITON_INTERPRET=1`` was set before Triton was first imported (Triton decides that at import time)."""
    if not has_triton():
        return False
    if device.type == "cuda":
        return not interpret_requested()
    return device.type == "cpu" and interpret_requested()


@functools.cache
def compile_kernel(fn: Callable[..., Any]) -> Any:
    """``fn`` as a launchable Triton kernel (``triton.jit`` gives the interpreter under ``TRITON_INTERPRET=1``)."""
    import triton

    return triton.jit(fn)


def kernel_for(fn: Callable[..., Any], device: torch.device) -> Any:
    if not triton_runs_on(device):
        raise UsageError(f"no Triton kernel can run on {device.type} tensors here (CUDA, or CPU with "
                         "TRITON_INTERPRET=1 set before Triton is imported)")
    return compile_kernel(fn)


def check_backend(backend: str, allowed: tuple[str, ...]) -> str:
    if backend not in allowed:
        raise UsageError(f"unknown kernel backend {backend!r}; use one of: {', '.join(allowed)}")
    return backend
