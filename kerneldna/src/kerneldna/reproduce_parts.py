"""The pieces of ``kerneldna reproduce`` that are not the experiment itself: zoo counts against the official code,
the interleaved throughput benchmark with per-round ratios, the CKA summary, tables and plots."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from effrepro import stats
from effrepro.bench import count_flops, count_params, cuda_sync, paired_benchmark
from effrepro.report import save_figure

from kerneldna.bench import BenchConfig, bench_models
from kerneldna.cka import conv_names, layer_cka_matrix, plot_cka
from kerneldna.data import small_dataset
from kerneldna.models import OFFICIAL_COUNTS, build_model
from kerneldna.train import TrainConfig, train

ZOO_ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_050")
INPUT_SHAPES = {"mnist100": (1, 28, 56), "clutter": (3, 32, 32), "clutter16": (3, 16, 16)}

PAPER_TABLE = """\
The paper's accuracy tables (arXiv 2503.23379) could not be read offline; its README claims *"state-of-the-art
accuracy-efficiency among dynamic convolutions"* and *"maintains >90 % of baseline throughput while improving
accuracy"*. The structural numbers below are those of the official code, which our builds reproduce.

| model | params | MACs (224²) | Δparams | ΔMACs |
|---|---|---|---|---|
| ResNet-18 / KernelDNA | 11,689,512 / 9,240,798 | 1.814 G / 2.277 G | −20.9 % | +25.5 % |
| ResNet-50 / KernelDNA | 25,557,032 / 22,778,060 | 4.089 G / 4.308 G | −10.9 % | +5.3 % |
| MobileNetV2 1.0x / KernelDNA | 3,504,872 / 3,136,840 | 300.8 M / 300.9 M | −10.5 % | +0.05 % |
| MobileNetV2 0.5x / KernelDNA | 1,968,680 / 1,878,232 | 97.13 M / 97.17 M | −4.6 % | +0.04 % |
"""


def zoo_counts() -> dict[str, dict[str, int]]:
    """Unique params and MACs (224², batch 1) of every official build, counted on the meta device."""
    counts = {}
    for arch, variant in OFFICIAL_COUNTS:
        with torch.device("meta"):
            model = build_model(arch, variant)
            counts[f"{arch}/{variant}"] = {"params": count_params(model),
                                           "macs": count_flops(model, torch.empty(1, 3, 224, 224)) // 2}
    return counts


def zoo_parity(counts: dict[str, dict[str, int]]) -> tuple[int, dict[str, Any]]:
    per = {f"{a}/{v}": {**counts[f"{a}/{v}"], "official": list(ref)} for (a, v), ref in OFFICIAL_COUNTS.items()}
    matches = sum(int(p["params"] == p["official"][0]) + int(p["macs"] == p["official"][1]) for p in per.values())
    return matches, per


def mini_sizes(widths: tuple[int, ...], stem_stride: int, task: str, arms: tuple[str, ...]) -> dict[str, Any]:
    """Params and MACs of the mini nets on one task's input."""
    shape = INPUT_SHAPES[task]
    classes = 100 if task == "mnist100" else 10
    sizes = {}
    for arm in arms:
        with torch.device("meta"):
            model = build_model("mini", arm, num_classes=classes, in_chans=shape[0], widths=tuple(widths),
                                stem_stride=stem_stride).eval()  # eval: the deployment form's MACs
            sizes[arm] = {"params": count_params(model), "macs": count_flops(model, torch.empty(1, *shape)) // 2}
    return sizes


def train_row(cfg: TrainConfig, curve: bool, cka_images: int | None, resume: bool = True) -> dict[str, Any]:
    """One mini training (a module-level job for :func:`effrepro.reproduce.run_jobs`): test top-1, steps, the
    per-epoch curve when ``curve`` and, with ``cka_images``, the trained model's CKA summary."""
    start = time.perf_counter()
    result = train(cfg, resume=resume)
    row: dict[str, Any] = {"top1": result["final"]["eval_top1"], "seconds": time.perf_counter() - start,
                           "steps": result["global_step"]}
    if curve:
        row["curve"] = [h["eval_top1"] for h in result["history"]]
    if cka_images:
        row["cka"] = cka_summary(result["model"], cfg.dataset, cka_images)
    return row


def cka_summary(model: torch.nn.Module, task: str, n_images: int) -> dict[str, Any]:
    """Linear CKA between the trained model's 3x3 convs, and the mean CKA of *adjacent* conv pairs inside a stage
    and across a stage boundary: at equal layer distance, so a map that only decays with distance scores 0."""
    images, _ = small_dataset(task, "val", n_images, seed=1)
    names = conv_names(model, ("layer1", "layer2", "layer3"))
    matrix = layer_cka_matrix(model, images, names)
    stages = [n.split(".")[0] for n in names]
    within = [float(matrix[i, i + 1]) for i in range(len(names) - 1) if stages[i] == stages[i + 1]]
    across = [float(matrix[i, i + 1]) for i in range(len(names) - 1) if stages[i] != stages[i + 1]]
    return {"names": names, "matrix": matrix.tolist(), "adjacent_within": statistics.fmean(within),
            "adjacent_across": statistics.fmean(across), "pairs": [len(within), len(across)]}


def throughput_rounds(arch: str, batch: int, repeats: int, warmup: int, image_size: int, in_chans: int = 3,
                      num_classes: int = 1000, widths: tuple[int, ...] = (16, 32, 64), stem_stride: int = 1,
                      device: str = "cpu") -> dict[str, Any]:
    """Every variant (KernelDNA folded) in one interleaved benchmark: per-variant medians and per-round times, so
    that each round's throughput ratio compares two models timed back to back on the same machine state."""
    cfg = BenchConfig(arch=arch, image_size=image_size, in_chans=in_chans, num_classes=num_classes,
                      mini_widths=list(widths), mini_stem_stride=stem_stride, device=device)
    dev = torch.device(device)
    models = {k: m.to(dev) for k, m in bench_models(cfg).items()}
    x = torch.randn(batch, in_chans, image_size, image_size, device=dev)

    def runner(model: torch.nn.Module) -> Any:
        def call() -> object:
            with torch.inference_mode():
                return model(x)
        return call

    timings = paired_benchmark({k: runner(m) for k, m in models.items()}, warmup=warmup, repeats=repeats,
                               sync=cuda_sync if dev.type == "cuda" else None)
    return {"arch": arch, "batch": batch, "repeats": repeats, "image_size": image_size,
            "threads": torch.get_num_threads(), "device": str(dev),
            "median_ms": {k: 1e3 * t.median for k, t in timings.items()},
            "samples": {k: list(t.samples) for k, t in timings.items()}}


def throughput_ratio(bench: dict[str, Any], num: str, den: str, **details: Any) -> stats.Estimate:
    """Throughput ``num / den``: per round ``time(den) / time(num)``, median over rounds, bootstrap interval."""
    rounds = [b / a for a, b in zip(bench["samples"][num], bench["samples"][den], strict=True)]
    return stats.bootstrap(rounds, np.median, estimator="median of per-round throughput ratios",
                           batch=bench["batch"], threads=bench["threads"], **details)


def accuracy_table(top1: dict[str, dict[str, list[float]]], sizes: dict[str, dict[str, Any]],
                   ref: str = "baseline") -> str:
    """Per task and arm: mean top-1 and the paired difference against ``ref`` with its 95 % t-interval."""
    lines = [f"| task | arm | top-1 % (mean, sd) | vs {ref}, paired (95 % CI) | params | MACs |",
             "|---|---|---|---|---|---|"]
    for task, arms in top1.items():
        for arm, values in arms.items():
            est = stats.mean_ci(values)
            sd = est.details.get("sd", 0.0)
            diff = "–"
            if arm != ref:
                d = stats.paired_diff(values, arms[ref])
                diff = f"{d.value:+.2f} ({d.ci[0]:+.2f}, {d.ci[1]:+.2f})"
            s = sizes[task][arm]
            lines.append(f"| {task} | {arm} | {est.value:.2f} ({sd:.2f}) | {diff} | {s['params']:,} "
                         f"| {s['macs']:,} |")
    return "\n".join(lines)


def bench_table(bench: dict[str, Any]) -> str:
    base = bench["median_ms"]["baseline"]
    lines = [f"{bench['arch']}, batch {bench['batch']}, {bench['image_size']} px, {bench['threads']} thread(s), "
             f"{bench['repeats']} interleaved rounds, KernelDNA folded (medians):", "",
             "| variant | latency ms | img/s | throughput vs baseline |", "|---|---|---|---|"]
    for k, ms in bench["median_ms"].items():
        lines.append(f"| {k} | {ms:.2f} | {1e3 * bench['batch'] / ms:.1f} | {base / ms:.3f} |")
    return "\n".join(lines)


def plot_accuracy(top1: dict[str, dict[str, list[float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(top1), figsize=(4.2 * len(top1), 3.4), squeeze=False)
    for ax, (task, arms) in zip(axes[0], top1.items(), strict=True):
        names = list(arms)
        for i, name in enumerate(names):
            ax.scatter([i] * len(arms[name]), arms[name], s=10, alpha=0.6, color="#4c72b0")
            ax.plot([i - 0.3, i + 0.3], [statistics.fmean(arms[name])] * 2, color="k")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(f"{task}: test top-1 % per seed (line: mean)", fontsize=9)
    return save_figure(fig, path)


def plot_curves(curves: dict[str, list[float]], task: str, path: Path) -> Path:
    """Test top-1 after every epoch, one line per arm (the first seed): where each arm's training levels off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for arm, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=arm)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 %")
    ax.set_title(f"{task}: test top-1 per epoch (first seed; cosine to 0)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_cka_matrix(summary: dict[str, Any], task: str, path: Path) -> Path:
    return plot_cka(torch.tensor(summary["matrix"]), summary["names"], path,
                    f"linear CKA between the 3x3 convs of a trained baseline ({task})")
