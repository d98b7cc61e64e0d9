"""The pieces of ``partialnet reproduce`` that are not the experiment itself: the miniature models and their
recipe, the paired latency benchmark with per-round ratios, counts against the official code, plots and tables."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from effrepro import stats
from effrepro.bench import count_flops, count_params, cuda_sync, paired_benchmark
from effrepro.report import save_figure

from partialnet.bench import deploy_pair
from partialnet.deploy import fusion_max_abs_diff
from partialnet.figures import FASTERNET_TOP1, OFFICIAL_COMMIT, OFFICIAL_COUNTS
from partialnet.train import TrainConfig, train

# The T2 pair in miniature, for 32x64 MNIST-100 images: PartialNet-T2 (width 64, depths 2-2-6-4) vs FasterNet-T2
# (width 96, depths 1-2-8-2) at a quarter width and about half depth, keeping T2's relation -- PartialNet 2/3 of
# FasterNet's width, a deeper stage 4 (2 blocks vs 1) and a shallower stage 3 (3 vs 4); ReLU as both T2s. 2x2/2
# embedding instead of 4x4/4, 1 input channel, 100 classes, a 256-wide head instead of 1280.
MINI_COMMON = {"in_chans": 1, "patch_size": 2, "merge_size": 2, "feature_dim": 256}
MINI_MODELS = {
    "partialnet": ("partialnet_t2", {**MINI_COMMON, "embed_dim": 16, "depths": (1, 1, 3, 2)}),  # T2: 64, 2-2-6-4
    "fasternet": ("fasternet_t2", {**MINI_COMMON, "embed_dim": 24, "depths": (1, 1, 4, 1)}),  # T2: 96, 1-2-8-2
}
MINI_INPUT = (1, 1, 32, 64)


def mini_train_config(family: str, seed: int, plan: Any, out_dir: Path) -> TrainConfig:
    """The official T0 recipe (AdamW, warm-up + cosine, label smoothing 0.1, no RandAugment, random erasing or drop
    path: the lightest of the official recipes, suited to a model this small) compressed to a few epochs with a
    per-step schedule. No mixup / cutmix: MNIST-100 labels are composite
    (10 x left digit + right digit), so a mixed image has no meaningful mixed label."""
    name, kwargs = MINI_MODELS[family]
    return TrainConfig(model=name, model_kwargs=dict(kwargs), dataset="mnist100", out_dir=str(out_dir),
                       epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr, lr_base_batch=plan.batch_size,
                       weight_decay=0.005, warmup_epochs=0.3, min_lr=1e-5, sched_unit="step", amp=False,
                       mixup=0.0, cutmix=0.0, smoothing=0.1, drop_path_rate=0.0, seed=seed, workers=0,
                       mnist100_train_size=plan.train_size, mnist100_test_size=plan.test_size, log_every=10_000)


def cache_key(cfg: TrainConfig) -> dict[str, Any]:
    """A mini run's cache key: its config, less fields at their "off" value that were added after runs were cached."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if not (k == "splits" and v is None)}


def _train_history(cfg: TrainConfig, resume: bool) -> list[dict[str, Any]]:
    """One miniature run's per-epoch history (a worker process's job)."""
    return train(cfg, resume=resume, progress=False)["history"]


