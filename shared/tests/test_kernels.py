"""effrepro.kernels on CPU: low-bit / integer matmul and conv against their references, packing, the fused
multi-momentum step against the reference step (bit-identical on CPU), dispatch fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.kernels import (
    _dispatch,
    int_conv2d,
    int_linear,
    int_linear_reference,
    lowbit_codes,
    lowbit_conv2d,
    lowbit_linear,
    lowbit_linear_reference,
    momentum,
    multi_momentum_cpp,
    multi_momentum_foreach,
    multi_momentum_reference,
    multi_momentum_step,
    output_scale,
    pack_codes,
    quantize_activation,
    unpack_codes,
)
from effrepro.optim import MultiMomentumSGD
from effrepro.quant import dequantize_codes, shift_codes

SHAPES = [(1, 1, 1), (5, 7, 3), (37, 75, 29), (64, 130, 17)]  # (M, K, N), odd sizes included


def _codes(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
@pytest.mark.parametrize("tie", ["half_up", "floor", "half_even"])
def test_lowbit_codes_are_the_double_rounding_shift(bits: int, tie: str) -> None:
    codes = _codes(13, 11)
    assert torch.equal(lowbit_codes(codes, bits, 8, tie), shift_codes(codes, 8 - bits, bits, tie))
    with pytest.raises(UsageError):
        lowbit_codes(codes, 8, 6)


@pytest.mark.parametrize("bits", [4, 2])
def test_pack_roundtrip_and_size(bits: int) -> None:
    q = lowbit_codes(_codes(7, 13, seed=1), bits)
    packed = pack_codes(q, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, -(-13 * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, 13), q)
    with pytest.raises(UsageError):
        pack_codes(torch.full((2, 2), 100, dtype=torch.int8), bits)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_lowbit_linear_int8pack_matches_reference(shape: tuple[int, int, int], bits: int) -> None:
    m, k, n = shape
    torch.manual_seed(m)
    x = torch.randn(k, m).t()  # non-contiguous input
    codes, scale, bias = _codes(n, k), torch.tensor(0.013), torch.randn(n)
    ref = lowbit_linear_reference(x, codes, scale, bits, bias=bias)
    got = lowbit_linear(x, codes, scale, bits, bias=bias, backend="int8pack")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the reference is the de-quantised weight's product
    w = dequantize_codes(shift_codes(codes, 8 - bits, bits), scale, 8 - bits)
    torch.testing.assert_close(ref, F.linear(x, w, bias))


def test_per_channel_scale_and_bad_scale() -> None:
    x, codes = torch.randn(4, 9), _codes(6, 9)
    scale = torch.rand(6) + 0.1
    ref = x @ (lowbit_codes(codes, 4).float() * (scale * 16)[:, None]).t()
    torch.testing.assert_close(lowbit_linear(x, codes, scale, 4, backend="int8pack"), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError):
        output_scale(torch.rand(5), 6, 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act_bits", [8, 6, 4, 2])
def test_int_linear_is_exact_integer_product(shape: tuple[int, int, int], act_bits: int) -> None:
    m, k, n = shape
    g = torch.Generator().manual_seed(k)
    codes = torch.randint(0, 1 << act_bits, (m, k), generator=g).float()
    q = lowbit_codes(_codes(n, k), 4)
    w_scale = output_scale(torch.tensor(0.02), n, 4)
    got = int_linear(codes, act_bits, 0.05, q, w_scale, backend="int_mm")
    exact = (codes.double() @ q.double().t()) * (0.05 * w_scale.double())
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, int_linear_reference(codes, 0.05, q, w_scale), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (5, 1, 2)])
def test_conv_by_im2col(kernel: int, stride: int, padding: int) -> None:
    torch.manual_seed(kernel + stride)
    x = torch.randn(2, 5, 9, 7)
    codes = torch.randint(-128, 128, (6, 5, kernel, kernel), dtype=torch.int8)
    scale, bias = torch.tensor(0.01), torch.randn(6)
    w = dequantize_codes(lowbit_codes(codes, 4), scale, 4)
    ref = F.conv2d(x, w, bias, stride, padding)
    got = lowbit_conv2d(x, codes, scale, 4, bias=bias, stride=stride, padding=padding, backend="int8pack")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    act = quantize_activation(x.relu(), 0.1, 4)
    q = lowbit_codes(codes, 4)
    w_scale = output_scale(scale, 6, 4)
    ref_int = F.conv2d(act * 0.1, q.float() * w_scale[:, None, None, None], bias, stride, padding)
    got_int = int_conv2d(act, 4, 0.1, q, w_scale, bias, stride, padding)
    torch.testing.assert_close(got_int, ref_int, rtol=1e-5, atol=1e-5)


def test_quantize_activation_matches_the_fake_quantiser() -> None:
    from effrepro.quant import fake_quant_act

    x = torch.randn(1000).relu() * 3
    s = torch.tensor(0.037)
    codes = quantize_activation(x, s, 4)
    assert torch.equal(codes * s, fake_quant_act(x, s, None, 4))


def test_triton_request_without_triton_device_falls_back_with_notice(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_dispatch, "_NOTICED", set())
    x, codes = torch.randn(3, 8), _codes(4, 8)
    got = lowbit_linear(x, codes, torch.tensor(0.1), 4, backend="triton")
    torch.testing.assert_close(got, lowbit_linear_reference(x, codes, torch.tensor(0.1), 4))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference" in err[0]
    with pytest.raises(UsageError):
        lowbit_linear(x, codes, torch.tensor(0.1), 4, backend="cuda-magic")


# ---- fused multi-momentum step ------------------------------------------------------------------------------
def _problem(seed: int = 0, components: int = 3) -> tuple[list, list, list]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3,), (17, 5), (1001,), (2, 3, 5, 7)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(components)]
    bufs = [[torch.randn(s, generator=g) for s in shapes] for _ in range(components)]
    grads[0][1] = torch.randn(5, 17, generator=g).t()  # non-contiguous gradient
    bufs[-1][3] = torch.randn(7, 5, 3, 2, generator=g).permute(3, 2, 1, 0)  # non-contiguous buffer
    return params, grads, bufs


@pytest.mark.parametrize("step", [multi_momentum_foreach, multi_momentum_cpp])
@pytest.mark.parametrize("decay_index", [None, 0, 2])
@pytest.mark.parametrize("dampening", [0.0, 0.1])
def test_fused_cpu_steps_are_bit_identical_to_reference(step, decay_index: int | None, dampening: float) -> None:
    if step is multi_momentum_cpp and not momentum.cpp_available():
        pytest.skip("no C++ compiler")
    base = _problem()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    for _ in range(3):
        multi_momentum_reference(*a, [0.975, 0.95, 0.825], 0.1, 5e-4, decay_index, dampening)
        step(*b, [0.975, 0.95, 0.825], 0.1, 5e-4, decay_index, dampening)
    for x, y in zip(a[0] + sum(a[2], []), b[0] + sum(b[2], [])):
        assert torch.equal(x, y)
    assert not torch.equal(a[0][0], base[0][0])  # the step moved the parameters


@pytest.mark.parametrize("components", [1, 2, 4])
def test_cpp_step_component_counts(components: int) -> None:
    if not momentum.cpp_available():
        pytest.skip("no C++ compiler")
    base = _problem(seed=components, components=components)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    mus = [0.9, 0.8, 0.7, 0.6][:components]
    multi_momentum_reference(*a, mus, 0.05, 1e-3, components - 1, 0.0)
    multi_momentum_cpp(*b, mus, 0.05, 1e-3, components - 1, 0.0)
    for x, y in zip(a[0] + sum(a[2], []), b[0] + sum(b[2], [])):
        assert torch.equal(x, y)


def test_step_dispatch_and_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    params, grads, bufs = _problem(components=2)
    expected = "cpp" if momentum.cpp_available() else "foreach"
    assert multi_momentum_step(params, grads, bufs, [0.9, 0.8], 0.1) == expected
    assert multi_momentum_step(params, grads, bufs, [0.9, 0.8], 0.1, backend="triton") == "foreach"
    from effrepro.kernels import _cpu

    monkeypatch.setattr(_cpu, "_LIBRARY", None)  # as if no compiler were installed
    monkeypatch.setattr(_dispatch, "_NOTICED", set())
    capsys.readouterr()
    assert multi_momentum_step(params, grads, bufs, [0.9, 0.8], 0.1, backend="cpp") == "foreach"
    assert "no C++ compiler" in capsys.readouterr().err
    with pytest.raises(UsageError):
        multi_momentum_step(params, grads[:1], bufs, [0.9, 0.8], 0.1)


def _three_buffers(params, implementation: str = "auto", **options) -> MultiMomentumSGD:
    """DeepKD's released configuration (tied task buffer, decay on the TCG buffer)."""
    return MultiMomentumSGD(params, momenta={"tog": 0.975, "tcg": 0.825, "ncg": 0.95}, weight_decay_on="tcg",
                            order=("tog", "ncg", "tcg"), tied_momenta={"tog": ("tcg", "ncg")},
                            implementation=implementation, **options)


