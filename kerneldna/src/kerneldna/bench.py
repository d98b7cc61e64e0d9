"""``kerneldna bench``: baseline vs KernelDNA (folded) vs CondConv vs ODConv, interleaved in one process.

For each batch size all variants run round-robin (``effrepro.bench.paired_benchmark``: warm-up excluded,
order rotated every round, medians), so machine drift hits them alike; we report latency, throughput,
ratios against the baseline and against the static net of KernelDNA's depth, plus parameters and MACs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from effrepro.bench import count_flops, count_params, cuda_sync, paired_benchmark
from effrepro.errors import UsageError
from torch import nn

from kerneldna.kerneldna import fold_model
from kerneldna.models import build_model

DEFAULT_VARIANTS = ("baseline", "samedepth", "kerneldna", "condconv", "odconv")


@dataclass
class BenchConfig:
    arch: str = "resnet18"
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    image_size: int = 224
    image_width: int | None = None  # default: square
    in_chans: int = 3
    num_classes: int = 1000
    warmup: int = 2
    repeats: int = 7
    fold: bool = True
    device: str = "auto"
    mini_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    mini_stem_stride: int = 1


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def bench_models(cfg: BenchConfig) -> dict[str, nn.Module]:
    """Eval-mode models of every variant; KernelDNA's static kernels folded (its deployment form)."""
    variants = [v for v in cfg.variants if not (v == "samedepth" and cfg.arch not in ("resnet18", "mini"))]
    extra: dict[str, Any] = {}
    if cfg.arch == "mini":
        extra = {"widths": tuple(cfg.mini_widths), "stem_stride": cfg.mini_stem_stride}
    models = {}
    for variant in variants:
        model = build_model(cfg.arch, variant, num_classes=cfg.num_classes, in_chans=cfg.in_chans, **extra).eval()
        models[variant] = fold_model(model) if cfg.fold else model
    return models


def _infer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every variant at every batch size; returns ``{"rows": [...], "config": ..., "device": ...}``."""
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise UsageError("batch sizes must be positive integers")
    device = _device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = {k: m.to(device) for k, m in bench_models(cfg).items()}
    shape = (cfg.in_chans, cfg.image_size, cfg.image_width or cfg.image_size)
    with torch.device("meta"):  # counting on meta twins costs no compute
        probe = torch.empty(1, *shape)
        counts = {k: (count_params(m), count_flops(m, probe) // 2) for k, m in bench_models(cfg).items()}
    rows = []
    for batch in cfg.batch_sizes:
        x = torch.randn(batch, *shape, device=device)
        fns = {k: (lambda m=m, x=x: _infer(m, x)) for k, m in models.items()}
        stats = paired_benchmark(fns, warmup=cfg.warmup, repeats=cfg.repeats,
                                 sync=cuda_sync if device.type == "cuda" else None)
        base = stats["baseline"].median
        for variant, st in stats.items():
            params, macs = counts[variant]
            rows.append({
                "variant": variant, "batch": batch, "latency_ms": 1e3 * st.median,
                "latency_min_ms": 1e3 * st.min, "latency_max_ms": 1e3 * st.max,
                "throughput": batch / st.median, "throughput_vs_baseline": base / st.median,
                "throughput_vs_samedepth": (stats["samedepth"].median / st.median) if "samedepth" in stats else None,
                "params": params, "macs": macs, "repeats": len(st.samples),
            })
    return {"rows": rows, "config": vars(cfg), "device": str(device), "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}  # a busy machine widens every interval: say so


def ratio_of(result: dict[str, Any], num: str, den: str, batch: int) -> float:
    """Throughput ratio ``num / den`` at ``batch`` from a :func:`run_bench` result."""
    by = {(r["variant"], r["batch"]): r for r in result["rows"]}
    return by[(num, batch)]["throughput"] / by[(den, batch)]["throughput"]


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| variant | batch | latency ms (min-max) | img/s | vs baseline | vs same-depth | params | MACs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        same = "–" if r["throughput_vs_samedepth"] is None else f"{r['throughput_vs_samedepth']:.3f}"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['latency_ms']:.2f} ({r['latency_min_ms']:.2f}-"
                     f"{r['latency_max_ms']:.2f}) | {r['throughput']:.1f} | {r['throughput_vs_baseline']:.3f} | "
                     f"{same} | {r['params']:,} | {r['macs']:,} |")
    return "\n".join(lines)


def write_bench(result: dict[str, Any], out_dir: str | Path, name: str = "bench") -> Path:
    from effrepro.report import atomic_write_text

    out = Path(out_dir)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    path = out / f"{name}.md"
    atomic_write_text(path, f"# kerneldna bench ({result['config']['arch']}, {result['device']}, "
                      f"{result['threads']} threads, load average {result['load_average_1min']:.1f})\n\n"
                      + markdown_table(result) + "\n")
    return path


def parse_ints(text: str | Sequence[int]) -> list[int]:
    if not isinstance(text, str):
        return [int(t) for t in text]
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated integers, got {text!r}") from None
