"""The ``det`` stage of ``partialnet reproduce``: Mask R-CNN with PartialNet vs FasterNet backbones, as a CPU
miniature on the COCO-format digits set (smoke, a pipeline check reported as facts) or the paper's COCO recipe
from the main stage's ImageNet checkpoints (full)."""

from __future__ import annotations

from typing import Any

from effrepro.errors import UsageError
from effrepro.mm.miniature import det_miniature_stage
from effrepro.reproduce import Context, Results

DET_ARCH = "t0"  # the det miniature's backbones: PartialNet-T0 vs FasterNet-T0, random init, every stage trained
DET_ARMS = [f"partialnet_{DET_ARCH}", f"fasternet_{DET_ARCH}"]


def det_stage(plan: Any, ctx: Context, res: Results) -> None:
    try:
        from effrepro.mm import DetArm

        from partialnet import mm
    except ImportError as exc:
        raise UsageError(f"the det stage needs the OpenMMLab extra (mmengine, mmdet, mmsegmentation): {exc}") from None
    if plan.name == "full":
        return det_full(plan, ctx, res, mm)
    arms = [DetArm(name, mm.backbone(DET_ARCH, name.split("_")[0]), mm.stage_channels(DET_ARCH, name.split("_")[0]))
            for name in DET_ARMS]
    det_miniature_stage(ctx, res, arms, DET_ARMS[1], plan.det_images,
                        f"PartialNet-{DET_ARCH.upper()} vs FasterNet-{DET_ARCH.upper()}")


def det_full(plan: Any, ctx: Context, res: Results, mm: Any) -> None:
    """The paper's COCO recipe (Mask R-CNN 1x) from the main stage's ImageNet checkpoints (or the given ones)."""
    from effrepro.mm import train_and_evaluate

    names = [f"partialnet_{plan.variant}", f"fasternet_{plan.variant}"]
    ckpts = plan.backbone_checkpoints or tuple(str(ctx.runs / f"{n}_seed{plan.seeds[0]}" / "last.pt") for n in names)
    with ctx.stage("det"):
        metrics = {n: train_and_evaluate(mm.coco_config(plan.coco, ctx.runs / f"mask-rcnn_{n}_1x_coco", plan.variant,
                                                        n.split("_")[0], c))
                   for n, c in zip(names, ckpts, strict=True)}
    ours, base = (metrics[n] for n in names)
    for kind, key in (("bbox", "bbox"), ("mask", "segm")):
        res.facts[f"det_coco_{kind}_ap_delta"] = (ours[f"coco/{key}_mAP"] - base[f"coco/{key}_mAP"], metrics)
