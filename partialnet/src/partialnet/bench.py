"""``partialnet bench``: PartialNet-Tx against timm's FasterNet-Tx in the same process, both in deploy form,
interleaved repeats, medians and paired ratios (``effrepro.bench``).

CPU: latency at batch 1 with a fixed thread count (FasterNet's protocol: one thread). GPU: throughput at the
largest batch (of those tried) that fits both models, fp16 autocast optional.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import timm
import torch
from effrepro.bench import TimingStats, count_flops, count_params, cuda_sync, paired_benchmark
from effrepro.errors import UsageError
from torch import nn

import partialnet.models  # noqa: F401
from partialnet.data import check_image_size
from partialnet.deploy import deploy_copy
from partialnet.models import VARIANTS

GPU_BATCHES = (2048, 1024, 512, 256, 128, 64)


def parse_variants(text: str) -> list[str]:
    variants = [v.strip().lower().removeprefix("partialnet_") for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UsageError(f"unknown variant {', '.join(unknown) or text!r}; use a comma list of {', '.join(VARIANTS)}")
    return variants


def paired_ratio_spread(stats: dict[str, TimingStats], num: str, den: str) -> dict[str, float]:
    """Per-round ratios ``num_r / den_r`` (the rounds are interleaved, so each pair shares machine state):
    median and inter-quartile range -- the spread to report beside the ratio of medians."""
    ratios = sorted(a / b for a, b in zip(stats[num].samples, stats[den].samples, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"ratio_of_medians": stats[num].median / stats[den].median, "paired_median": statistics.median(ratios),
            "paired_q25": quartiles[0], "paired_q75": quartiles[2], "paired_min": ratios[0], "paired_max": ratios[-1]}


def _runner(model: nn.Module, x: torch.Tensor, half: bool) -> Callable[[], object]:
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=half and x.is_cuda)

    def run() -> object:
        with torch.inference_mode(), autocast:
            return model(x)
    return run


def deploy_pair(variant: str, device: torch.device, num_classes: int = 1000, **kwargs: Any) -> dict[str, nn.Module]:
    return {f"{family}_{variant}": deploy_copy(timm.create_model(f"{family}_{variant}", num_classes=num_classes,
                                                                  **kwargs)).to(device)
            for family in ("partialnet", "fasternet")}


def _fits(models: dict[str, nn.Module], batch: int, size: int, device: torch.device, half: bool) -> bool:
    try:
        x = torch.randn(batch, 3, size, size, device=device)
        for model in models.values():
            _runner(model, x, half)()
        cuda_sync()
        return True
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False


def benchmark(variants: list[str], device: str = "auto", threads: int = 1, repeats: int = 31, warmup: int = 5,
              image_size: int = 224, batch: int | None = None, half: bool = False) -> dict[str, Any]:
    """One interleaved run over every model of ``variants``; returns per-model timings and per-variant ratios."""
    check_image_size(image_size)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available; use --device cpu")
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    models: dict[str, nn.Module] = {}
    for variant in variants:
        models.update(deploy_pair(variant, dev))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        candidates = (batch,) if batch else GPU_BATCHES
        batch = next((b for b in candidates if _fits(models, b, image_size, dev, half)), None)
        if batch is None:
            raise UsageError(f"no batch size in {candidates} fits on the GPU; pass a smaller --batch")
    else:
        batch = batch or 1
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    fns = {name: _runner(model, x, half) for name, model in models.items()}
    stats = paired_benchmark(fns, warmup=warmup, repeats=repeats, sync=cuda_sync if dev.type == "cuda" else None)
    rows = []
    for variant in variants:
        ours, base = f"partialnet_{variant}", f"fasternet_{variant}"
        spread = paired_ratio_spread(stats, ours, base)
        rows.append({"variant": variant, "partialnet_ms": 1e3 * stats[ours].median,
                     "fasternet_ms": 1e3 * stats[base].median,
                     "partialnet_imgs_per_s": batch / stats[ours].median,
                     "fasternet_imgs_per_s": batch / stats[base].median,
                     "latency_ratio": spread["ratio_of_medians"], "throughput_ratio": 1 / spread["ratio_of_medians"],
                     **spread})
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "threads": threads,
            "batch": batch, "image_size": image_size, "half": half, "repeats": repeats, "warmup": warmup,
            "rows": rows, "timings": {name: s.as_dict() for name, s in stats.items()}}


def complexity_table(variants: list[str] | None = None, image_size: int = 224) -> list[dict[str, Any]]:
    """Parameters and FLOPs (``torch.utils.flop_counter``, 2 per MAC) of PartialNet vs FasterNet variants,
    counted on the meta device (shapes only)."""
    rows = []
    for variant in variants or list(VARIANTS):
        with torch.device("meta"):
            ours, base = (timm.create_model(f"{f}_{variant}") for f in ("partialnet", "fasternet"))
            x = torch.empty(1, 3, image_size, image_size)
        row = {"variant": variant, "partialnet_params": count_params(ours), "fasternet_params": count_params(base),
               "partialnet_flops": count_flops(ours, x), "fasternet_flops": count_flops(base, x)}
        row["params_ratio"] = row["partialnet_params"] / row["fasternet_params"]
        row["flops_ratio"] = row["partialnet_flops"] / row["fasternet_flops"]
        rows.append(row)
    return rows


def format_bench(result: dict[str, Any]) -> str:
    cpu = result["device"] == "cpu"
    head = (f"{'CPU latency' if cpu else 'GPU throughput'} ({result['device']}, batch {result['batch']}, "
            f"{result['image_size']}px, {result['threads']} thread(s), deploy forms, median of {result['repeats']})")
    lines = [head, "| variant | PartialNet | FasterNet | ratio | paired IQR |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        if cpu:
            cells = (f"{row['partialnet_ms']:.2f} ms", f"{row['fasternet_ms']:.2f} ms", f"{row['latency_ratio']:.3f}",
                     f"{row['paired_q25']:.3f}-{row['paired_q75']:.3f}")
        else:
            cells = (f"{row['partialnet_imgs_per_s']:.0f} img/s", f"{row['fasternet_imgs_per_s']:.0f} img/s",
                     f"{row['throughput_ratio']:.3f}", f"{1 / row['paired_q75']:.3f}-{1 / row['paired_q25']:.3f}")
        lines.append(f"| {row['variant'].upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
