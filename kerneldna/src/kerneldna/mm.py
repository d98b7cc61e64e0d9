"""KernelDNA ResNets (and their torchvision baselines) as mmdet / mmseg backbones, and the detection and
segmentation configs.

Importing this module installs the torchvision-backed ``mmcv._ext`` fallback when only ``mmcv-lite`` is
present (a compiled mmcv is used unchanged) and registers, in mmdet's and mmseg's ``MODELS``::

    dict(type="KernelDNAResNet", depth=50, variant="kerneldna", out_indices=(0, 1, 2, 3), frozen_stages=1,
         norm_eval=True, init_cfg=dict(type="Pretrained", checkpoint="runs/kerneldna/last.pt"))

``variant="baseline"`` is the official baseline (torchvision ResNet-18/50, the same code path and checkpoint
format as ``kerneldna train variant=baseline``). The backbone is :class:`effrepro.mm.TimmBackbone` over the timm
models ``kerneldna_resnet<depth>`` / ``kerneldna_baseline_resnet<depth>``: C2..C5 (64/128/256/512 channels for
depth 18, x4 for 50; KernelDNA leaves the widths unchanged), mm-style frozen stages, strict loading of our
ImageNet checkpoints (EMA weights when present; the classifier is dropped, any other mismatch is an error).

The SE gates hold a BatchNorm over ``[B, C/4, 1, 1]``: training with one image per device needs
``norm_eval=True`` (the COCO recipe's setting) or at least two images per device.

Configs: :func:`coco_config` is the stock mmdet ``mask-rcnn_r50_fpn_1x_coco`` recipe the official repository
ships (SGD lr 0.02 for 16 images, momentum 0.9, wd 1e-4, 500-iteration warm-up, steps at epochs 8 and 11,
``frozen_stages=1``, ``norm_eval=True``, no gradient clipping, 1333x800, flip 0.5); :func:`ade20k_config` is
mmseg's UperNet R50 ADE20K 160k recipe. ``python -m kerneldna.mm --write-configs kerneldna/configs/mm`` writes
both as files: one ``_base_`` per family (KernelDNA-R50) and a few-line file per backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.mm import TimmBackbone, install, register_backbone, register_timm_backbone
from effrepro.mm.backbones import pretrained_checkpoint
from effrepro.mm.configs import mask_rcnn, upernet
from effrepro.mm.files import write_family
from effrepro.mm.runner import ade20k_runner, detection_config
from torch import nn

import kerneldna.models  # noqa: F401  (registers the kerneldna_* timm models)

DEPTHS = (18, 50)
BACKBONE_VARIANTS = ("kerneldna", "baseline")


def stage_channels(depth: int) -> list[int]:
    """C2..C5 widths (the FPN's / UperNet's ``in_channels``); KernelDNA keeps the ResNet's."""
    if depth not in DEPTHS:
        raise UsageError(f"KernelDNA ResNet depth must be 18 or 50, not {depth!r}")
    return [c * (1 if depth == 18 else 4) for c in (64, 128, 256, 512)]


def timm_name(depth: int, variant: str = "kerneldna") -> str:
    stage_channels(depth)
    if variant not in BACKBONE_VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; use kerneldna or baseline")
    return f"kerneldna_resnet{depth}" if variant == "kerneldna" else f"kerneldna_baseline_resnet{depth}"


class KernelDNAResNetBackbone(TimmBackbone):
    """``type="KernelDNAResNet"``: KernelDNA ResNet-``depth`` (or its baseline) with multi-scale outputs.

    The timm ``features_only`` form of these models wraps the whole classifier as ``body.model`` (its
    ``forward_stages`` gives C2..C5); the classifier's pooling and fc are removed here, checkpoint keys are
    mapped under ``model.``, and stages are frozen among ``body.model``'s children.
    """

    def __init__(self, depth: int = 50, variant: str = "kerneldna", out_indices: tuple[int, ...] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, checkpoint: str | None = None,
                 init_cfg: Any = None) -> None:
        checkpoint = checkpoint or pretrained_checkpoint(init_cfg)
        super().__init__(timm_name(depth, variant), out_indices, frozen_stages, norm_eval)
        self.depth, self.variant = depth, variant
        self.body.model.avgpool, self.body.model.fc = nn.Identity(), nn.Identity()
        if checkpoint:
            self.load_classification_checkpoint(checkpoint)

    def _feature_key(self, key: str) -> str:
        return "model." + key

    def _stage_root(self) -> nn.Module:
        return self.body.model


def register() -> None:
    """Install the mmcv fallback (if needed) and register ``KernelDNAResNet`` and ``TimmBackbone``."""
    install()
    register_timm_backbone()
    register_backbone(KernelDNAResNetBackbone, "KernelDNAResNet")


register()


def backbone(depth: int = 50, variant: str = "kerneldna", checkpoint: str | None = None, frozen_stages: int = 1,
             norm_eval: bool = True) -> dict[str, Any]:
    """The backbone dict; defaults are mmdet's ResNet detection settings (stem + layer1 frozen, BN in eval)."""
    timm_name(depth, variant)
    cfg: dict[str, Any] = dict(type="KernelDNAResNet", depth=depth, variant=variant, out_indices=(0, 1, 2, 3),
                               frozen_stages=frozen_stages, norm_eval=norm_eval)
    if checkpoint:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint))
    return cfg


