"""The ``det`` stage of the vision projects' reproduce runs: Mask R-CNN with each backbone on COCO-format digits.

Every arm trains the same detector (``mask_rcnn`` with narrowed heads, see below) with the same recipe, data and
seed; only the backbone differs. At this scale (one seed, a few hundred iterations from random initialisation) the
stage is a pipeline check: bbox / mask AP per arm (pycocotools via mmdet's CocoMetric), AP differences against the
baseline arm and the detector's CPU latency ratio (one interleaved benchmark) are reported as facts, not claims;
backbone parameter and FLOP ratios are fixed by the configs.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effrepro.bench import count_flops, count_params, paired_benchmark
from effrepro.reproduce.skeleton import Context, FactSpec, Results

IMAGE_SIZE = 128
STAGES = ("main", "det")  # the vision projects' reproduce stages: their main experiment, then this one
# Heads narrowed for the CPU miniature (the paper configs use width 256, 1024-wide FCs, 512 RoIs per image). With
# 1-4 digits per 128x128 canvas, 64 sampled RoIs per image (16 positives) suffice; RoIAlign's backward and the mask
# head scale with them (128 -> 64: 1.18 -> 0.90 s per training iteration of the PartialNet-T0 arm).
MINI_HEADS = dict(width=64, fc_channels=256, roi_samples=64)
HEADS_TEXT = (f"FPN width {MINI_HEADS['width']}, {MINI_HEADS['fc_channels']}-wide box FCs, "
              f"{MINI_HEADS['roi_samples']} sampled RoIs per image")  # for the reports


@dataclass
class DetArm:
    """One detector arm: a display name and an mm backbone dict (e.g. ``type="TimmBackbone"``)."""

    name: str
    backbone: dict[str, Any]
    in_channels: list[int] = field(default_factory=list)


@dataclass
class DetBudget:
    """Per arm: ``train_images / batch_size * epochs`` iterations (300 by default) + one COCO evaluation (measured
    7.5 min per PartialNet-T0 arm on 2 cores)."""

    train_images: int = 300
    val_images: int = 80
    epochs: int = 4
    lr: float = 2e-4  # AdamW, as the FasterNet / PartialNet detection configs
    batch_size: int = 4

    @property
    def iterations(self) -> int:
        return -(-self.train_images // self.batch_size) * self.epochs

    @property
    def warmup_iters(self) -> int:
        """Linear warm-up over the first sixth of training, capped at 100 iterations (mmdet's COCO configs: 500)."""
        return max(1, min(100, self.iterations // 6))

    @classmethod
    def tiny(cls) -> DetBudget:
        return cls(train_images=8, val_images=4, epochs=1, batch_size=4)


def _arm_channels(arm: DetArm) -> list[int]:
    if arm.in_channels:
        return arm.in_channels
    from effrepro.mm.backbones import TimmBackbone

    cfg = {k: v for k, v in arm.backbone.items() if k != "type"}
    return TimmBackbone(**cfg).out_channels


def run_detection_miniature(arms: list[DetArm], baseline: str, out_dir: str | os.PathLike, data_root: str | os.PathLike,
                            budget: DetBudget | None = None, seed: int = 0, latency_repeats: int = 15
                            ) -> dict[str, Any]:
    """Train + evaluate every arm; returns ``{"arms": {name: metrics, params, FLOPs, latency}, "budget": ...,
    "baseline": ..., "latency_round_ratios": {name: [per-round latency / baseline's]}}``."""
    from effrepro.data import DIGIT_CLASSES, write_coco_digits
    from effrepro.mm.configs import build_detector, mask_rcnn
    from effrepro.mm.runner import detection_config, train_and_evaluate

    budget = budget or DetBudget()
    names = [a.name for a in arms]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {names}")
    write_coco_digits(data_root, "train", size=budget.train_images, seed=seed)
    write_coco_digits(data_root, "val", size=budget.val_images, seed=seed)
    results: dict[str, dict[str, Any]] = {}
    models = {}
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    for arm in arms:
        model_cfg = mask_rcnn(arm.backbone, _arm_channels(arm), num_classes=len(DIGIT_CLASSES), **MINI_HEADS)
        config = detection_config(model_cfg, data_root, Path(out_dir) / "runs" / f"det_{arm.name}", budget.epochs,
                                  budget.lr, budget.batch_size, classes=DIGIT_CLASSES, seed=seed,
                                  image_scale=(IMAGE_SIZE, IMAGE_SIZE), warmup_iters=budget.warmup_iters)
        metrics = train_and_evaluate(config)
        model = build_detector(model_cfg).eval()
        results[arm.name] = {
            "bbox_mAP": metrics.get("coco/bbox_mAP", 0.0), "segm_mAP": metrics.get("coco/segm_mAP", 0.0),
            "bbox_mAP_50": metrics.get("coco/bbox_mAP_50", 0.0),
            "backbone_params": count_params(model.backbone), "backbone_flops": count_flops(model.backbone, image),
        }
        models[arm.name] = model
    with torch.no_grad():
        timings = paired_benchmark({n: (lambda m=m: m.extract_feat(image)) for n, m in models.items()},
                                   warmup=2, repeats=latency_repeats)
    rounds = {}
    for name in names:
        results[name]["feature_latency_ms"] = timings[name].median * 1e3
        rounds[name] = [a / b for a, b in zip(timings[name].samples, timings[baseline].samples, strict=True)]
    return {"arms": results, "budget": {**budget.__dict__, "iterations": budget.iterations}, "baseline": baseline,
            "seed": seed, "latency_repeats": latency_repeats, "latency_round_ratios": rounds}


def det_fact_specs(arm_names: list[str], baseline: str, where: str = "COCO-format digits") -> list[FactSpec]:
    """The det stage's facts table for these arms (ids ``det_<arm>_...``); see :func:`det_facts`."""
    specs = []
    for name in arm_names:
        specs += [FactSpec(id=f"det_{name}_bbox_ap", description=f"Mask R-CNN bbox AP with {name} ({where}, one "
                           "seed, pipeline check)", unit="AP", exact=False),
                  FactSpec(id=f"det_{name}_mask_ap", description=f"Mask R-CNN mask AP with {name} ({where}, one "
                           "seed, pipeline check)", unit="AP", exact=False)]
        if name == baseline:
            continue
        specs += [
            FactSpec(id=f"det_{name}_bbox_ap_delta", description=f"bbox AP of {name} minus {baseline} (one seed: "
                     "untested)", unit="AP", exact=False),
            FactSpec(id=f"det_{name}_mask_ap_delta", description=f"mask AP of {name} minus {baseline} (one seed: "
                     "untested)", unit="AP", exact=False),
            FactSpec(id=f"det_{name}_backbone_latency_ratio", description=f"backbone+FPN CPU latency {name} / "
                     f"{baseline} (batch 1, {IMAGE_SIZE}x{IMAGE_SIZE}, median of the per-round ratios of an "
                     "interleaved benchmark)", unit="x", exact=False),
            FactSpec(id=f"det_{name}_backbone_params_ratio", description=f"backbone parameters {name} / {baseline}",
                     unit="x"),
            FactSpec(id=f"det_{name}_backbone_flops_ratio", description=f"backbone FLOPs {name} / {baseline} "
                     f"({IMAGE_SIZE}x{IMAGE_SIZE})", unit="x"),
        ]
    return specs


def det_facts(details: dict[str, Any]) -> dict[str, Any]:
    """Fact values (``id -> value`` or ``(value, details)``) of a :func:`run_detection_miniature` result."""
    arms, baseline = details["arms"], details["baseline"]
    base = arms[baseline]
    facts: dict[str, Any] = {}
    for name, r in arms.items():
        facts[f"det_{name}_bbox_ap"] = (r["bbox_mAP"], {"bbox_mAP_50": r["bbox_mAP_50"], "seed": details["seed"]})
        facts[f"det_{name}_mask_ap"] = r["segm_mAP"]
        if name == baseline:
            continue
        rounds = details["latency_round_ratios"][name]
        facts[f"det_{name}_bbox_ap_delta"] = r["bbox_mAP"] - base["bbox_mAP"]
        facts[f"det_{name}_mask_ap_delta"] = r["segm_mAP"] - base["segm_mAP"]
        facts[f"det_{name}_backbone_latency_ratio"] = (
            statistics.median(rounds), {"repeats": len(rounds), "min": min(rounds), "max": max(rounds),
                                        name + "_ms": r["feature_latency_ms"],
                                        baseline + "_ms": base["feature_latency_ms"]})
        facts[f"det_{name}_backbone_params_ratio"] = (r["backbone_params"] / base["backbone_params"],
                                                      {name: r["backbone_params"], baseline: base["backbone_params"]})
        facts[f"det_{name}_backbone_flops_ratio"] = r["backbone_flops"] / base["backbone_flops"]
    return facts


def det_notes(details: dict[str, Any], what: str, seconds: float) -> str:
    """The det stage's section of report.md: setup in one paragraph (``what`` names the arms) and the arm table."""
    b = details["budget"]
    lines = ["| backbone | bbox AP | bbox AP50 | mask AP | backbone params | backbone GFLOPs (128²) "
             "| backbone+FPN latency (ms) |", "|---|---|---|---|---|---|---|"]
    for name, r in details["arms"].items():
        lines.append(f"| {name} | {100 * r['bbox_mAP']:.1f} | {100 * r['bbox_mAP_50']:.1f} | {100 * r['segm_mAP']:.1f} "
                     f"| {r['backbone_params'] / 1e6:.2f} M | {r['backbone_flops'] / 1e9:.3f} "
                     f"| {r['feature_latency_ms']:.1f} |")
    return "\n".join([
        "### Detection and instance segmentation (det stage: a pipeline check)", "",
        f"Mask R-CNN + FPN (mmdet 3.3, heads narrowed for the CPU: {HEADS_TEXT}), {what}, from random init, same "
        f"recipe, data and seed ({details['seed']}): COCO-format digits (real MNIST digits on 128x128 canvases, boxes "
        f"and masks from the digit pixels), {b['train_images']} train / {b['val_images']} val images, {b['epochs']} "
        f"epochs = {b['iterations']} iterations, batch {b['batch_size']}, AdamW lr {b['lr']}, no flip. AP from "
        "pycocotools (x100 below; facts are in 0..1). One seed and a few hundred iterations: the AP values are "
        "facts, not claims. Latency: backbone+FPN, batch 1, 128x128, "
        f"{details['latency_repeats']} interleaved rounds. Wall time of the stage: {seconds / 60:.1f} min.", "",
        *lines])


def det_miniature_stage(ctx: Context, res: Results, arms: list[DetArm], baseline: str,
                        det_images: tuple[int, int, int], what: str) -> None:
    """A paper's smoke ``det`` stage: train and evaluate ``arms`` on COCO-format digits (``det_images`` = train
    images, val images, epochs; batch 4), log the result and add its facts and report section to ``res``."""
    train_images, val_images, epochs = det_images
    budget = DetBudget(train_images=train_images, val_images=val_images, epochs=epochs, batch_size=4)
    with ctx.stage("det"):
        started = time.perf_counter()
        details = run_detection_miniature(arms, baseline, ctx.out, ctx.out / "coco_digits", budget)
    ctx.log.log(kind="det", **details)
    res.facts.update(det_facts(details))
    res.notes_md += "\n\n" + det_notes(details, what, time.perf_counter() - started)
