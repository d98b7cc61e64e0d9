"""KernelDNA ResNets and MobileNetV2s (and their torchvision baselines) as mmdet / mmseg backbones, and the
detection and segmentation configs.

Importing this module installs the torchvision-backed ``mmcv._ext`` fallback when only ``mmcv-lite`` is
present (a compiled mmcv is used unchanged) and registers, in mmdet's and mmseg's ``MODELS``::

    dict(type="KernelDNAResNet", depth=50, variant="kerneldna", out_indices=(0, 1, 2, 3), frozen_stages=1,
         norm_eval=True, init_cfg=dict(type="Pretrained", checkpoint="runs/kerneldna/last.pt"))
    dict(type="KernelDNAMobileNetV2", widen_factor=1.0, variant="kerneldna", out_indices=(1, 2, 4, 7), ...)

``KernelDNAMobileNetV2`` takes mmdet's ``MobileNetV2`` arguments: its 8 levels are layer1..layer7 and the last
1x1 conv, ``out_indices=(1, 2, 4, 7)`` gives strides 4/8/16/32 with 24/32/96/1280 channels (1.0x), and
``frozen_stages=k`` freezes the stem and layers 1..k. The four KernelDNA clusters are layers 3-6 exactly.

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
from torch import Tensor, nn

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


# mmdet's MobileNetV2 levels (layer1..layer7, then the final 1x1 conv) -> the torchvision feature index ending each
MOBILENET_LEVEL_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)
MOBILENET_OUT_INDICES = (1, 2, 4, 7)  # mmdet's default: strides 4, 8, 16, 32
MOBILENET_ARCHS = {1.0: "mobilenetv2_100", 0.5: "mobilenetv2_050"}


def mobilenetv2_arch(widen_factor: float) -> str:
    if widen_factor not in MOBILENET_ARCHS:
        raise UsageError(f"KernelDNA MobileNetV2 widen_factor must be 1.0 or 0.5 (the official builds), "
                         f"not {widen_factor!r}")
    return MOBILENET_ARCHS[widen_factor]


def mobilenetv2_channels(widen_factor: float = 1.0, out_indices: tuple[int, ...] = MOBILENET_OUT_INDICES) -> list[int]:
    """Widths of mmdet's MobileNetV2 levels at ``out_indices`` (KernelDNA keeps them): the FPN's ``in_channels``."""
    mobilenetv2_arch(widen_factor)
    widths = [max(8, int(c * widen_factor + 4) // 8 * 8) for c in (16, 24, 32, 64, 96, 160, 320)] + [1280]
    return [widths[i] for i in out_indices]


class KernelDNAMobileNetV2Backbone(TimmBackbone):
    """``type="KernelDNAMobileNetV2"``: KernelDNA MobileNetV2 1.0x / 0.5x (or its torchvision baseline) with mmdet
    ``MobileNetV2``'s ``out_indices`` (8 levels) and ``frozen_stages`` (stem + layers 1..k).

    The layers after the last requested level and the classifier are removed (no parameters without gradients
    under DDP); checkpoints of ``kerneldna train --arch mobilenetv2_100`` load strictly, as for the ResNets.
    """

    def __init__(self, widen_factor: float = 1.0, variant: str = "kerneldna",
                 out_indices: tuple[int, ...] = MOBILENET_OUT_INDICES, frozen_stages: int = -1,
                 norm_eval: bool = False, checkpoint: str | None = None, init_cfg: Any = None) -> None:
        checkpoint = checkpoint or pretrained_checkpoint(init_cfg)
        levels = len(MOBILENET_LEVEL_ENDS)
        if not out_indices or any(not 0 <= i < levels for i in out_indices):
            raise UsageError(f"out_indices {tuple(out_indices)} must be a non-empty subset of range(0, {levels})")
        if not -1 <= frozen_stages < levels:
            raise UsageError(f"frozen_stages must be in range(-1, {levels}), not {frozen_stages}")
        if variant not in BACKBONE_VARIANTS:
            raise UsageError(f"unknown variant {variant!r}; use kerneldna or baseline")
        arch = mobilenetv2_arch(widen_factor)
        super().__init__(f"kerneldna_{arch}" if variant == "kerneldna" else f"kerneldna_baseline_{arch}",
                         (0, 1, 2, 3, 4), -1, norm_eval)
        self.widen_factor, self.variant, self.out_indices = widen_factor, variant, tuple(out_indices)
        net = self.body.model
        net.features = net.features[: MOBILENET_LEVEL_ENDS[max(self.out_indices)] + 1]
        net.classifier = nn.Identity()
        self.out_channels = mobilenetv2_channels(widen_factor, self.out_indices)
        if checkpoint:
            self.load_classification_checkpoint(checkpoint)
        self.frozen_stages = int(frozen_stages)
        self._freeze()

    def _feature_key(self, key: str) -> str:
        return "model." + key

    def _frozen_children(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        end = 1 if self.frozen_stages == 0 else MOBILENET_LEVEL_ENDS[self.frozen_stages - 1] + 1
        return list(self.body.model.features[:end])

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        ends = {MOBILENET_LEVEL_ENDS[i] for i in self.out_indices}
        outs = {}
        for index, module in enumerate(self.body.model.features):
            x = module(x)
            if index in ends:
                outs[index] = x
        return tuple(outs[MOBILENET_LEVEL_ENDS[i]] for i in self.out_indices)


def register() -> None:
    """Install the mmcv fallback (if needed) and register ``KernelDNAResNet``, ``KernelDNAMobileNetV2`` and
    ``TimmBackbone``."""
    install()
    register_timm_backbone()
    register_backbone(KernelDNAResNetBackbone, "KernelDNAResNet")
    register_backbone(KernelDNAMobileNetV2Backbone, "KernelDNAMobileNetV2")


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


def mobilenetv2_backbone(widen_factor: float = 1.0, variant: str = "kerneldna", checkpoint: str | None = None,
                         frozen_stages: int = 1, norm_eval: bool = True) -> dict[str, Any]:
    """The MobileNetV2 backbone dict: mmdet's levels (1, 2, 4, 7), frozen and BN settings as the ResNets'."""
    mobilenetv2_arch(widen_factor)
    cfg: dict[str, Any] = dict(type="KernelDNAMobileNetV2", widen_factor=widen_factor, variant=variant,
                               out_indices=MOBILENET_OUT_INDICES, frozen_stages=frozen_stages, norm_eval=norm_eval)
    if checkpoint:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint))
    return cfg


DET_ARCHS = ("resnet18", "resnet50", *MOBILENET_ARCHS.values())


def det_backbone(arch: int | str = 50, variant: str = "kerneldna", checkpoint: str | None = None,
                 frozen_stages: int = 1, norm_eval: bool = True) -> tuple[dict[str, Any], list[int]]:
    """Backbone dict and its output widths for ``arch``: a ResNet depth (18, 50) or one of :data:`DET_ARCHS`."""
    if isinstance(arch, str) and arch.startswith("resnet") and arch in DET_ARCHS:
        arch = int(arch[6:])
    if isinstance(arch, int):
        return backbone(arch, variant, checkpoint, frozen_stages, norm_eval), stage_channels(arch)
    widths = {v: k for k, v in MOBILENET_ARCHS.items()}
    if arch not in widths:
        raise UsageError(f"detection backbone {arch!r}: use a ResNet depth (18, 50) or one of {', '.join(DET_ARCHS)}")
    if variant not in BACKBONE_VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; use kerneldna or baseline")
    return (mobilenetv2_backbone(widths[arch], variant, checkpoint, frozen_stages, norm_eval),
            mobilenetv2_channels(widths[arch]))


def mask_rcnn_model(depth: int | str = 50, variant: str = "kerneldna", checkpoint: str | None = None,
                    num_classes: int = 80) -> dict[str, Any]:
    """Mask R-CNN + FPN (mmdet ``mask-rcnn_r50_fpn_1x_coco``) around the backbone (``depth``: 18, 50 or a
    MobileNetV2 arch name, see :func:`det_backbone`)."""
    return mask_rcnn(*det_backbone(depth, variant, checkpoint), num_classes=num_classes)


def coco_config(coco: str | Path, work_dir: str | Path, depth: int | str = 50, variant: str = "kerneldna",
                checkpoint: str | None = None, epochs: int = 12, batch_size: int = 2, workers: int = 2,
                check: bool = True) -> dict[str, Any]:
    """mmdet's Mask R-CNN R50-FPN 1x recipe (the one the official repository ships): SGD lr 0.02 at 16 images
    (scaled to the real total batch by ``auto_scale_lr``; the official log forgot this), momentum 0.9, wd 1e-4,
    500-iteration linear warm-up from 0.001, x0.1 at epochs 8 and 11, 1333x800, flip 0.5. ``depth``: 18, 50 or
    ``mobilenetv2_100`` / ``mobilenetv2_050`` (the same recipe around a MobileNetV2, as the paper's peers run it)."""
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


def det_file_config(depth: int | str, variant: str) -> dict[str, Any]:
    arch = f"resnet{depth}" if isinstance(depth, int) else depth
    ckpt = f"checkpoints/{variant}_{arch}_imagenet.pt"  # placeholder: --cfg-options model.backbone...
    return coco_config("data/coco", f"work_dirs/{det_file_name(depth, variant)[:-3]}", depth, variant, ckpt,
                       check=False)


def det_file_name(depth: int | str, variant: str) -> str:
    short = f"r{depth}" if isinstance(depth, int) else "mobilenetv2" if depth == "mobilenetv2_100" else depth
    return f"mask-rcnn_{variant}-{short}_fpn_1x_coco.py"


def seg_file_config(depth: int, variant: str) -> dict[str, Any]:
    ckpt = f"checkpoints/{variant}_resnet{depth}_imagenet.pt"
    return ade20k_config("data/ade/ADEChallengeData2016", f"work_dirs/upernet_{variant}-r{depth}_160k_ade20k", depth,
                         variant, ckpt)


def config_files() -> dict[str, dict[str, dict[str, Any]]]:
    """Per base file, the variant files it serves (file name -> the full config the file must load as)."""
    pairs = [(depth, variant) for depth in DEPTHS for variant in BACKBONE_VARIANTS]
    det = [*pairs, *((MOBILENET_ARCHS[1.0], variant) for variant in BACKBONE_VARIANTS)]
    return {
        "mask-rcnn_fpn_1x_coco.py": {det_file_name(d, v): det_file_config(d, v) for d, v in det},
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
