"""``kerneldna reproduce``: KernelDNA's claims in miniature on the CPU (``smoke``) or with the official ImageNet
recipe (``full``), on the :mod:`effrepro.reproduce` skeleton.

smoke (real digits): the mini baseline, the static net of KernelDNA's depth, a static net of its depth and
parameter count, KernelDNA, static-only and CondConv trained with one recipe and the same 8 pilot seeds on
digits-in-clutter at 16 px (accuracy paired by seed; the first seed's per-epoch curve), a pre-registered
confirmatory replication of three accuracy claims on new seeds and a larger test set, the interleaved throughput
of the folded nets (mini nets and the official ResNet-18 family, intervals over rounds), the official zoo's
parameter / MAC counts, and the CKA premise. Stages: ``main`` and ``det`` (Mask R-CNN).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro import stats
from effrepro.errors import UsageError
from effrepro.mm.miniature import STAGES, det_miniature_stage
from effrepro.reproduce import Context, Plan, Reproduction, Results, run_jobs, run_stages

from kerneldna import reproduce_parts as parts
from kerneldna.claims import CLAIMS, CONFIRM_CLAIMS, DET_ARMS, DET_DEPTH, FACTS, PILOT_CLAIMS
from kerneldna.train import TrainConfig, train

DET_FULL_ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_050")  # COCO Mask R-CNN backbones


@dataclass(frozen=True, kw_only=True)
class KernelDNAPlan(Plan):
    seeds: tuple[int, ...] = tuple(range(8))  # the pilot: every arm
    arms: tuple[str, ...] = ("baseline", "samedepth", "parammatched", "kerneldna", "static_only", "condconv")
    # the pre-registered confirmatory replication (README): new seeds, the arms its three claims pair, a larger test
    # set (the paired item noise of 2,000 images is ~0.72 points per seed); n from a power analysis of the pilot
    confirm_seeds: tuple[int, ...] = tuple(range(8, 40))
    confirm_arms: tuple[str, ...] = ("kerneldna", "samedepth", "parammatched", "static_only")
    confirm_test_size: int = 20_000
    workers: int = 2  # one-thread training processes for the runs not yet cached
    tasks: tuple[str, ...] = ("clutter16",)  # the first carries the accuracy claims; also: clutter, mnist100
    clutter16: tuple[int, int, int] = (4000, 2000, 12)  # train images, test images, epochs (750 steps)
    clutter: tuple[int, int, int] = (4000, 2000, 10)
    mnist100: tuple[int, int, int] = (5000, 2000, 10)
    stem_stride: int = 2
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)
    mini_bench: tuple[int, int] = (64, 101)  # batch, interleaved rounds
    zoo_bench: tuple[int, int, int] = (8, 15, 224)  # batch, rounds, image size
    cka_images: int = 512
    # det: train images, val images, epochs (batch 4). ResNet-18 arms cost 1.8 s per training iteration on 2 cores
    # (PartialNet-T0: ~1.4 s): 240 images x 3 epochs = 180 iterations per arm instead of the shared 300.
    det_images: tuple[int, int, int] = (240, 80, 3)
    # --scale full: the user's data and the official recipe
    data: str | None = None
    coco: str | None = None
    arch: str = "resnet18"
    variants: tuple[str, ...] = ("baseline", "kerneldna")
    epochs: int | None = None
    backbone_checkpoints: tuple[str, ...] = ()


PLANS = {
    "smoke": KernelDNAPlan(),  # det is opt-in at this scale (--stages main,det): it would exceed 30 min
    "tiny": KernelDNAPlan(name="tiny", stages=STAGES if importlib.util.find_spec("mmdet") else ("main",),
                          seeds=(0, 1), confirm_seeds=(2, 3), confirm_test_size=256, clutter16=(256, 128, 2),
                          widths=(8, 16, 16), mini_bench=(8, 3), zoo_bench=(2, 2, 64), cka_images=64,
                          det_images=(8, 4, 1)),
    "full": KernelDNAPlan(name="full", seeds=(0,), confirm_seeds=()),
}


def arm_config(plan: KernelDNAPlan, ctx: Context, task: str, arm: str, seed: int) -> TrainConfig:
    """The mini training of one arm and seed: a pilot seed on the task's test split, a confirmatory seed on
    ``confirm_test_size`` test images; the first pilot seed is evaluated after every epoch (the curve)."""
    train_size, test_size, epochs = getattr(plan, task)
    confirm = seed in plan.confirm_seeds
    return TrainConfig(arch="mini", variant=arm, dataset=task, epochs=epochs, batch_size=plan.batch_size, lr=plan.lr,
                       weight_decay=plan.weight_decay, schedule_per="step", seed=seed, train_size=train_size,
                       test_size=plan.confirm_test_size if confirm else test_size, mini_widths=list(plan.widths),
                       mini_stem_stride=plan.stem_stride, out=str(ctx.runs / task / arm / f"seed{seed}"),
                       progress=False, log_every=10_000, eval_every=1 if seed == plan.seeds[0] else epochs)


def train_arms(plan: KernelDNAPlan, ctx: Context, task: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (arm, seed) mini training, each cached as ``runs/<task>_<arm>_seed<k>.json``: the pilot (every arm on
    ``seeds``) and the confirmatory seeds (``confirm_arms``); missing ones run in ``plan.workers`` processes."""
    runs = [(a, s) for a in plan.arms for s in plan.seeds]
    if task == plan.tasks[0]:
        runs += [(a, s) for a in plan.confirm_arms for s in plan.confirm_seeds]
    jobs, keys = {}, {}
    for arm, seed in runs:
        cfg = arm_config(plan, ctx, task, arm, seed)
        cka = plan.cka_images if arm == "baseline" and task == plan.tasks[0] and seed in plan.seeds else None
        jobs[arm, seed] = (cfg, seed == plan.seeds[0], cka, ctx.resume)
        key = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k == "init" and v is None)}  # pre-init caches
        keys[arm, seed] = key | ({"cka": cka} if cka else {})
    name = {job: f"{task}_{job[0]}_seed{job[1]}" for job in jobs}
    missing = {job: args for job, args in jobs.items() if not ctx.is_cached(name[job], keys[job])}
    rows = {}
    for job, row, seconds in run_jobs(parts.train_row, missing, plan.workers):
        rows[job] = ctx.cached(name[job], lambda r=row: r, key=keys[job], seconds=seconds)
    for job, args in jobs.items():  # cached before this run
        rows[job] = rows.get(job) or ctx.cached(name[job], lambda a=args: parts.train_row(*a), key=keys[job])
        ctx.log.log(kind="mini_run", task=task, arm=job[0], seed=job[1], top1=rows[job]["top1"])
        print(f"  {task:9s} {job[0]:12s} seed {job[1]}: top-1 {rows[job]['top1']:.2f} %", flush=True)
    return rows