def _deepkd_run(implementation: str, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))
    opt = _three_buffers(model.parameters(), implementation, lr=0.05, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    n = len(opt.flat_params())
    for step in range(steps):
        grads = {k: [torch.randn(p.shape, generator=gen) for p in opt.flat_params()] for k in ("tog", "tcg", "ncg")}
        if step == 2:
            grads["ncg"][n - 1] = None  # a parameter missing one component: reference path for it
        opt.step(grads)
    return [p.detach().clone() for p in model.parameters()] + [
        b.clone() for p in model.parameters() for b in opt.state[p].values()]


@pytest.mark.parametrize("implementation", ["auto", "foreach"])
def test_three_buffer_step_fused_equals_reference(monkeypatch: pytest.MonkeyPatch, implementation: str) -> None:
    backend = implementation if implementation != "auto" else ("cpp" if momentum.cpp_available() else "foreach")
    calls = []
    original = momentum.STEPS[backend]
    monkeypatch.setitem(momentum.STEPS, backend, lambda *a: calls.append(len(a[0])) or original(*a))
    fused = _deepkd_run(implementation)
    assert calls == [4, 3, 4]  # steps 1-3 fuse (step 0 creates the buffers); at step 2 one parameter lacks NCG
    ref = _deepkd_run("reference")
    assert len(fused) == len(ref)
    for x, y in zip(fused, ref):
        assert torch.equal(x, y)
    assert _three_buffers([torch.zeros(1, requires_grad=True)], lr=0.1).implementation == "auto"


def _two_buffers(params, implementation: str) -> MultiMomentumSGD:
    """DOT's configuration: task buffer mu - delta carrying the weight decay, KD buffer mu + delta."""
    return MultiMomentumSGD(params, lr=0.1, momenta={"task": 0.825, "kd": 0.975}, weight_decay=1e-3,
                            weight_decay_on="task", order=("task", "kd"), implementation=implementation)


def test_two_buffers_and_bad_implementation() -> None:
    p = torch.nn.Parameter(torch.ones(5))
    opt = _two_buffers([p], "foreach")
    for _ in range(3):
        opt.step({"task": [torch.ones(5)], "kd": [torch.full((5,), 2.0)]})
    q = torch.nn.Parameter(torch.ones(5))
    ref = _two_buffers([q], "reference")
    for _ in range(3):
        ref.step({"task": [torch.ones(5)], "kd": [torch.full((5,), 2.0)]})
    assert torch.equal(p, q)
    with pytest.raises(ValueError):
        MultiMomentumSGD([p], lr=0.1, momenta={"a": 0.9}, implementation="cuda")


# ---- benchmark and GPU check entry points ---------------------------------------------------------------
def test_bench_quick_runs_and_reports_intervals(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from effrepro.kernels import bench

    assert bench.main(["--quick", "--repeats", "3", "--warmup", "1", "--json", str(tmp_path / "b.json")]) == 0
    import json

    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["kernel"] for r in rows} >= {"lowbit_int8pack", "int_mm", "int_conv2d", "optimizer_auto"}
    for row in rows:
        for r in row["ratio"].values():
            assert r["n"] == 3 and r["ci"][0] <= r["ratio"] <= r["ci"][1]
    assert "| case |" in capsys.readouterr().out


def test_gpu_check_without_cuda_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from effrepro.kernels import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and not (tmp_path / "gpu").exists()
    assert gpu_check.main(["--dry-run"]) == 0
    assert "kernels_bench" in capsys.readouterr().out
