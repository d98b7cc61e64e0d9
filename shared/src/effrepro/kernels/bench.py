"""``python -m effrepro.kernels.bench``: every kernel against its reference (and the dense float op it
replaces), paired and interleaved, warm-up excluded, one thread by default.

Each row reports medians over the repeats with a 95 % percentile-bootstrap interval of the median, and the
ratio of medians kernel / reference with a paired bootstrap interval (repeats resampled together, since the
arms of one round ran back to back). ``--device cuda`` runs the GPU set (Triton kernels, ``torch._int_mm``,
fp16 dense baselines).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effrepro.bench import TimingStats, paired_benchmark
from effrepro.errors import UsageError
from effrepro.kernels.lowbit import (
    int_conv2d,
    int_linear,
    int_linear_reference,
    lowbit_codes,
    lowbit_linear,
    lowbit_linear_reference,
    output_scale,
)
from effrepro.kernels.momentum import (
    multi_momentum_cpp,
    multi_momentum_foreach,
    multi_momentum_reference,
    multi_momentum_triton,
)
from effrepro.stats import bootstrap

Arms = dict[str, Callable[[], object]]


# ---- statistics ---------------------------------------------------------------------------------------------
def median_ci(stats: TimingStats, scale: float = 1e3) -> dict[str, Any]:
    """Median (ms by default) with a bootstrap interval over the repeats."""
    est = bootstrap(np.asarray(stats.samples) * scale, np.median, draws=2000)
    return {"median": est.value, "ci": list(est.ci), "n": est.n}


def ratio_ci(stats: dict[str, TimingStats], num: str, den: str) -> dict[str, Any]:
    """``median(num) / median(den)`` with a paired bootstrap interval (rows = rounds of the benchmark)."""
    rows = np.stack([np.asarray(stats[num].samples), np.asarray(stats[den].samples)], axis=1)
    est = bootstrap(rows, lambda r: float(np.median(r[:, 0]) / np.median(r[:, 1])), draws=2000)
    return {"ratio": est.value, "ci": list(est.ci), "n": est.n}


def fmt_ci(entry: dict[str, Any], key: str, digits: int = 3) -> str:
    lo, hi = entry["ci"]
    return f"{entry[key]:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


# ---- cases ----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def lowbit_cases(device: torch.device, quick: bool) -> list[tuple[str, Arms, str, list[str]]]:
    """Weight-only product from the int8 store: kernel vs the de-quantising reference vs a dense float matmul."""
    m, k, n = (8, 256, 128) if quick else ((16, 4096, 4096) if device.type == "cuda" else (64, 1152, 512))
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    scale = torch.tensor(0.01, device=device)
    x = torch.randn(m, k, generator=g).to(device)
    dense_dtype = torch.float16 if device.type == "cuda" else torch.float32
    kernel = "triton" if device.type == "cuda" else "int8pack"
    cases = []
    for bits in (8, 4, 2):
        w = (lowbit_codes(codes, bits).float() * (0.01 * 2 ** (8 - bits))).to(dense_dtype)
        xd = x.to(dense_dtype)
        arms = {
            f"lowbit_{kernel}": lambda b=bits: lowbit_linear(x, codes, scale, b, backend=kernel),
            "reference_dequantize": lambda b=bits: lowbit_linear_reference(x, codes, scale, b),
            f"dense_{str(dense_dtype).split('.')[-1]}": lambda w=w, xd=xd: F.linear(xd, w),
        }
        if device.type == "cpu" and bits <= 4 and k % 32 == 0:
            arms["torch_int4pack"] = _int4pack_arm(x, lowbit_codes(codes, bits), 0.01 * 2 ** (8 - bits))
        cases.append((f"lowbit_linear w{bits} M{m} K{k} N{n}", arms, f"lowbit_{kernel}", list(arms)[1:]))
    return cases


def _int4pack_arm(x: torch.Tensor, codes: torch.Tensor, scale: float, group: int = 32) -> Callable[[], object]:
    """torch's CPU weight-only int4 operator on the same b-bit codes (b <= 4), measured as a candidate CPU
    backend: the codes stored as unsigned nibbles ``q + 8``, which torch de-quantises as
    ``(nibble - 8) * scale + zero`` (zero 0)."""
    n, k = codes.shape
    packed = torch._convert_weight_to_int4pack_for_cpu((codes.to(torch.int32) + 8), 1)
    scales_zeros = torch.empty(k // group, n, 2)
    scales_zeros[..., 0] = scale
    scales_zeros[..., 1] = 0.0
    return lambda: torch._weight_int4pack_mm_for_cpu(x, packed, group, scales_zeros)


def integer_cases(device: torch.device, quick: bool) -> list[tuple[str, Arms, str, list[str]]]:
    """Integer product of activation codes and weight codes (int32, exact) vs the fake-quant float product."""
    m, k, n = (64, 288, 64) if quick else ((4096, 4096, 4096) if device.type == "cuda" else (784, 1152, 128))
    g = torch.Generator().manual_seed(1)
    codes8 = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    cases = []
    for bits in (8, 4, 2):
        q = lowbit_codes(codes8, bits)
        ws = output_scale(torch.tensor(0.01, device=device), n, 8 - bits)
        act = torch.randint(0, 1 << bits, (m, k), generator=g).float().to(device)
        x = act * 0.05
        w = q.float() * ws[:, None]
        dense_dtype = torch.float16 if device.type == "cuda" else torch.float32
        xd, wd = x.to(dense_dtype), w.to(dense_dtype)
        arms = {
            "int_mm": lambda a=act, q=q, ws=ws, b=bits: int_linear(a, b, 0.05, q, ws, backend="int_mm"),
            "reference_float": lambda a=act, q=q, ws=ws: int_linear_reference(a, 0.05, q, ws),
            f"dense_{str(dense_dtype).split('.')[-1]}": lambda xd=xd, wd=wd: F.linear(xd, wd),
        }
        cases.append((f"int_linear w{bits}a{bits} M{m} K{k} N{n}", arms, "int_mm", list(arms)[1:]))
    # a ResNet-18 layer1 3x3 convolution (batch 1, 64 -> 64 channels, 56 x 56)
    size = 14 if quick else 56
    act = torch.randint(0, 16, (1, 64, size, size), generator=g).float().to(device)
    cw = torch.randint(-128, 128, (64, 64, 3, 3), generator=g, dtype=torch.int8).to(device)
    q = lowbit_codes(cw, 4)
    ws = output_scale(torch.tensor(0.01, device=device), 64, 4)
    wf = q.float() * ws[:, None, None, None]
    arms = {
        "int_conv2d": lambda: int_conv2d(act, 4, 0.05, q, ws, None, 1, 1),
        "conv2d_fp32_dequantized": lambda: F.conv2d(act * 0.05, wf, None, 1, 1),
    }
    cases.append((f"int_conv2d 3x3 w4a4 64->64 {size}x{size}", arms, "int_conv2d", ["conv2d_fp32_dequantized"]))
    return cases


def resnet18_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's ResNet-18 (11.7 M parameters)."""
    import torchvision

    return [tuple(p.shape) for p in torchvision.models.resnet18(weights=None).parameters()]


