"""The Triton kernels' source against their references: on CPU through Triton's interpreter, on CUDA compiled.

Triton decides at import time whether ``triton.jit`` interprets, so the CPU cases run in a child pytest
process started with ``TRITON_INTERPRET=1`` (:func:`test_triton_kernels_under_the_interpreter`); run this file
with ``TRITON_INTERPRET=1`` yourself to see the cases one by one. The CUDA cases carry the ``gpu`` marker.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from effrepro.kernels import (
    int_linear,
    lowbit_codes,
    lowbit_conv2d,
    lowbit_linear,
    lowbit_linear_reference,
    multi_momentum_reference,
    multi_momentum_triton,
    output_scale,
    triton_runs_on,
)
from effrepro.kernels._dispatch import has_triton, interpret_requested
from effrepro.quant import dequantize_codes

ROOT = Path(__file__).resolve().parents[2]
INTERPRETED = interpret_requested()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="CPU cases need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(INTERPRETED, reason="interpreter run")]),
]
SHAPES = [(1, 1, 1), (5, 7, 3), (37, 75, 29)]  # (M, K, N): odd sizes, more than one tile in M and K


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the interpreter run")
@pytest.mark.skipif(not has_triton(), reason="Triton is not installed")
def test_triton_kernels_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "kernel_case"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " failed" not in done.stdout and " passed" in done.stdout, tail


def _x(m: int, k: int, device: str) -> torch.Tensor:
    return torch.randn(k, m, device=device).t()  # non-contiguous


def _codes(n: int, k: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_kernel_case_lowbit_linear(device: str, shape: tuple[int, int, int], bits: int) -> None:
    assert triton_runs_on(torch.device(device))
    m, k, n = shape
    torch.manual_seed(k)
    x, codes, scale, bias = _x(m, k, device), _codes(n, k, device), torch.tensor(0.013, device=device), None
    if n > 3:
        bias = torch.randn(n, device=device)
    ref = lowbit_linear_reference(x, codes, scale, bits, bias=bias)
    got = lowbit_linear(x, codes, scale, bits, bias=bias, backend="triton")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tie", ["floor", "half_even"])
def test_kernel_case_tie_modes(device: str, tie: str) -> None:
    x, codes, scale = _x(17, 40, device), _codes(18, 40, device, seed=3), torch.tensor(0.02, device=device)
    for bits in (6, 4, 2):
        ref = lowbit_linear_reference(x, codes, scale, bits, tie_mode=tie)
        got = lowbit_linear(x, codes, scale, bits, tie_mode=tie, backend="triton")
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act_bits", [8, 4])
def test_kernel_case_int_linear_exact(device: str, act_bits: int) -> None:
    m, k, n = 37, 75, 29
    g = torch.Generator().manual_seed(act_bits)
    codes = torch.randint(0, 1 << act_bits, (m, k), generator=g).float().to(device)
    q = lowbit_codes(_codes(n, k, device), 4)
    w_scale = output_scale(torch.tensor(0.02, device=device), n, 4)
    got = int_linear(codes, act_bits, 0.05, q, w_scale, backend="triton")
    exact = (codes.double().cpu() @ q.double().cpu().t()) * (0.05 * w_scale.double().cpu())
    torch.testing.assert_close(got.double().cpu(), exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_case_conv3x3(device: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5, device=device)
    codes = torch.randint(-128, 128, (4, 3, 3, 3), dtype=torch.int8).to(device)
    scale = torch.tensor(0.01, device=device)
    w = dequantize_codes(lowbit_codes(codes, 2), scale, 6)
    ref = torch.nn.functional.conv2d(x, w, None, 2, 1)
    got = lowbit_conv2d(x, codes, scale, 2, stride=2, padding=1, backend="triton")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("components", "decay_index"), [(3, 2), (2, 0), (1, None)])
def test_kernel_case_multi_momentum(device: str, components: int, decay_index: int | None) -> None:
    g = torch.Generator().manual_seed(components)
    shapes = [(3,), (17, 5), (1500,)]
    params = [torch.randn(s, generator=g).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(device) for s in shapes] for _ in range(components)]
    bufs = [[torch.randn(s, generator=g).to(device) for s in shapes] for _ in range(components)]
    grads[0][1] = torch.randn(5, 17, generator=g).to(device).t()
    bufs[-1][1] = torch.randn(5, 17, generator=g).to(device).t()
    momenta = [0.975, 0.95, 0.825][:components]
    a, b = copy.deepcopy((params, grads, bufs)), copy.deepcopy((params, grads, bufs))
    for _ in range(3):
        multi_momentum_reference(*a, momenta, 0.1, 5e-4, decay_index, 0.1)
        multi_momentum_triton(*b, momenta, 0.1, 5e-4, decay_index, 0.1)
    # fused multiply-adds on both sides on a GPU; the interpreter rounds the product first (about one ulp)
    for x, y in zip(a[0] + sum(a[2], []), b[0] + sum(b[2], [])):
        torch.testing.assert_close(y, x, rtol=2e-6, atol=1e-6)
    assert b[2][-1][1].stride() == (1, 17)  # a non-contiguous buffer is written back in place