def train_minis(ctx: Any, configs: dict[str, TrainConfig], workers: int = 1,
                done: Callable[[str, list[dict[str, Any]], float], None] | None = None,
                keys: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every named miniature run's per-epoch history, cached as ``runs/<name>.json`` keyed by its config and
    ``keys[name]`` (so the same name and config from another stage, or a run with another number of workers,
    reuses it). The runs not cached yet go to ``workers`` processes of one thread each when ``workers > 1``
    (:meth:`effrepro.reproduce.Context.cached_jobs`), else run here in order; ``done(name, history, seconds)`` is
    called once per run as it finishes or is reused."""
    extra = keys or {}
    key = {name: {**cache_key(cfg), **extra.get(name, {})} for name, cfg in configs.items()}
    jobs = {name: (cfg, ctx.resume) for name, cfg in configs.items()}
    histories: dict[str, Any] = {}
    for name, history, seconds in ctx.cached_jobs(_train_history, jobs, {name: name for name in jobs}, key, workers):
        histories[name] = history
        if done is not None:
            done(name, history, seconds)
    return {name: histories[name] for name in configs}


def mini_complexity() -> dict[str, dict[str, int]]:
    rows = {}
    for family, (name, kwargs) in MINI_MODELS.items():
        model = timm.create_model(name, num_classes=100, **kwargs).eval()
        rows[family] = {"params": count_params(model), "flops": count_flops(model, torch.zeros(MINI_INPUT))}
    return rows


def mini_notes(plan: Any, sizes: dict[str, Any]) -> str:
    """The report's notes on the miniature pair, its budget and the latency intervals."""
    (pn_name, pn), (fn_name, fn) = (MINI_MODELS[f] for f in ("partialnet", "fasternet"))
    size = {f: f"{sizes[f]['params'] / 1e3:.0f} k params, {sizes[f]['flops'] / 2e6:.2f} MMACs" for f in sizes}
    return "\n".join([
        "- Miniature: MNIST-100 (28x56 real digit pairs, 100 classes) padded to 32x64; 2x2/2 embedding (ImageNet: "
        f"4x4/4). PartialNet-T2-mini: width {pn['embed_dim']}, depths {pn['depths']}, {size['partialnet']}; "
        f"FasterNet-T2-mini: width {fn['embed_dim']}, depths {fn['depths']}, {size['fasternet']} (T2's relation: "
        "2/3 of the width, a deeper stage 4).",
        f"- Budget: {len(plan.seeds)} seeds x 2 models, {plan.epochs} epochs x {plan.train_size} training images, "
        f"batch {plan.batch_size}, test on {plan.test_size} MNIST-100 test pairs; the official T0 recipe compressed "
        f"(AdamW wd 0.005, lr {plan.lr} with a 0.3-epoch warm-up and per-step cosine, label smoothing 0.1, +-2 px "
        "shifts), no mixup / cutmix (composite labels). The data order per seed is the same for both models.",
        "- Latency intervals: percentile bootstrap of the median over the interleaved rounds (each round times both "
        "models back to back). The host is shared: absolute times are noisy, per-round ratios much less so.",
    ])


def official_parity(table: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """How many of the 12 parameter / FLOP counts of PartialNet-T0..L equal the official code's."""
    rows = {r["variant"]: r for r in table}
    per = {v: {"params": rows[v]["partialnet_params"], "flops": rows[v]["partialnet_flops"], "official": ref}
           for v, ref in OFFICIAL_COUNTS.items()}
    matches = sum(int(p["params"] == p["official"]["params"]) + int(p["flops"] == p["official"]["flops"])
                  for p in per.values())
    return matches, per


def fusion_checks(variants: tuple[str, ...]) -> dict[str, float]:
    """float64 ``max |deploy - training form|`` with randomised BN statistics (224x224 for the real variants)."""
    out = {f"partialnet_{v}": fusion_max_abs_diff(timm.create_model(f"partialnet_{v}"), (1, 3, 224, 224))
           for v in variants}
    name, kwargs = MINI_MODELS["partialnet"]
    out["partialnet_t2_mini"] = fusion_max_abs_diff(timm.create_model(name, num_classes=100, **kwargs), MINI_INPUT)
    return out


def paired_latency(variants: tuple[str, ...], repeats: int, warmup: int, device: str = "cpu",
                   batch: int = 1) -> dict[str, Any]:
    """Deploy-form PartialNet-<v> and FasterNet-<v> at 224x224 in one interleaved benchmark (order rotated each
    round). Returns per variant the medians and the per-round latency ratios PartialNet / FasterNet: each round
    runs both models back to back on the same machine state, so the round is the unit of replication."""
    dev = torch.device(device)
    models: dict[str, torch.nn.Module] = {}
    for variant in variants:
        models.update(deploy_pair(variant, dev))
    x = torch.randn(batch, 3, 224, 224, device=dev)

    def runner(model: torch.nn.Module) -> Any:
        def call() -> object:
            with torch.inference_mode():
                return model(x)
        return call

    timings = paired_benchmark({n: runner(m) for n, m in models.items()}, warmup=warmup, repeats=repeats,
                               sync=cuda_sync if dev.type == "cuda" else None)
    rows = {}
    for v in variants:
        ours, base = timings[f"partialnet_{v}"], timings[f"fasternet_{v}"]
        rows[v] = {"partialnet_ms": 1e3 * ours.median, "fasternet_ms": 1e3 * base.median,
                   "round_ratios": [a / b for a, b in zip(ours.samples, base.samples, strict=True)]}
    return {"device": str(dev), "batch": batch, "repeats": repeats, "warmup": warmup,
            "threads": torch.get_num_threads(), "rows": rows}


def ratio_estimate(round_ratios: list[float], invert: bool = False, **details: Any) -> stats.Estimate:
    """Median of the per-round ratios with a percentile bootstrap over rounds (robust to load spikes)."""
    values = [1 / r for r in round_ratios] if invert else list(round_ratios)
    return stats.bootstrap(values, np.median, estimator="median of per-round ratios", **details)


def plot_accuracy(histories: dict[str, dict[int, list[dict[str, Any]]]], path: Path) -> Path:
    """Test top-1 per epoch of each arm (keys are the legend labels): the mean over seeds and the min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for family, runs in histories.items():
        curves = list(runs.values())
        epochs = [row["epoch"] for row in curves[0]]
        values = [[run[i]["eval_top1"] for run in curves] for i in range(len(epochs))]
        ax.plot(epochs, [statistics.fmean(v) for v in values], marker="o", label=family)
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
    ax.set(xlabel="epoch", ylabel="MNIST-100 test top-1 (%)", title=f"{len(curves)} seeds, mean and min-max")
    ax.legend()
    return save_figure(fig, path)


def plot_latency(bench: dict[str, Any], table: list[dict[str, Any]], paper_ratio: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(bench["rows"])
    ax1.boxplot([bench["rows"][v]["round_ratios"] for v in names])
    ax1.set_xticks(range(1, len(names) + 1), [v.upper() for v in names])
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.axhline(paper_ratio, color="r", ls="--", lw=0.8, label=f"paper T2 ({paper_ratio})")
    ax1.set(ylabel="CPU latency PartialNet / FasterNet", title=f"per-round ratios, batch {bench['batch']}, 224 px")
    ax1.legend()
    width = 0.38
    xs = range(len(table))
    ax2.bar([x - width / 2 for x in xs], [r["params_ratio"] for r in table], width, label="params")
    ax2.bar([x + width / 2 for x in xs], [r["flops_ratio"] for r in table], width, label="FLOPs")
    ax2.set_xticks(list(xs), [r["variant"].upper() for r in table])
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set(ylabel="PartialNet / FasterNet", title="official configs")
    ax2.legend()
    return save_figure(fig, path)


def paper_table() -> str:
    lines = ["Headline (PATNet abstract, arXiv 2503.03148): PATNet-T2 **+1.3 %** ImageNet top-1 over FasterNet-T2, "
             "**1.25x** GPU throughput, **0.76x** CPU latency. Per-variant PartialNet accuracies were not available "
             "offline and are not quoted.", "",
             f"| variant | PartialNet params (official code @ {OFFICIAL_COMMIT}) | PartialNet GMACs (224²) "
             "| FasterNet top-1 (released checkpoint) |", "|---|---|---|---|"]
    for v, counts in OFFICIAL_COUNTS.items():
        lines.append(f"| {v.upper()} | {counts['params'] / 1e6:.2f} M | {counts['flops'] / 2e9:.3f} "
                     f"| {FASTERNET_TOP1[v]:.2f} |")
    return "\n".join(lines)


def latency_table(bench: dict[str, Any]) -> str:
    lines = [f"CPU latency, deploy forms, batch {bench['batch']}, 224x224, {bench['threads']} thread(s), "
             f"{bench['repeats']} interleaved rounds after {bench['warmup']} warm-up calls (medians):", "",
             "| variant | PartialNet ms | FasterNet ms | per-round ratio: median (min-max) |", "|---|---|---|---|"]
    for v, row in bench["rows"].items():
        r = row["round_ratios"]
        lines.append(f"| {v.upper()} | {row['partialnet_ms']:.1f} | {row['fasternet_ms']:.1f} "
                     f"| {statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f}) |")
    return "\n".join(lines)