def momentum_cases(device: torch.device, quick: bool) -> list[tuple[str, Arms, str, list[str]]]:
    """DeepKD's three-buffer step over ResNet-18-shaped parameters: the one-pass kernel (C++ on CPU, Triton on
    CUDA) vs the per-parameter reference and the whole-list foreach step."""
    shapes = [(64, 3, 7, 7), (64,), (512, 512, 3, 3)] if quick else resnet18_shapes()
    g = torch.Generator().manual_seed(2)

    def problem() -> tuple[list, list, list]:
        params = [torch.randn(s, generator=g).to(device) for s in shapes]
        grads = [[torch.randn(s, generator=g).to(device) * 1e-3 for s in shapes] for _ in range(3)]
        bufs = [[torch.zeros(s, device=device) for s in shapes] for _ in range(3)]
        return params, grads, bufs

    args = ([0.975, 0.95, 0.825], 0.01, 5e-4, 2, 0.0)
    fused = "triton" if device.type == "cuda" else "cpp"
    step = multi_momentum_triton if fused == "triton" else multi_momentum_cpp
    a, b, c = problem(), problem(), problem()
    arms = {f"fused_{fused}": lambda: step(*a, *args), "reference_loop": lambda: multi_momentum_reference(*b, *args),
            "foreach": lambda: multi_momentum_foreach(*c, *args)}
    numel = sum(int(np.prod(s)) for s in shapes)
    cases = [(f"multi_momentum 3 buffers, {numel / 1e6:.2f} M params", arms, f"fused_{fused}",
              [k for k in arms if k != f"fused_{fused}"])]
    # what DeepKD runs: the optimizer's step, fused (auto) vs its component-by-component reference
    from effrepro.optim import MultiMomentumSGD

    opt_arms = {}
    for impl in ("auto", "reference"):
        params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in shapes]
        # deepkd.deepkd.deepkd_optimizer's released configuration (mu = 0.9 + deltas 0.075 / -0.075 / 0.05)
        opt = MultiMomentumSGD(params, lr=0.01, momenta={"tog": 0.9 + 0.075, "tcg": 0.9 - 0.075, "ncg": 0.9 + 0.05},
                               weight_decay=5e-4, weight_decay_on="tcg", order=("tog", "ncg", "tcg"),
                               tied_momenta={"tog": ("tcg", "ncg")}, implementation=impl)
        grads = {k: [torch.randn(s, generator=g).to(device) * 1e-3 for s in shapes] for k in ("tog", "tcg", "ncg")}
        opt.step(grads)  # creates the buffers (the first step is not fused)
        opt_arms[f"optimizer_{impl}"] = lambda opt=opt, grads=grads: opt.step(grads)
    cases.append((f"deepkd_optimizer.step, {numel / 1e6:.2f} M params", opt_arms, "optimizer_auto",
                  ["optimizer_reference"]))
    return cases


