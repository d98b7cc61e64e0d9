"""PartialNet (and its FasterNet baseline) as mmdet / mmseg backbones, and the paper's detection and
segmentation configs.

Importing this module installs the torchvision-backed ``mmcv._ext`` fallback when only ``mmcv-lite`` is
present (a compiled mmcv is used unchanged) and registers, in mmdet's and mmseg's ``MODELS``::

    dict(type="PartialNet", arch="t2", out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
         init_cfg=dict(type="Pretrained", checkpoint="runs/partialnet_t2/last.pt"))   # or checkpoint=...
    dict(type="FasterNet", arch="t2", ...)                                           # the baseline (timm)

Both are :class:`effrepro.mm.TimmBackbone` over the timm models ``partialnet_<arch>`` / ``fasternet_<arch>``:
C2..C5 feature maps (strides 4..32, widths ``embed_dim * 2**i``), mm-style frozen stages, strict loading of our
ImageNet checkpoints (EMA weights when present; a checkpoint of another model is an error).

Configs (the papers' recipe, FasterNet's detection protocol): :func:`coco_config` is Mask R-CNN + FPN 1x on
COCO 2017 (AdamW lr 2e-4 for 16 images, wd 1e-4, no gradient clipping, 500-iteration warm-up, steps at epochs 8
and 11, 12 epochs, 1333x800, flip 0.5); :func:`ade20k_config` is Semantic FPN on ADE20K (the PVT / PoolFormer
protocol). ``python -m partialnet.mm --write-configs partialnet/configs/mm`` writes them as mmengine config files:
one ``_base_`` per family (PartialNet-T2) and a few-line file per backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.mm import TimmBackbone, install, register_backbone, register_timm_backbone
from effrepro.mm.configs import mask_rcnn, semantic_fpn
from effrepro.mm.files import write_family
from effrepro.mm.runner import ade20k_runner, detection_config

import partialnet  # noqa: F401  (registers the partialnet_* timm models)
from partialnet.models.partialnet import VARIANTS

FASTERNET_WIDTHS = {"t0": 40, "t1": 64, "t2": 96, "s": 128, "m": 144, "l": 192}
FAMILIES = ("partialnet", "fasternet")


def _check_arch(arch: str) -> str:
    if arch not in VARIANTS:
        raise UsageError(f"unknown arch {arch!r}; use one of {', '.join(VARIANTS)}")
    return arch


def stage_channels(arch: str, family: str = "partialnet") -> list[int]:
    """C2..C5 widths of ``<family>_<arch>`` (the FPN's ``in_channels``)."""
    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; use partialnet or fasternet")
    base = VARIANTS[_check_arch(arch)].embed_dim if family == "partialnet" else FASTERNET_WIDTHS[arch]
    return [base * 2**i for i in range(4)]


class PartialNetBackbone(TimmBackbone):
    """``type="PartialNet"``: PartialNet-``arch`` (t0, t1, t2, s, m, l) with multi-scale outputs."""

    family = "partialnet"

    def __init__(self, arch: str = "t2", out_indices: tuple[int, ...] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, checkpoint: str | None = None, init_cfg: Any = None, **kwargs: Any) -> None:
        super().__init__(f"{self.family}_{_check_arch(arch)}", out_indices, frozen_stages, norm_eval, checkpoint,
                         init_cfg, **kwargs)
        self.arch = arch


class FasterNetBackbone(PartialNetBackbone):
    """``type="FasterNet"``: timm's FasterNet-``arch``, the paper's baseline, with the same conventions."""

    family = "fasternet"


def register() -> None:
    """Install the mmcv fallback (if needed) and register ``PartialNet``, ``FasterNet`` and ``TimmBackbone``."""
    install()
    register_timm_backbone()
    register_backbone(PartialNetBackbone, "PartialNet")
    register_backbone(FasterNetBackbone, "FasterNet")


register()


def backbone(arch: str = "t2", family: str = "partialnet", checkpoint: str | None = None,
             frozen_stages: int = -1, norm_eval: bool = False) -> dict[str, Any]:
    """The backbone dict; FasterNet's detection configs train every stage with BatchNorm in train mode."""
    cfg: dict[str, Any] = dict(type="PartialNet" if family == "partialnet" else "FasterNet", arch=_check_arch(arch),
                               out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages, norm_eval=norm_eval)
    if checkpoint:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint))
    return cfg


def mask_rcnn_model(arch: str = "t2", family: str = "partialnet", checkpoint: str | None = None,
                    num_classes: int = 80) -> dict[str, Any]:
    """Mask R-CNN + FPN (mmdet ``mask-rcnn_r50_fpn_1x_coco``'s heads) around the backbone."""
    return mask_rcnn(backbone(arch, family, checkpoint), stage_channels(arch, family), num_classes=num_classes)


