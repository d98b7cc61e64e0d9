"""The ``det`` stage of the vision projects' reproduce runs: Mask R-CNN with each backbone on COCO-format digits.

Every arm trains the same detector (``mask_rcnn`` with narrowed heads, see below) with the same recipe, data and
seed; only the backbone differs. Claims: bbox / mask AP per arm (pycocotools via mmdet's CocoMetric), AP deltas
against the baseline arm, backbone parameter and FLOP ratios, and the detector's CPU latency ratio measured in
one interleaved benchmark.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effrepro.bench import count_flops, count_params, paired_benchmark, ratio
from effrepro.errors import UsageError
from effrepro.report import Claim

IMAGE_SIZE = 128
STAGES = ("main", "det")  # the vision projects' reproduce stages: their main experiment, then this one
# Heads narrowed for the CPU miniature (the paper configs use width 256, 1024-wide FCs, 512 RoIs per image). With
# 1-4 digits per 128x128 canvas, 64 sampled RoIs per image (16 positives) suffice; RoIAlign's backward and the mask
# head scale with them (128 -> 64: 1.18 -> 0.90 s per training iteration of the PartialNet-T0 arm).
MINI_HEADS = dict(width=64, fc_channels=256, roi_samples=64)
HEADS_TEXT = (f"FPN width {MINI_HEADS['width']}, {MINI_HEADS['fc_channels']}-wide box FCs, "
              f"{MINI_HEADS['roi_samples']} sampled RoIs per image")  # for the reports


def parse_stages(text: str | None, scale: str, coco: str | None) -> tuple[str, ...]:
    """``--stages main,det`` of the vision projects' ``reproduce``. Default at smoke scale (and ``--tiny``): both
    when the OpenMMLab extra is installed, else ``main`` with a notice; full runs main and, with ``--coco`` (the
    user's COCO 2017), det."""
    if text is None:
        if scale == "full":
            return STAGES if coco else ("main",)
        if importlib.util.find_spec("mmdet") is None:
            print("[reproduce] mmdet is not installed: skipping the det stage (install the OpenMMLab extra, see the "
                  "README)", flush=True)
            return ("main",)
        return STAGES
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UsageError(f"--stages: unknown {unknown or text!r}; use a comma list of {', '.join(STAGES)}")
    return stages


@dataclass
class DetArm:
    """One detector arm: a display name and an mm backbone dict (e.g. ``type="TimmBackbone"``)."""

    name: str
    backbone: dict[str, Any]
    in_channels: list[int] = field(default_factory=list)


@dataclass
class DetBudget:
    """Per arm: ``train_images / batch_size * epochs`` iterations (300 by default) + one COCO evaluation; sized so
    that the two PartialNet-T0 / FasterNet-T0 arms stay within the issue's 15 minutes (measured 14.9 min on 2 cores,
    ~7.5 min per arm)."""

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
                            ) -> tuple[list[Claim], dict[str, Any]]:
    """Train + evaluate every arm; returns the claims and a details dict (metrics, params, FLOPs, latency)."""
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
    claims = []
    base = results[baseline]
    for arm in arms:
        r = results[arm.name]
        r["feature_latency_ms"] = timings[arm.name].median * 1e3
        claims.append(Claim(f"det_{arm.name}_bbox_ap", f"Mask R-CNN bbox AP with {arm.name} (COCO-format digits)",
                            None, r["bbox_mAP"], "AP", "-", "> 0", details=r))
        claims.append(Claim(f"det_{arm.name}_mask_ap", f"Mask R-CNN mask AP with {arm.name}", None, r["segm_mAP"],
                            "AP", "-", "> 0"))
        if arm.name == baseline:
            continue
        claims.append(Claim(f"det_{arm.name}_bbox_ap_delta", f"bbox AP of {arm.name} minus {baseline}", None,
                            r["bbox_mAP"] - base["bbox_mAP"], "AP points", baseline, ">= 0"))
        claims.append(Claim(f"det_{arm.name}_mask_ap_delta", f"mask AP of {arm.name} minus {baseline}", None,
                            r["segm_mAP"] - base["segm_mAP"], "AP points", baseline, ">= 0"))
        claims.append(Claim(f"det_{arm.name}_backbone_latency_ratio",
                            f"backbone+FPN feature latency {arm.name} / {baseline} (CPU, batch 1, 128x128)", None,
                            ratio(timings, arm.name, baseline), "x", baseline, "<= 1.0",
                            details={"repeats": latency_repeats}))
        claims.append(Claim(f"det_{arm.name}_backbone_flops_ratio", f"backbone FLOPs {arm.name} / {baseline}", None,
                            r["backbone_flops"] / base["backbone_flops"], "x", baseline, "<= 1.0"))
    return claims, {"arms": results, "budget": budget.__dict__}