# ---- driver ---------------------------------------------------------------------------------------------------
def run(device: str = "cpu", repeats: int = 15, warmup: int = 3, quick: bool = False) -> list[dict[str, Any]]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible")
    rows = []
    with torch.no_grad():
        for name, arms, kernel, baselines in (lowbit_cases(dev, quick) + integer_cases(dev, quick)
                                              + momentum_cases(dev, quick)):
            stats = paired_benchmark(arms, warmup=warmup, repeats=repeats, sync=_sync(dev))
            rows.append({"case": name, "kernel": kernel, "device": device,
                         "ms": {arm: median_ci(s) for arm, s in stats.items()},
                         "ratio": {base: ratio_ci(stats, kernel, base) for base in baselines}})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | kernel: median ms [95 % CI] | baseline: median ms [95 % CI] | kernel / baseline [95 % CI] |",
             "|---|---|---|---|"]
    for row in rows:
        for base, r in row["ratio"].items():
            lines.append(f"| {row['case']} | {row['kernel']}: {fmt_ci(row['ms'][row['kernel']], 'median')} | "
                         f"{base}: {fmt_ci(row['ms'][base], 'median')} | {fmt_ci(r, 'ratio')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrepro.kernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test of the benchmark)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        rows = run(args.device, args.repeats, args.warmup, args.quick)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "warmup": args.warmup, "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    print(f"# effrepro.kernels bench ({meta['device_name']}, {meta['threads']} thread(s), {args.repeats} repeats)")
    print(markdown(rows), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
