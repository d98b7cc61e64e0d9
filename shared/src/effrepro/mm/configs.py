"""Model configs the papers' detection / segmentation tables use, parameterised by the backbone.

``mask_rcnn(...)`` is mmdet's ``mask-rcnn_r50_fpn_1x_coco`` model with the backbone and its output widths
swapped in (the PartialNet / KernelDNA / FasterNet detection tables all use this head); ``semantic_fpn`` and
``upernet`` are mmseg's heads for the segmentation tables.
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def _rpn_head(width: int) -> dict[str, Any]:
    return dict(
        type="RPNHead", in_channels=width, feat_channels=width,
        anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    )


def _roi_head(num_classes: int, width: int, fc_channels: int) -> dict[str, Any]:
    def extractor(size: int) -> dict[str, Any]:
        return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                    out_channels=width, featmap_strides=[4, 8, 16, 32])

    return dict(
        type="StandardRoIHead",
        bbox_roi_extractor=extractor(7),
        bbox_head=dict(
            type="Shared2FCBBoxHead", in_channels=width, fc_out_channels=fc_channels, roi_feat_size=7,
            num_classes=num_classes,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        mask_roi_extractor=extractor(14),
        mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=width, conv_out_channels=width,
                       num_classes=num_classes,
                       loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0)),
    )


def _assigner(pos: float, neg: float, min_pos: float) -> dict[str, Any]:
    return dict(type="MaxIoUAssigner", pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=min_pos,
                match_low_quality=True, ignore_iof_thr=-1)


def mask_rcnn(backbone: dict[str, Any], in_channels: list[int], num_classes: int = 80, width: int = 256,
              fc_channels: int = 1024, roi_samples: int = 512) -> dict[str, Any]:
    """Mask R-CNN + FPN (mmdet 3.x model dict) around ``backbone`` whose 4 outputs have ``in_channels``.

    The defaults are the paper configs' (FPN/head width 256, 1024-wide box FCs, 512 sampled RoIs); CPU
    miniatures shrink ``width``, ``fc_channels`` and ``roi_samples`` and say so.
    """
    nms = dict(type="nms", iou_threshold=0.7)
    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True,
                               pad_mask=True, pad_size_divisor=32),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=list(in_channels), out_channels=width, num_outs=5),
        rpn_head=_rpn_head(width),
        roi_head=_roi_head(num_classes, width, fc_channels),
        train_cfg=dict(
            rpn=dict(assigner=_assigner(0.7, 0.3, 0.3),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=nms, min_bbox_size=0),
            rcnn=dict(assigner=_assigner(0.5, 0.5, 0.5),
                      sampler=dict(type="RandomSampler", num=roi_samples, pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False),
        ),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=nms, min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5),
        ),
    )


def _seg_preprocessor(size: tuple[int, int] | None) -> dict[str, Any]:
    return dict(type="SegDataPreProcessor", mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True, pad_val=0,
                seg_pad_val=255, size=size)


def semantic_fpn(backbone: dict[str, Any], in_channels: list[int], num_classes: int,
                 size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Semantic FPN (mmseg ``fpn_r50``; the FasterNet / PVT segmentation protocol) around ``backbone``."""
    return dict(
        type="EncoderDecoder",
        data_preprocessor=_seg_preprocessor(size),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=list(in_channels), out_channels=256, num_outs=4),
        decode_head=dict(type="FPNHead", in_channels=[256] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
                         channels=128, dropout_ratio=0.1, num_classes=num_classes,
                         norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def upernet(backbone: dict[str, Any], in_channels: list[int], num_classes: int,
            size: tuple[int, int] | None = None, channels: int = 512) -> dict[str, Any]:
    """UperNet (mmseg ``upernet_r50``) around ``backbone``; plain BN instead of SyncBN for single-process runs."""
    norm = dict(type="BN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=_seg_preprocessor(size),
        backbone=backbone,
        decode_head=dict(type="UPerHead", in_channels=list(in_channels), in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=channels, dropout_ratio=0.1, num_classes=num_classes,
                         norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def build_detector(cfg: dict[str, Any]) -> Any:
    """Build an mmdet model from a model dict (fallback ops installed, registries populated)."""
    from effrepro.mm.backbones import register_timm_backbone
    from effrepro.mm.mmcv_fallback import install

    install()
    register_timm_backbone()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(ConfigDict(cfg))


def build_segmentor(cfg: dict[str, Any]) -> Any:
    """Build an mmseg model from a model dict (fallback ops installed, registries populated)."""
    from effrepro.mm.backbones import register_timm_backbone
    from effrepro.mm.mmcv_fallback import install

    install()
    register_timm_backbone()
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(ConfigDict(cfg))
