"""The torchvision-backed ``mmcv._ext`` fallback against torchvision directly, and real OpenMMLab models on it."""

import pytest
import torch
from torchvision import ops as tv_ops

pytestmark = pytest.mark.mm


@pytest.fixture(scope="module", autouse=True)
def fallback():
    from effrepro.mm import install

    install()


def _boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def test_nms_matches_torchvision_and_legacy_offset():
    from mmcv.ops import nms

    boxes, scores = _boxes(200)
    dets, keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, tv_ops.nms(boxes, scores, 0.5))
    assert torch.allclose(dets[:, 4], scores[keep]) and torch.allclose(dets[:, :4], boxes[keep])
    # offset=1: widths are x2 - x1 + 1; two 10x10 boxes overlapping by 5 columns -> IoU 5*10/(150)... vs +1
    a = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9]])
    s = torch.tensor([0.9, 0.8])
    iou_plus1 = (5 * 10) / (2 * 100 - 5 * 10)  # 1/3 with the legacy +1 widths
    _, keep_hi = nms(a, s, iou_plus1 - 1e-3, offset=1)
    _, keep_lo = nms(a, s, iou_plus1 + 1e-3, offset=1)
    assert keep_hi.tolist() == [0] and keep_lo.tolist() == [0, 1]
    assert nms(boxes[:0], scores[:0], 0.5)[1].numel() == 0


def test_roi_align_forward_and_backward_match_torchvision():
    from mmcv.ops import roi_align

    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.5, 2.0, 15.0, 18.0], [1, 0.0, 0.0, 23.0, 19.0], [0, 4.0, 3.0, 6.0, 9.0]],
                        dtype=torch.float64)
    for aligned, ratio in ((True, 0), (False, 2)):
        ours = roi_align(x, rois, (5, 4), 0.5, ratio, "avg", aligned)
        ref = tv_ops.roi_align(x, rois, (5, 4), 0.5, ratio, aligned)
        assert torch.allclose(ours, ref, atol=1e-12)
        g = torch.randn_like(ours)
        (ours_grad,) = torch.autograd.grad(ours, x, g)
        (ref_grad,) = torch.autograd.grad(ref, x, g)
        assert torch.allclose(ours_grad, ref_grad, atol=1e-12)
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        roi_align(x.detach(), rois, (5, 4), 0.5, 0, "max", True)


def test_other_ops_fail_clearly():
    import mmcv

    with pytest.raises(NotImplementedError, match="needs the compiled mmcv"):
        mmcv._ext.deform_conv_forward()


def _det_sample(size=64):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 10:40, 12:30] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[12.0, 10, 30, 40]]), labels=torch.tensor([1]),
                                       masks=BitmapMasks(masks.numpy(), size, size))
    return sample


def test_mask_rcnn_forward_backward_predict_on_cpu():
    from effrepro.mm import build_detector, mask_rcnn

    backbone = dict(type="ResNet", depth=18, base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3),
                    norm_cfg=dict(type="BN", requires_grad=True), style="pytorch", init_cfg=None)
    model = build_detector(mask_rcnn(backbone, [16, 32, 64, 128], num_classes=3))
    model.init_weights()
    data = model.data_preprocessor({"inputs": [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)],
                                    "data_samples": [_det_sample()]}, training=True)
    losses = model(**data, mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses) and torch.isfinite(total)
    total.backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor({"inputs": [torch.zeros(3, 64, 64, dtype=torch.uint8)],
                                               "data_samples": [_det_sample()]}), mode="predict")
    assert out[0].pred_instances.bboxes.shape[1] == 4


@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
def test_segmentors_forward_backward_on_cpu(head):
    from effrepro import mm
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    backbone = dict(type="ResNetV1c", depth=18, base_channels=16, out_indices=(0, 1, 2, 3), init_cfg=None,
                    norm_cfg=dict(type="BN", requires_grad=True))
    model = mm.build_segmentor(getattr(mm, head)(backbone, [16, 32, 64, 128], num_classes=5, size=(64, 64)))
    samples = []
    for _ in range(2):  # batch 2: UperNet's pyramid pooling has 1x1 maps that BatchNorm cannot train on alone
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 64, 64)))
        samples.append(sample)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in samples]
    data = model.data_preprocessor({"inputs": images, "data_samples": samples}, training=True)
    losses = model(**data, mode="loss")
    losses["decode.loss_ce"].backward()
    assert torch.isfinite(losses["decode.loss_ce"])
