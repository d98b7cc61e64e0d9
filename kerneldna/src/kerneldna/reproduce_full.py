"""The full-scale side of ``kerneldna reproduce``: the official ImageNet recipe per variant and seed, the detection
stage (the COCO Mask R-CNN runs at ``full``, the mmdet miniature otherwise) and the flags that point at the user's
data."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from effrepro import stats
from effrepro.errors import UsageError
from effrepro.mm.miniature import STAGES, det_miniature_stage
from effrepro.reproduce import Context, Results

from kerneldna import reproduce_parts as parts
from kerneldna.claims import DET_ARMS, DET_DEPTH
from kerneldna.train import train

if TYPE_CHECKING:
    from kerneldna.reproduce import KernelDNAPlan

DET_FULL_ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_050")  # COCO Mask R-CNN backbones


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="ImageNet root for --scale full (or KERNELDNA_DATA)")
    parser.add_argument("--arch", default=None, help="architecture for --scale full (default resnet18)")
    parser.add_argument("--variants", help="variants for --scale full (default baseline,kerneldna)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (--scale full)")
    parser.add_argument("--coco", help="COCO 2017 root for the det stage at --scale full")
    parser.add_argument("--backbone-checkpoints", help="det at --scale full: KERNELDNA.pt,BASELINE.pt ImageNet "
                        "checkpoints (default: the main stage's runs/<variant>_seed<s>/last.pt)")


def configure_full(plan: KernelDNAPlan, args: argparse.Namespace) -> KernelDNAPlan:
    """Refuse the full-scale flags at other scales; at ``full`` map them onto the plan and check the paths."""
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
