"""A C++ CPU kernel for the multi-momentum step, compiled on first use with the system C++ compiler and cached.

The kernel needs no torch headers (it works on raw FP32 pointers), so it is built by one plain ``g++`` call
(about a second) and loaded with :mod:`ctypes`, instead of ``torch.utils.cpp_extension`` (about a minute per
build here, for the torch headers). The library lives in ``<effrepro cache>/kernels/`` under a name derived from
the source and the compiler flags, so a changed source is rebuilt. Without a compiler :func:`library` returns
``None`` and the caller falls back with its one-line notice.

The arithmetic is that of torch's CPU kernels, operation by operation: ``b * mu`` rounded, then the
``add(..., alpha=)`` updates as fused multiply-adds (``std::fma``), compiled with ``-ffp-contract=off`` so the
compiler fuses nothing else; results are bit-identical to the reference step (tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <cmath>
#include <cstdint>

template <int NUM>
static void step(float* p, float* const* g, float* const* b, int64_t n, const float* mu, float neg_lr, float wd,
                 float keep, int decay) {
    float* gk[NUM];
    float* bk[NUM];
    float m[NUM];
    for (int k = 0; k < NUM; ++k) { gk[k] = g[k]; bk[k] = b[k]; m[k] = mu[k]; }
    // the tensors never overlap (distinct parameters, gradients and buffers): let the loop vectorise
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
        float pv = p[i];
#pragma GCC unroll 4
        for (int k = 0; k < NUM; ++k) {
            float d = gk[k][i];
            if (k == decay) d = std::fma(pv, wd, d);
            float bv = bk[k][i] * m[k];
            bv = std::fma(d, keep, bv);
            bk[k][i] = bv;
            pv = std::fma(bv, neg_lr, pv);
        }
        p[i] = pv;
    }
}

extern "C" int multi_momentum_f32(float* p, float* const* g, float* const* b, int64_t n, int num, const float* mu,
                                  float neg_lr, float wd, float keep, int decay) {
    switch (num) {
        case 1: step<1>(p, g, b, n, mu, neg_lr, wd, keep, decay); return 0;
        case 2: step<2>(p, g, b, n, mu, neg_lr, wd, keep, decay); return 0;
        case 3: step<3>(p, g, b, n, mu, neg_lr, wd, keep, decay); return 0;
        case 4: step<4>(p, g, b, n, mu, neg_lr, wd, keep, decay); return 0;
        default: return 1;
    }
}
"""
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")
MAX_COMPONENTS = 4
_LIBRARY: ctypes.CDLL | None | bool = False  # False: not tried yet


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build(cxx: str) -> Path:
    from effrepro.data import cache_dir

    key = hashlib.sha256((SOURCE + " ".join(FLAGS) + cxx).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"multi_momentum_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "multi_momentum.cpp"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, text=True,
                       timeout=300)
        os.replace(out, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, or ``None`` when no C++ compiler is available or the build failed."""
    global _LIBRARY
    if _LIBRARY is False:
        cxx = compiler()
        _LIBRARY = None
        if cxx is not None:
            try:
                lib = ctypes.CDLL(str(_build(cxx)))
            except (OSError, subprocess.SubprocessError):
                lib = None
            if lib is not None:
                fn = lib.multi_momentum_f32
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                               ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int]
                _LIBRARY = lib
    return _LIBRARY or None