def mask_rcnn_model(depth: int = 50, variant: str = "kerneldna", checkpoint: str | None = None,
                    num_classes: int = 80) -> dict[str, Any]:
    """Mask R-CNN + FPN (mmdet ``mask-rcnn_r50_fpn_1x_coco``) around the backbone."""
    return mask_rcnn(backbone(depth, variant, checkpoint), stage_channels(depth), num_classes=num_classes)


def coco_config(coco: str | Path, work_dir: str | Path, depth: int = 50, variant: str = "kerneldna",
                checkpoint: str | None = None, epochs: int = 12, batch_size: int = 2, workers: int = 2,
                check: bool = True) -> dict[str, Any]:
    """mmdet's Mask R-CNN R50-FPN 1x recipe (the one the official repository ships): SGD lr 0.02 at 16 images
    (scaled to the real total batch by ``auto_scale_lr``; the official log forgot this), momentum 0.9, wd 1e-4,
    500-iteration linear warm-up from 0.001, x0.1 at epochs 8 and 11, 1333x800, flip 0.5."""
    cfg = detection_config(mask_rcnn_model(depth, variant, checkpoint), coco, work_dir, epochs=epochs, lr=0.02,
                           batch_size=batch_size, train_split="train2017", val_split="val2017",
                           weight_decay=1e-4, milestones=(8, 11), warmup_iters=500, num_workers=workers,
                           image_scale=(1333, 800), check=check)
    cfg["optim_wrapper"] = dict(type="OptimWrapper",
                                optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4))
    pipeline = cfg["train_dataloader"]["dataset"]["pipeline"]
    pipeline.insert(len(pipeline) - 1, dict(type="RandomFlip", prob=0.5))
    cfg["auto_scale_lr"] = dict(enable=True, base_batch_size=16)
    cfg["custom_imports"] = dict(imports=["kerneldna.mm"], allow_failed_imports=False)
    cfg["log_level"] = "INFO"
    return cfg


def ade20k_config(ade20k: str | Path, work_dir: str | Path, depth: int = 50, variant: str = "kerneldna",
                  checkpoint: str | None = None, iters: int = 160_000, batch_size: int = 16) -> dict[str, Any]:
    """UperNet on ADE20K (mmseg ``upernet_r50_4xb4-160k_ade20k-512x512``): SGD lr 0.01, momentum 0.9,
    wd 5e-4, poly 0.9, 160k iterations at 16 images, 512x512 crops; every stage trained, BN in train mode."""
    model = upernet(backbone(depth, variant, checkpoint, frozen_stages=-1, norm_eval=False), stage_channels(depth),
                    num_classes=150, size=(512, 512))
    model["auxiliary_head"] = dict(type="FCNHead", in_channels=stage_channels(depth)[2], in_index=2, channels=256,
                                   num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=150,
                                   norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                                   loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
    optimizer = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = ade20k_runner(model, ade20k, work_dir, optimizer, iters, batch_size)
    cfg["custom_imports"] = dict(imports=["kerneldna.mm"], allow_failed_imports=False)
    return cfg


CONFIG_FILES = "python -m kerneldna.mm --write-configs kerneldna/configs/mm"
BASE = (50, "kerneldna")  # the backbone the two _base_ files hold


def det_file_config(depth: int, variant: str) -> dict[str, Any]:
    ckpt = f"checkpoints/{variant}_resnet{depth}_imagenet.pt"  # placeholder: --cfg-options model.backbone...
    return coco_config("data/coco", f"work_dirs/mask-rcnn_{variant}-r{depth}_fpn_1x_coco", depth, variant, ckpt,
                       check=False)


def seg_file_config(depth: int, variant: str) -> dict[str, Any]:
    ckpt = f"checkpoints/{variant}_resnet{depth}_imagenet.pt"
    return ade20k_config("data/ade/ADEChallengeData2016", f"work_dirs/upernet_{variant}-r{depth}_160k_ade20k", depth,
                         variant, ckpt)


def config_files() -> dict[str, dict[str, dict[str, Any]]]:
    """Per base file, the variant files it serves (file name -> the full config the file must load as)."""
    pairs = [(depth, variant) for depth in DEPTHS for variant in BACKBONE_VARIANTS]
    return {
        "mask-rcnn_fpn_1x_coco.py": {f"mask-rcnn_{v}-r{d}_fpn_1x_coco.py": det_file_config(d, v) for d, v in pairs},
        "upernet_4xb4-160k_ade20k-512x512.py": {f"upernet_{v}-r{d}_4xb4-160k_ade20k-512x512.py": seg_file_config(d, v)
                                                for d, v in pairs},
    }


def write_config_files(directory: str | Path) -> list[Path]:
    """mmengine config files (COCO / ADE20K under ``data/``): ``_base_/`` holds each family with KernelDNA-R50, every
    other file inherits it and sets only its backbone, widths and paths. Regenerate after changing a builder."""
    bases = {"mask-rcnn_fpn_1x_coco.py": det_file_config(*BASE),
             "upernet_4xb4-160k_ade20k-512x512.py": seg_file_config(*BASE)}
    written = []
    for base_name, variants in config_files().items():
        written += write_family(directory, base_name, bases[base_name], variants, CONFIG_FILES)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kerneldna.mm")
    parser.add_argument("--write-configs", metavar="DIR", required=True)
    args = parser.parse_args(argv)
    for path in write_config_files(args.write_configs):
        print(path)


if __name__ == "__main__":
    main()