def main_smoke(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    task = plan.tasks[0]
    with ctx.stage("counts"):
        counts = parts.zoo_counts()
        sizes = {t: parts.mini_sizes(plan.widths, plan.stem_stride, t, (*plan.arms, "samedepth")) for t in plan.tasks}
    matches, per = parts.zoo_parity(counts)
    res.facts["zoo_official_counts_match"] = (matches, per)
    for arch in parts.ZOO_ARCHS:
        k, b = counts[f"{arch}/kerneldna"], counts[f"{arch}/baseline"]
        res.facts[f"{arch}_params_ratio"] = (k["params"] / b["params"], {"kerneldna": k["params"],
                                                                         "baseline": b["params"]})
        res.facts[f"{arch}_macs_ratio"] = (k["macs"] / b["macs"], {"kerneldna": k["macs"], "baseline": b["macs"]})
    mini = sizes[task]
    res.facts["mini_params_ratio"] = (mini["kerneldna"]["params"] / mini["baseline"]["params"], mini)
    if "parammatched" in mini:
        res.facts["mini_params_ratio_vs_parammatched"] = mini["kerneldna"]["params"] / mini["parammatched"]["params"]
    res.facts["mini_macs_ratio_vs_samedepth"] = mini["kerneldna"]["macs"] / mini["samedepth"]["macs"]
    with ctx.stage("train"):
        rows = {t: train_arms(plan, ctx, t) for t in plan.tasks}
    top1 = {t: {a: [rows[t][a, s]["top1"] for s in plan.seeds] for a in plan.arms} for t in plan.tasks}
    confirm = {a: [rows[task][a, s]["top1"] for s in plan.confirm_seeds] for a in plan.confirm_arms}
    seeds = {"seeds": list(plan.seeds), "task": task}
    for claim_id, other in PILOT_CLAIMS.items():
        if {"kerneldna", other} <= set(plan.arms):
            res.estimates[claim_id] = stats.paired_diff(top1[task]["kerneldna"], top1[task][other], **seeds,
                                                        test_images=getattr(plan, task)[1])
    for claim_id, other in CONFIRM_CLAIMS.items():
        if plan.confirm_seeds and {"kerneldna", other} <= set(plan.confirm_arms):
            res.estimates[claim_id] = stats.paired_diff(confirm["kerneldna"], confirm[other], task=task,
                                                        seeds=list(plan.confirm_seeds),
                                                        test_images=plan.confirm_test_size)
    curves = {a: rows[task][a, plan.seeds[0]]["curve"] for a in plan.arms}
    if all(len(c) > 1 for c in curves.values()):
        changes = {a: c[-1] - c[-2] for a, c in curves.items()}
        res.facts["curve_last_epoch_change"] = (max(changes.values(), key=abs), {"per_arm": changes})
    panels = {f"{t}, pilot": arms for t, arms in top1.items()}
    if plan.confirm_seeds:
        panels[f"{task}, confirmatory"] = confirm
    res.plots.append(parts.plot_accuracy(panels, ctx.out / "accuracy.png"))
    res.plots.append(parts.plot_curves(curves, task, ctx.out / "accuracy_curve.png"))
    cka = [rows[task]["baseline", s]["cka"] for s in plan.seeds if "baseline" in plan.arms]
    if cka:
        res.estimates["cka_adjacent_within_minus_across"] = stats.mean_ci(
            [c["adjacent_within"] - c["adjacent_across"] for c in cka], pairs=cka[0]["pairs"], **seeds)
        res.plots.append(parts.plot_cka_matrix(cka[0], task, ctx.out / "cka_baseline.png"))
    with ctx.stage("throughput"):
        batch, repeats = plan.mini_bench
        shape = parts.INPUT_SHAPES[task]
        mini_bench = parts.throughput_rounds("mini", batch, repeats, 3, shape[1], in_chans=shape[0], num_classes=10,
                                             widths=plan.widths, stem_stride=plan.stem_stride)
        batch, repeats, size = plan.zoo_bench
        zoo_bench = parts.throughput_rounds("resnet18", batch, repeats, 1, size)
    ctx.log.log(kind="throughput", mini=mini_bench, resnet18=zoo_bench)
    declared = {c.id for c in CLAIMS}
    for label, bench in (("mini", mini_bench), ("resnet18", zoo_bench)):
        for ref in ("samedepth", "condconv", "baseline"):
            if f"{label}_throughput_vs_{ref}" in declared:
                res.estimates[f"{label}_throughput_vs_{ref}"] = parts.throughput_ratio(bench, "kerneldna", ref)
    tables = ["### Accuracy, pilot (every arm with the same recipe and seeds)\n\n" + parts.accuracy_table(top1, sizes)]
    if plan.confirm_seeds:
        tables.append(f"### Accuracy, confirmatory ({len(plan.confirm_seeds)} new seeds, {plan.confirm_test_size:,} "
                      "test images)\n\n" + parts.accuracy_table({task: confirm}, sizes, ref="kerneldna"))
    res.tables_md = "\n\n".join([
        *tables,
        f"### Throughput: mini nets ({'x'.join(map(str, shape))})\n\n" + parts.bench_table(mini_bench),
        "### Throughput: ResNet-18 family\n\n" + parts.bench_table(zoo_bench)])
    steps = rows[task]["kerneldna", plan.seeds[0]]["steps"]
    res.notes_md = (f"pilot: {len(plan.seeds)} seeds, every arm; confirmatory: seeds {_span(plan.confirm_seeds)} "
        f"({', '.join(plan.confirm_arms)}; {plan.confirm_test_size} test images); " + "; ".join(
        f"{t}: {getattr(plan, t)[0]} train / {getattr(plan, t)[1]} test images, {getattr(plan, t)[2]} epochs"
        for t in plan.tasks) + f" ({steps} steps); batch {plan.batch_size}; SGD lr {plan.lr} (the official "
        f"ResNet-18 recipe's), cosine per iteration, wd {plan.weight_decay} on all parameters; widths "
        f"{list(plan.widths)}, stem stride {plan.stem_stride}. Accuracy intervals: t over the paired per-seed "
        "differences; throughput intervals: percentile bootstrap of the median per-round ratio.")


def _span(seeds: tuple[int, ...]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds else "none"


def main_full(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    """The official ImageNet recipe per variant and seed, then the paired gain and the throughput ratios."""
    from kerneldna.recipes import recipe_config

    top1: dict[str, list[float]] = {v: [] for v in plan.variants}
    with ctx.stage("train"):
        for seed in plan.seeds:
            for variant in plan.variants:
                overrides = [f"variant={variant}", f"data={plan.data}", f"seed={seed}",
                             f"out={ctx.runs / f'{variant}_seed{seed}'}"] + ([f"epochs={plan.epochs}"]
                                                                              if plan.epochs else [])
                top1[variant].append(train(recipe_config(plan.arch, overrides), resume=ctx.resume)["final"]
                                     ["eval_top1"])
    if {"baseline", "kerneldna"} <= set(top1):
        res.estimates["top1_gain"] = stats.paired_diff(top1["kerneldna"], top1["baseline"], arch=plan.arch,
                                                       seeds=list(plan.seeds))
    if plan.arch == "resnet18":
        with ctx.stage("throughput"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            bench = parts.throughput_rounds("resnet18", 64, 15, 2, 224, device=device)
        for ref in ("samedepth", "condconv", "baseline"):
            res.estimates[f"resnet18_throughput_vs_{ref}"] = parts.throughput_ratio(bench, "kerneldna", ref)
        res.tables_md = parts.bench_table(bench)


def det_stage(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    try:
        from effrepro.mm import DetArm, train_and_evaluate

        from kerneldna import mm
    except ImportError as exc:
        raise UsageError(f"the det stage needs the OpenMMLab extra (mmengine, mmdet, mmsegmentation): {exc}") from None
    if plan.name == "full":
        tag = f"r{plan.arch[6:]}" if plan.arch.startswith("resnet") else plan.arch
        ckpts = plan.backbone_checkpoints or tuple(str(ctx.runs / f"{v}_seed{plan.seeds[0]}" / "last.pt")
                                                   for v in mm.BACKBONE_VARIANTS)
        with ctx.stage("det"):
            metrics = {v: train_and_evaluate(mm.coco_config(plan.coco, ctx.runs / f"mask-rcnn_{v}_{tag}_1x_coco",
                                                            plan.arch, v, c))
                       for v, c in zip(mm.BACKBONE_VARIANTS, ckpts, strict=True)}
        for kind, key in (("bbox", "bbox"), ("mask", "segm")):
            res.facts[f"det_coco_{kind}_ap_delta"] = (metrics["kerneldna"][f"coco/{key}_mAP"]
                                                      - metrics["baseline"][f"coco/{key}_mAP"], metrics)
        return
    arms = [DetArm(f"{v}_resnet{DET_DEPTH}", mm.backbone(DET_DEPTH, v, frozen_stages=-1, norm_eval=False),
                   mm.stage_channels(DET_DEPTH)) for v in mm.BACKBONE_VARIANTS]
    det_miniature_stage(ctx, res, arms, DET_ARMS[1], plan.det_images,
                        f"KernelDNA ResNet-{DET_DEPTH} vs the torchvision ResNet-{DET_DEPTH} baseline (every stage "
                        "trained, BatchNorm in train mode; KernelDNA unfolded)")


def main_stage(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    (main_full if plan.name == "full" else main_smoke)(plan, ctx, res)


run = run_stages({"main": main_stage, "det": det_stage})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="ImageNet root for --scale full (or KERNELDNA_DATA)")
    parser.add_argument("--arch", default=None, help="architecture for --scale full (default resnet18)")
    parser.add_argument("--variants", help="variants for --scale full (default baseline,kerneldna)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (--scale full)")
    parser.add_argument("--coco", help="COCO 2017 root for the det stage at --scale full")
    parser.add_argument("--backbone-checkpoints", help="det at --scale full: KERNELDNA.pt,BASELINE.pt ImageNet "
                        "checkpoints (default: the main stage's runs/<variant>_seed<s>/last.pt)")


def configure(plan: KernelDNAPlan, args: argparse.Namespace) -> KernelDNAPlan:
    """Map the full-scale flags onto the plan and check the user's paths before any work."""
    import os

    unknown = [t for t in plan.tasks if t not in parts.INPUT_SHAPES]
    if unknown or not plan.tasks:
        raise UsageError(f"tasks: use some of {', '.join(parts.INPUT_SHAPES)}, not {unknown or '()'}")
    if set(plan.seeds) & set(plan.confirm_seeds) or plan.workers < 1:
        raise UsageError("confirm_seeds must be new seeds (none of seeds), and workers at least 1")
    ckpts = tuple(c for c in (args.backbone_checkpoints or "").split(",") if c)
    full_only = (args.data, args.arch, args.variants, args.epochs, args.coco, ckpts)
    if plan.name != "full":
        if any(full_only):
            raise UsageError("--data, --arch, --variants, --epochs, --coco and --backbone-checkpoints are for "
                             "--scale full")
        return plan
    variants = tuple(v for v in (args.variants or "").split(",") if v) or plan.variants
    plan = dataclasses.replace(plan, data=args.data or os.environ.get("KERNELDNA_DATA"), coco=args.coco,
                               arch=args.arch or plan.arch, variants=variants, epochs=args.epochs,
                               backbone_checkpoints=ckpts,
                               stages=plan.stages if args.stages else (STAGES if args.coco else ("main",)))
    if "main" in plan.stages and not plan.data:
        raise UsageError("--scale full trains on ImageNet: pass --data /path/to/imagenet (train/ and val/ inside) "
                         "or set KERNELDNA_DATA")
    if "det" in plan.stages:
        if not plan.coco:
            raise UsageError("the det stage at --scale full trains on COCO 2017: pass --coco /path/to/coco "
                             "(train2017/, val2017/, annotations/instances_{train,val}2017.json)")
        if plan.arch not in DET_FULL_ARCHS:
            raise UsageError(f"the det stage has KernelDNA backbones {', '.join(DET_FULL_ARCHS)}, not {plan.arch!r}")
        from effrepro.mm.runner import detection_config

        detection_config({}, plan.coco, Path("."), 1, 0.0, train_split="train2017", val_split="val2017")
        if ckpts and (len(ckpts) != 2 or not all(Path(c).is_file() for c in ckpts)):
            raise UsageError("--backbone-checkpoints takes two existing files: KernelDNA's,baseline's")
    return plan


REPRODUCTION = Reproduction(
    paper="kerneldna", title="KernelDNA: dynamic kernel sharing", paper_table=parts.PAPER_TABLE, plans=PLANS,
    claims=CLAIMS, facts=FACTS, run=run, stages=STAGES, add_arguments=add_arguments, configure=configure)
