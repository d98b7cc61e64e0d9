"""``partialnet reproduce``: the paper's headline claims -- PartialNet beats FasterNet in accuracy at fewer
parameters / FLOPs and lower latency -- measured in miniature on CPU (``smoke``) or with the ImageNet recipe
(``full``). Writes ``claims.json``, ``report.md``, ``metrics.jsonl``, plots and ``runs/`` checkpoints.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from effrepro.bench import count_flops, count_params
from effrepro.errors import UsageError
from effrepro.mm.miniature import HEADS_TEXT, parse_stages
from effrepro.report import Claim, claims_table, results_dir, save_figure, write_claims, write_report
from effrepro.train import MetricsLogger

from partialnet.bench import benchmark, complexity_table
from partialnet.deploy import fusion_max_abs_diff
from partialnet.figures import FASTERNET_TOP1, OFFICIAL_COMMIT, OFFICIAL_COUNTS, PAPER_T2
from partialnet.train import TrainConfig, load_train_config, recipe, train

# PartialNet-T0 and FasterNet-T0 at half width and half depth in the deep stages, for 32x64 MNIST-100 images
# (2x2/2 embedding instead of 4x4/4, 1 input channel, 100 classes, a 256-wide head instead of 1280).
MINI_COMMON = {"depths": (1, 1, 4, 1), "in_chans": 1, "patch_size": 2, "merge_size": 2, "feature_dim": 256}
MINI_MODELS = {
    "partialnet": ("partialnet_t0", {**MINI_COMMON, "embed_dim": 16}),  # T0: 32
    "fasternet": ("fasternet_t0", {**MINI_COMMON, "embed_dim": 20}),  # T0: 40
}
MINI_INPUT = (1, 1, 32, 64)


@dataclass(frozen=True)
class SmokeBudget:
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    train_size: int = 12288
    test_size: int = 5000
    batch_size: int = 128
    bench_variants: tuple[str, ...] = ("t0", "t1", "t2")
    bench_repeats: int = 31
    bench_warmup: int = 5


TINY = SmokeBudget(seeds=(0, 1), epochs=1, train_size=512, test_size=500, batch_size=64, bench_repeats=3,
                   bench_warmup=1)


def mini_train_config(family: str, seed: int, budget: SmokeBudget, out_dir: Path) -> TrainConfig:
    """The official T0 recipe (AdamW, warm-up + cosine, label smoothing 0.1, mixup 0.05 / cutmix 1.0, no
    RandAugment, no random erasing, no drop path), compressed to a few epochs: per-step schedule, lr 2e-3."""
    name, kwargs = MINI_MODELS[family]
    return TrainConfig(model=name, model_kwargs=dict(kwargs), dataset="mnist100", out_dir=str(out_dir),
                       epochs=budget.epochs, batch_size=budget.batch_size, lr=2e-3, lr_base_batch=budget.batch_size,
                       weight_decay=0.005, warmup_epochs=0.3, min_lr=1e-5, sched_unit="step", amp=False,
                       mixup=0.05, cutmix=1.0, smoothing=0.1, drop_path_rate=0.0, seed=seed, workers=0,
                       mnist100_train_size=budget.train_size, mnist100_test_size=budget.test_size, log_every=20)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run_mini_training(out: Path, budget: SmokeBudget, log: MetricsLogger) -> dict[str, Any]:
    """Both miniature models, every seed, the same recipe and data order; test top-1 after each epoch."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {family: {} for family in MINI_MODELS}
    for seed in budget.seeds:
        for family in MINI_MODELS:
            cfg = mini_train_config(family, seed, budget, out / "runs" / f"{family}_mini_seed{seed}")
            start = time.perf_counter()
            result = train(cfg, progress=False)
            runs[family][seed] = result["history"]
            final = result["history"][-1]
            log.log(kind="mini_run", family=family, seed=seed, top1=final["eval_top1"], top5=final["eval_top5"],
                    train_loss=final["train_loss"], seconds=time.perf_counter() - start)
            print(f"  {family}-mini seed {seed}: top-1 {final['eval_top1']:.2f}% "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    top1 = {family: [runs[family][s][-1]["eval_top1"] for s in budget.seeds] for family in MINI_MODELS}
    deltas = [a - b for a, b in zip(top1["partialnet"], top1["fasternet"], strict=True)]
    return {"runs": runs, "top1": top1, "deltas": deltas}


def mini_complexity() -> dict[str, Any]:
    rows = {}
    for family, (name, kwargs) in MINI_MODELS.items():
        model = timm.create_model(name, num_classes=100, **kwargs).eval()
        rows[family] = {"params": count_params(model), "flops": count_flops(model, torch.zeros(MINI_INPUT))}
    return rows


def fusion_checks(variants: tuple[str, ...]) -> dict[str, float]:
    """float64 ``max |deploy - training form|`` with randomised BN statistics (224x224 for the real variants)."""
    out = {f"partialnet_{v}": fusion_max_abs_diff(timm.create_model(f"partialnet_{v}"), (1, 3, 224, 224))
           for v in variants}
    name, kwargs = MINI_MODELS["partialnet"]
    out["partialnet_t0_mini"] = fusion_max_abs_diff(timm.create_model(name, num_classes=100, **kwargs), MINI_INPUT)
    return out


# ----------------------------------------------------------------------------------------------------------
# claims, plots, report
# ----------------------------------------------------------------------------------------------------------
def latency_claims(bench: dict[str, Any]) -> list[Claim]:
    claims = []
    for row in bench["rows"]:
        v = row["variant"]
        is_t2 = v == "t2"
        claims.append(Claim(
            id=f"cpu_latency_ratio_{v}", unit="x",
            description=f"CPU latency PartialNet-{v.upper()} / FasterNet-{v.upper()} (224x224, batch 1, "
                        f"{bench['threads']} thread, deploy forms, median of {bench['repeats']} interleaved)",
            paper=PAPER_T2["cpu_latency_ratio"] if is_t2 else None, measured=row["latency_ratio"],
            baseline=f"timm fasternet_{v}", expect="<= 0.80" if is_t2 else "< 1.0",
            details={k: row[k] for k in ("partialnet_ms", "fasternet_ms", "paired_median", "paired_q25",
                                          "paired_q75", "paired_min", "paired_max")}))
    return claims


def complexity_claims(table: list[dict[str, Any]], mini: dict[str, Any]) -> list[Claim]:
    t2 = next(row for row in table if row["variant"] == "t2")
    per_variant = {row["variant"]: {"params_ratio": round(row["params_ratio"], 4),
                                    "flops_ratio": round(row["flops_ratio"], 4)} for row in table}
    mini_ratio = {key: mini["partialnet"][key] / mini["fasternet"][key] for key in ("params", "flops")}
    return [
        Claim(id="params_ratio_t2", description="parameters PartialNet-T2 / FasterNet-T2 (official configs)",
              paper=None, measured=t2["params_ratio"], unit="x", baseline="timm fasternet_t2", expect="< 1.0",
              details={"partialnet": t2["partialnet_params"], "fasternet": t2["fasternet_params"],
                       "all_variants": per_variant, "mini_models": mini_ratio}),
        Claim(id="flops_ratio_t2", description="FLOPs at 224x224 PartialNet-T2 / FasterNet-T2 (official configs)",
              paper=None, measured=t2["flops_ratio"], unit="x", baseline="timm fasternet_t2", expect="< 1.0",
              details={"partialnet": t2["partialnet_flops"], "fasternet": t2["fasternet_flops"],
                       "all_variants": per_variant, "mini_models": mini_ratio}),
    ]


def accuracy_claims(mini: dict[str, Any], budget: SmokeBudget) -> list[Claim]:
    top1, deltas = mini["top1"], mini["deltas"]
    seeds = list(budget.seeds)
    common = {"seeds": seeds, "epochs": budget.epochs, "train_images": budget.train_size,
              "test_images": budget.test_size}
    claims = [
        Claim(id=f"top1_{family}_t0_mini", unit="%", paper=None, measured=_mean(top1[family]),
              description=f"MNIST-100 test top-1 of {family.capitalize()}-T0-mini (mean over seeds)",
              baseline="chance 1 %", expect="> 10",
              details={**common, "per_seed": top1[family], "std": _std(top1[family])})
        for family in MINI_MODELS
    ]
    claims.append(Claim(
        id="top1_delta_t0_mini", unit="points", paper=PAPER_T2["top1_gain"], measured=_mean(deltas),
        description="paired top-1 difference PartialNet-T0-mini - FasterNet-T0-mini on MNIST-100 (same recipe, "
                    "budget, seeds and data order per seed); paper: +1.3 at T2 on ImageNet",
        baseline="FasterNet-T0-mini", expect="> 0",
        details={**common, "per_seed": deltas, "std": _std(deltas), "wins": sum(d > 0 for d in deltas)}))
    return claims


def fusion_claim(diffs: dict[str, float]) -> Claim:
    return Claim(id="fused_max_abs_diff", description="max |deploy form - training form| over PartialNet-T0/T1/T2 "
                 "(224x224) and T0-mini, float64, randomised BN statistics and position biases",
                 paper=None, measured=max(diffs.values()), unit="abs", baseline="training form",
                 expect="<= 1e-9", details=diffs)


def plot_accuracy(mini: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for family, runs in mini["runs"].items():
        curves = list(runs.values())
        epochs = [row["epoch"] for row in curves[0]]
        values = [[run[i]["eval_top1"] for run in curves] for i in range(len(epochs))]
        ax.plot(epochs, [statistics.fmean(v) for v in values], marker="o", label=f"{family}-T0-mini")
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
    ax.set(xlabel="epoch", ylabel="MNIST-100 test top-1 (%)", title="same recipe / budget / seeds (min-max)")
    ax.legend()
    return save_figure(fig, path)


def plot_speed_and_size(bench: dict[str, Any], table: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    rows = bench["rows"]
    names = [r["variant"].upper() for r in rows]
    ratios = [r["latency_ratio"] for r in rows]
    err = [[r["latency_ratio"] - r["paired_q25"] for r in rows], [r["paired_q75"] - r["latency_ratio"] for r in rows]]
    ax1.bar(names, ratios, yerr=[[max(e, 0) for e in err[0]], [max(e, 0) for e in err[1]]], capsize=4)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.axhline(PAPER_T2["cpu_latency_ratio"], color="r", ls="--", lw=0.8, label="paper T2 (0.76)")
    ax1.set(ylabel="CPU latency PartialNet / FasterNet", title="batch 1, 224 px, 1 thread (IQR)")
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


def paper_table(table: list[dict[str, Any]]) -> str:
    lines = ["Headline (PATNet abstract, arXiv 2503.03148): PATNet-T2 **+1.3 %** ImageNet top-1 over FasterNet-T2, "
             "**1.25x** GPU throughput, **0.76x** CPU latency. Per-variant PartialNet accuracies were not available "
             "offline and are not quoted.", "",
             f"| variant | PartialNet params (official cfg @ {OFFICIAL_COMMIT}) | FasterNet params | PartialNet GMACs "
             "| FasterNet GMACs | FasterNet top-1 (released ckpt) |", "|---|---|---|---|---|---|"]
    for row in table:
        v = row["variant"]
        lines.append(f"| {v.upper()} | {OFFICIAL_COUNTS[v]['params'] / 1e6:.2f} M "
                     f"| {row['fasternet_params'] / 1e6:.2f} M | {OFFICIAL_COUNTS[v]['flops'] / 2e9:.3f} "
                     f"| {row['fasternet_flops'] / 2e9:.3f} | {FASTERNET_TOP1[v]:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# det stage: Mask R-CNN with each backbone (effrepro.mm), COCO-format digits (smoke) or COCO 2017 (full)
# ----------------------------------------------------------------------------------------------------------
DET_ARCH = "t0"  # the miniature's backbones: PartialNet-T0 vs FasterNet-T0, random init, every stage trained
DET_MARK = "<!-- det stage -->"


def det_param_claim(details: dict[str, Any], ours: str, base: str) -> Claim:
    arms = details["arms"]
    measured = arms[ours]["backbone_params"] / arms[base]["backbone_params"]
    return Claim(id=f"det_{ours}_backbone_params_ratio", description=f"backbone parameters {ours} / {base} "
                 "(inside Mask R-CNN)", paper=None, measured=measured, unit="x", baseline=base, expect="< 1.0",
                 details={ours: arms[ours]["backbone_params"], base: arms[base]["backbone_params"]})


def det_notes(details: dict[str, Any], seconds: float) -> str:
    b = details["budget"]
    lines = ["| backbone | bbox AP | bbox AP50 | mask AP | backbone params | backbone GFLOPs (128²) "
             "| backbone+FPN latency (ms) |", "|---|---|---|---|---|---|---|"]
    for name, r in details["arms"].items():
        lines.append(f"| {name} | {100 * r['bbox_mAP']:.1f} | {100 * r['bbox_mAP_50']:.1f} | {100 * r['segm_mAP']:.1f} "
                     f"| {r['backbone_params'] / 1e6:.2f} M | {r['backbone_flops'] / 1e9:.3f} "
                     f"| {r['feature_latency_ms']:.1f} |")
    return "\n".join([
        "### Detection and instance segmentation (det stage)", "",
        f"Mask R-CNN + FPN (mmdet 3.3, heads narrowed for the CPU: {HEADS_TEXT}), "
        f"PartialNet-{DET_ARCH.upper()} vs FasterNet-{DET_ARCH.upper()} from random init, same recipe, data and seed: "
        f"COCO-format digits (real MNIST digits on 128x128 canvases, boxes and masks from the digit pixels), "
        f"{b['train_images']} train / {b['val_images']} val images, {b['epochs']} epochs, batch {b['batch_size']}, "
        f"AdamW lr {b['lr']} (FasterNet's detection optimiser), no flip. AP from pycocotools (x100 below; "
        "claims are in 0..1). Latency: backbone+FPN, batch 1, 128x128, interleaved. "
        f"Wall time of the stage: {seconds / 60:.1f} min.", "", *lines])


def run_det(out: Path, tiny: bool, resume: bool = False) -> tuple[list[Claim], str]:
    """PartialNet-T0 vs FasterNet-T0 inside Mask R-CNN on COCO-format digits (the papers' detection table in
    miniature): bbox / mask AP, AP deltas, backbone params / FLOPs / latency ratios."""
    try:
        from effrepro.mm import DetArm, DetBudget, run_detection_miniature

        from partialnet import mm
    except ImportError as exc:
        raise UsageError(f"the det stage needs the OpenMMLab extra (mmengine, mmdet, mmsegmentation): {exc}") from None
    if not resume:
        for old in (out / "runs").glob("det_*"):
            shutil.rmtree(old)
    arms = [DetArm(f"{family}_{DET_ARCH}", mm.backbone(DET_ARCH, family), mm.stage_channels(DET_ARCH, family))
            for family in ("partialnet", "fasternet")]
    started = time.perf_counter()
    claims, details = run_detection_miniature(arms, f"fasternet_{DET_ARCH}", out, out / "coco_digits",
                                              DetBudget.tiny() if tiny else DetBudget())
    seconds = time.perf_counter() - started
    claims.append(det_param_claim(details, f"partialnet_{DET_ARCH}", f"fasternet_{DET_ARCH}"))
    MetricsLogger(out / "metrics.jsonl").log(kind="det", seconds=seconds, **details)
    return claims, det_notes(details, seconds)


def run_det_full(out: Path, coco: str | None, variant: str, checkpoints: list[str] | None) -> tuple[list[Claim], str]:
    """The paper's COCO recipe (Mask R-CNN 1x) for PartialNet-<v> and FasterNet-<v>, initialised from the ImageNet
    checkpoints of the main stage (``runs/<model>/last.pt``) or ``--backbone-checkpoints``."""
    if not coco:
        raise UsageError("the det stage at --scale full trains on COCO 2017: pass --coco /path/to/coco "
                         "(train2017/, val2017/, annotations/instances_{train,val}2017.json)")
    try:
        from effrepro.mm import train_and_evaluate

        from partialnet import mm
    except ImportError as exc:
        raise UsageError(f"the det stage needs the OpenMMLab extra (mmengine, mmdet, mmsegmentation): {exc}") from None
    names = [f"partialnet_{variant}", f"fasternet_{variant}"]
    ckpts = checkpoints or [str(out / "runs" / name / "last.pt") for name in names]
    if len(ckpts) != 2:
        raise UsageError("--backbone-checkpoints takes two paths: PartialNet's,FasterNet's")
    for ckpt in ckpts:
        if not Path(ckpt).is_file():
            raise UsageError(f"ImageNet checkpoint {ckpt} not found: the COCO recipe starts from ImageNet weights; "
                             "run the main stage first or pass --backbone-checkpoints PARTIALNET.pt,FASTERNET.pt")
    configs = {name: mm.coco_config(coco, out / "runs" / f"mask-rcnn_{name}_1x_coco", variant, name.split("_")[0], ckpt)
               for name, ckpt in zip(names, ckpts, strict=True)}
    metrics = {name: train_and_evaluate(cfg) for name, cfg in configs.items()}
    ours, base = (metrics[n] for n in names)
    claims = [Claim(id=f"det_coco_{kind}_ap_delta_{variant}", unit="AP points", paper=None,
                    description=f"COCO val2017 Mask R-CNN 1x {kind} AP PartialNet-{variant.upper()} - "
                                f"FasterNet-{variant.upper()} (same recipe)",
                    measured=100 * (ours[f"coco/{key}_mAP"] - base[f"coco/{key}_mAP"]), baseline=names[1],
                    expect="> 0", details={"partialnet": ours, "fasternet": base})
              for kind, key in (("bbox", "bbox"), ("mask", "segm"))]
    return claims, f"### COCO Mask R-CNN 1x\n\n```\n{json.dumps(metrics, indent=1)}\n```"


def merge_det(out: Path, title: str, paper_md: str, claims: list[Claim], notes: str) -> None:
    """A det-only run: its claims replace the ``det_*`` ones of ``claims.json`` (others kept), its section replaces
    the previous det section of ``report.md``; ``det/report.md`` holds the stage's own report."""
    path = out / "claims.json"
    kept = [c for c in json.loads(path.read_text()) if not c["id"].startswith("det_")] if path.is_file() else []
    write_claims(out, kept + [c.as_dict() for c in claims])
    write_report(out / "det", f"{title}: det stage", paper_md, claims, notes)
    report = out / "report.md"
    section = f"{DET_MARK}\n## Detection (det stage, run on its own)\n\n{claims_table(claims)}\n\n{notes}\n"
    if report.is_file():
        text = report.read_text()
        text = text[: text.index(DET_MARK)] if DET_MARK in text else text + "\n"
        report.write_text(text + section)
    else:
        write_report(out, f"{title}: det stage", paper_md, claims, notes)


# ----------------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------------
SMOKE_TITLE = "PartialNet vs FasterNet: smoke (CPU miniature)"


def run_smoke(out: Path, budget: SmokeBudget, resume: bool = False, stages: tuple[str, ...] = ("main",),
              tiny: bool = False) -> list[Claim]:
    if "main" not in stages:
        claims, notes = run_det(out, tiny, resume)
        merge_det(out, SMOKE_TITLE, paper_table(complexity_table()), claims, notes)
        return claims
    if not resume and (out / "runs").exists():
        shutil.rmtree(out / "runs")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    log = MetricsLogger(out / "metrics.jsonl")
    threads = torch.get_num_threads()  # training uses what the environment gives (OMP_NUM_THREADS)
    started = time.perf_counter()
    print("[1/4] parameters and FLOPs of the official configs and the miniatures", flush=True)
    table, mini_sizes = complexity_table(), mini_complexity()
    for row in table:
        log.log(kind="complexity", **row)
    log.log(kind="mini_complexity", **{f"{f}_{k}": v for f, d in mini_sizes.items() for k, v in d.items()})
    print("[2/4] deploy-form equivalence (float64)", flush=True)
    diffs = fusion_checks(budget.bench_variants)
    log.log(kind="fusion", **diffs)
    print(f"[3/4] MNIST-100: {len(budget.seeds)} seeds x 2 models x {budget.epochs} epochs", flush=True)
    mini = run_mini_training(out, budget, log)
    print(f"[4/4] CPU latency, 224x224, batch 1, 1 thread, {budget.bench_repeats} interleaved repeats", flush=True)
    bench = benchmark(list(budget.bench_variants), device="cpu", threads=1, repeats=budget.bench_repeats,
                      warmup=budget.bench_warmup)
    torch.set_num_threads(threads)
    for row in bench["rows"]:
        log.log(kind="cpu_latency", **row)
    claims = [*accuracy_claims(mini, budget), *complexity_claims(table, mini_sizes), *latency_claims(bench),
              fusion_claim(diffs)]
    plots = [plot_accuracy(mini, out / "mnist100_top1.png"), plot_speed_and_size(bench, table, out / "speed_size.png")]
    notes = smoke_notes(budget, mini_sizes, bench, time.perf_counter() - started, threads)
    if "det" in stages:
        print("[det] Mask R-CNN on COCO-format digits: PartialNet vs FasterNet backbones", flush=True)
        det_claims, det_md = run_det(out, tiny, resume)
        claims += det_claims
        notes += "\n\n" + det_md
    write_claims(out, claims)
    write_report(out, SMOKE_TITLE, paper_table(table), claims, notes, plots)
    return claims


def smoke_notes(budget: SmokeBudget, sizes: dict[str, Any], bench: dict[str, Any], seconds: float,
                threads: int) -> str:
    pn, fn = sizes["partialnet"], sizes["fasternet"]
    return "\n".join([
        f"- Miniature: MNIST-100 (28x56 real digit pairs, 100 classes) padded to 32x64; 2x2/2 embedding (ImageNet: "
        f"4x4/4), maps 16x32 / 8x16 / 4x8 / 2x4. PartialNet-T0-mini: width 16, depths {MINI_COMMON['depths']}, "
        f"{pn['params'] / 1e3:.0f} k params, {pn['flops'] / 2e6:.2f} MMACs; FasterNet-T0-mini: width 20, same depths, "
        f"{fn['params'] / 1e3:.0f} k params, {fn['flops'] / 2e6:.2f} MMACs (both T0 halved).",
        f"- Budget: {budget.epochs} epochs x {budget.train_size} training images, batch {budget.batch_size}, seeds "
        f"{list(budget.seeds)}, {threads} training thread(s), test on {budget.test_size} MNIST-100 test pairs; "
        "official T0 recipe compressed "
        "(AdamW wd 0.005, lr 2e-3 with 0.3-epoch warm-up and per-step cosine, label smoothing 0.1, mixup 0.05 / "
        "cutmix 1.0, +-2 px shifts).",
        f"- Latency: deploy forms, batch 1, {bench['threads']} thread, {bench['repeats']} interleaved rounds after "
        f"{bench['warmup']} warm-up calls; ratio of medians, paired per-round IQR in the details. The host is shared: "
        "absolute times are noisy, the interleaved ratio much less so.",
        f"- Wall time of this run: {seconds / 60:.1f} min.",
    ])


def run_full(out: Path, data: str | None, variant: str, overrides: list[str], stages: tuple[str, ...] = ("main",),
             coco: str | None = None, backbone_checkpoints: list[str] | None = None) -> list[Claim]:
    """Train PartialNet-<v> and FasterNet-<v> with the official recipe on ImageNet (resumable), evaluate their
    deploy forms, benchmark them on this machine; with the det stage, then Mask R-CNN 1x on COCO from them."""
    if "det" in stages:
        if not coco:
            raise UsageError("the det stage at --scale full trains on COCO 2017: pass --coco /path/to/coco "
                             "(train2017/, val2017/, annotations/instances_{train,val}2017.json)")
        from effrepro.mm.runner import detection_config

        detection_config({}, coco, out, 1, 0.0, train_split="train2017", val_split="val2017")  # layout check, early
    title = f"PartialNet-{variant.upper()} vs FasterNet-{variant.upper()}"
    if "main" not in stages:
        claims, notes = run_det_full(out, coco, variant, backbone_checkpoints)
        merge_det(out, f"{title}: COCO", paper_table(complexity_table()), claims, notes)
        return claims
    if not data:
        raise UsageError("--scale full trains on ImageNet: pass --data /path/to/imagenet (train/ and val/ inside)")
    from partialnet.eval import evaluate_imagenet

    results = {}
    for family in ("partialnet", "fasternet"):
        name = f"{family}_{variant}"
        base = recipe(name)
        cfg = load_train_config({**base, "data": data, "out_dir": str(out / "runs" / name)}, overrides)
        train(cfg)
        checkpoint = str(Path(cfg.out_dir) / "last.pt")
        results[family] = evaluate_imagenet(name, data, checkpoint, deploy=True, use_ema=cfg.ema_decay is not None,
                                            image_size=cfg.augment.image_size, crop_ratio=cfg.augment.test_crop_ratio)
    delta = results["partialnet"]["top1"] - results["fasternet"]["top1"]
    bench = benchmark([variant], device="auto")
    claims = [Claim(id=f"top1_delta_{variant}", description=f"ImageNet top-1 PartialNet-{variant.upper()} - "
                    f"FasterNet-{variant.upper()}, same recipe, deploy forms", paper=PAPER_T2["top1_gain"]
                    if variant == "t2" else None, measured=delta, unit="points",
                    baseline=f"fasternet_{variant}", expect="> 0", details=results)]
    row = bench["rows"][0]
    if bench["device"] != "cpu":
        claims.append(Claim(id=f"gpu_throughput_ratio_{variant}", unit="x", baseline=f"fasternet_{variant}",
                            description=f"GPU throughput ratio at batch {bench['batch']} ({bench['device']})",
                            paper=PAPER_T2["gpu_throughput_ratio"] if variant == "t2" else None,
                            measured=row["throughput_ratio"], expect="> 1.0", details=row))
    cpu = benchmark([variant], device="cpu", threads=1)
    claims += latency_claims(cpu)
    notes = ""
    if "det" in stages:
        det_claims, notes = run_det_full(out, coco, variant, backbone_checkpoints)
        claims += det_claims
    write_claims(out, claims)
    write_report(out, f"{title}: ImageNet", paper_table(complexity_table()), claims, notes)
    return claims


def reproduce(scale: str, tiny: bool = False, out: str | None = None, data: str | None = None, variant: str = "t2",
              seeds: tuple[int, ...] | None = None, resume: bool = False, overrides: list[str] | None = None,
              stages: str | None = None, coco: str | None = None,
              backbone_checkpoints: list[str] | None = None) -> Path:
    if scale not in ("smoke", "full"):
        raise UsageError(f"unknown scale {scale!r}; use smoke or full")
    selected = parse_stages(stages, scale, coco)
    path = results_dir("partialnet", scale, out)
    if scale == "full":
        run_full(path, data, variant, overrides or [], selected, coco, backbone_checkpoints)
    else:
        budget = TINY if tiny else SmokeBudget()
        if seeds:
            budget = replace(budget, seeds=tuple(seeds))
        run_smoke(path, budget, resume, selected, tiny)
    print(f"wrote {path / 'claims.json'} and {path / 'report.md'}")
    return path

