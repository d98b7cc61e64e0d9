"""OpenMMLab support shared by the vision projects: the ``mmcv._ext`` fallback for ``mmcv-lite`` installs,
and the detection / segmentation model configs the papers' tables use, parameterised by the backbone."""

from effrepro.mm.backbones import TimmBackbone, register_backbone, register_timm_backbone
from effrepro.mm.configs import build_detector, build_segmentor, mask_rcnn, semantic_fpn, upernet
from effrepro.mm.miniature import DetArm, DetBudget, run_detection_miniature
from effrepro.mm.mmcv_fallback import FALLBACK_OPS, has_compiled_mmcv, install
from effrepro.mm.runner import detection_config, train_and_evaluate

__all__ = [
    "FALLBACK_OPS", "build_detector", "build_segmentor", "has_compiled_mmcv", "install", "mask_rcnn",
    "semantic_fpn", "upernet", "detection_config", "train_and_evaluate", "TimmBackbone", "register_backbone",
    "register_timm_backbone", "DetArm", "DetBudget", "run_detection_miniature",
]