def coco_config(coco: str | Path, work_dir: str | Path, arch: str = "t2", family: str = "partialnet",
                checkpoint: str | None = None, epochs: int = 12, batch_size: int = 2, workers: int = 2,
                check: bool = True) -> dict[str, Any]:
    """The paper's COCO recipe: Mask R-CNN 1x, AdamW lr 2e-4 at 16 images (scaled to the real total batch by
    ``auto_scale_lr``: run under ``torchrun`` for the paper's 8 x 2), wd 1e-4, no gradient clipping, 500-iteration
    linear warm-up, x0.1 at epochs 8 and 11, 1333x800, flip 0.5."""
    cfg = detection_config(mask_rcnn_model(arch, family, checkpoint), coco, work_dir, epochs=epochs, lr=2e-4,
                           batch_size=batch_size, train_split="train2017", val_split="val2017",
                           weight_decay=1e-4, milestones=(8, 11), warmup_iters=500, num_workers=workers,
                           image_scale=(1333, 800), check=check, clip_grad=None)
    pipeline = cfg["train_dataloader"]["dataset"]["pipeline"]
    pipeline.insert(len(pipeline) - 1, dict(type="RandomFlip", prob=0.5))
    cfg["auto_scale_lr"] = dict(enable=True, base_batch_size=16)
    cfg["custom_imports"] = dict(imports=["partialnet.mm"], allow_failed_imports=False)
    cfg["log_level"] = "INFO"
    return cfg


def ade20k_config(ade20k: str | Path, work_dir: str | Path, arch: str = "t2", family: str = "partialnet",
                  checkpoint: str | None = None, iters: int = 40_000, batch_size: int = 32) -> dict[str, Any]:
    """Semantic FPN on ADE20K (150 classes), the PVT / PoolFormer protocol the FasterNet family follows for
    segmentation: AdamW lr 2e-4, wd 1e-4, poly 0.9, 40k iterations at 32 images, 512x512 crops."""
    model = semantic_fpn(backbone(arch, family, checkpoint), stage_channels(arch, family), num_classes=150,
                         size=(512, 512))
    cfg = ade20k_runner(model, ade20k, work_dir, dict(type="AdamW", lr=2e-4, weight_decay=1e-4), iters, batch_size)
    cfg["custom_imports"] = dict(imports=["partialnet.mm"], allow_failed_imports=False)
    return cfg


CONFIG_FILES = "python -m partialnet.mm --write-configs partialnet/configs/mm"
BASE_ARCH = "t2"  # the variant the two _base_ files hold


def _paths(family: str, arch: str) -> tuple[str, str]:
    """(work_dir stem, ImageNet checkpoint placeholder: set it with --cfg-options model.backbone.init_cfg...)."""
    return f"work_dirs/{family}_{arch}", f"checkpoints/{family}_{arch}_imagenet.pt"


def det_file_config(family: str, arch: str) -> dict[str, Any]:
    work, ckpt = _paths(family, arch)
    return coco_config("data/coco", f"{work}_mask-rcnn_1x_coco", arch, family, ckpt, check=False)


def seg_file_config(arch: str) -> dict[str, Any]:
    work, ckpt = _paths("partialnet", arch)
    return ade20k_config("data/ade/ADEChallengeData2016", f"{work}_fpn_ade20k", arch, "partialnet", ckpt)


def config_files() -> dict[str, dict[str, dict[str, Any]]]:
    """Per base file, the variant files it serves (file name -> the full config the file must load as)."""
    det = {f"mask-rcnn_{family}-{arch}_fpn_1x_coco.py": det_file_config(family, arch)
           for family, archs in (("partialnet", tuple(VARIANTS)), ("fasternet", ("t0", "t1", "t2"))) for arch in archs}
    seg = {f"fpn_partialnet-{arch}_40k_ade20k-512x512.py": seg_file_config(arch) for arch in VARIANTS}
    return {"mask-rcnn_fpn_1x_coco.py": det, "fpn_40k_ade20k-512x512.py": seg}


def write_config_files(directory: str | Path) -> list[Path]:
    """mmengine config files (COCO and ADE20K under ``data/``): ``_base_/`` holds each family at PartialNet-T2, every
    other file inherits it and sets only its backbone, widths and paths. Regenerate after changing a builder."""
    bases = {"mask-rcnn_fpn_1x_coco.py": det_file_config("partialnet", BASE_ARCH),
             "fpn_40k_ade20k-512x512.py": seg_file_config(BASE_ARCH)}
    written = []
    for base_name, variants in config_files().items():
        written += write_family(directory, base_name, bases[base_name], variants, CONFIG_FILES)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m partialnet.mm")
    parser.add_argument("--write-configs", metavar="DIR", required=True)
    args = parser.parse_args(argv)
    for path in write_config_files(args.write_configs):
        print(path)


if __name__ == "__main__":
    main()
