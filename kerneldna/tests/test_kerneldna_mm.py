"""KernelDNA ResNets as mmdet and mmseg backbones (``kerneldna.mm``): builds, forward/backward, strict checkpoint
init, frozen stages, config files, the ``--coco`` error, and one-iteration train + eval of the det stage."""


import pytest
import torch
from effrepro.errors import UsageError
from effrepro.train import save_checkpoint

pytestmark = pytest.mark.mm


@pytest.fixture(scope="module")
def mm():
    from kerneldna import mm

    return mm


def _det_batch(model, size=64):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    samples = []
    for i in range(2):  # two images: the SE gates' BatchNorm needs more than one sample in train mode
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        masks = torch.zeros(1, size, size, dtype=torch.uint8)
        masks[0, 10 + i:40, 12:30] = 1
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[12.0, 10 + i, 30, 40]]), labels=torch.tensor([1]),
                                           masks=BitmapMasks(masks.numpy(), size, size))
        samples.append(sample)
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in samples]
    return model.data_preprocessor({"inputs": images, "data_samples": samples}, training=True)


@pytest.mark.parametrize("variant", ["kerneldna", "baseline"])
def test_backbone_in_mask_rcnn_forward_backward_predict(mm, variant):
    from effrepro.mm import build_detector, mask_rcnn

    backbone = mm.backbone(18, variant, frozen_stages=-1, norm_eval=False)
    model = build_detector(mask_rcnn(backbone, mm.stage_channels(18), num_classes=3, width=32, fc_channels=64,
                                     roi_samples=32))
    model.init_weights()
    assert model.backbone.out_channels == [64, 128, 256, 512]
    assert not any("fc." in k for k in model.backbone.state_dict())  # the classifier is gone
    losses = model(**_det_batch(model), mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses) and torch.isfinite(total)
    total.backward()
    net = model.backbone.body.model
    assert net.conv1.weight.grad.abs().sum() > 0
    if variant == "kerneldna":  # the shared parent kernel and the child adapters both learn
        assert net.layer3.conv2.weight.grad.abs().sum() > 0 and net.layer3.static_filter_attn.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(_det_batch(model)), mode="predict")
    assert out[0].pred_instances.bboxes.shape[1] == 4 and hasattr(out[0].pred_instances, "masks")


def test_backbone_in_upernet_forward_backward(mm):
    from effrepro.mm import build_segmentor
    from effrepro.mm.configs import upernet
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model = build_segmentor(upernet(mm.backbone(18, frozen_stages=-1, norm_eval=False), mm.stage_channels(18),
                                    num_classes=5, size=(64, 64), channels=64))
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 64, 64)))
        samples.append(sample)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in samples]
    losses = model(**model.data_preprocessor({"inputs": images, "data_samples": samples}, training=True), mode="loss")
    losses["decode.loss_ce"].backward()
    assert torch.isfinite(losses["decode.loss_ce"])
    assert model.backbone.body.model.layer4.conv3.weight.grad is not None


def test_checkpoint_init_is_strict_and_stages_freeze(mm, tmp_path):
    from effrepro.mm import build_detector
    from kerneldna.models import build_model

    classifier = build_model("resnet18", "kerneldna", num_classes=10)  # a `kerneldna train` model, another head
    save_checkpoint(tmp_path / "k.pt", {"model": classifier.state_dict(), "config": {}})
    model = build_detector(mm.mask_rcnn_model(18, "kerneldna", checkpoint=str(tmp_path / "k.pt"), num_classes=3))
    model.init_weights()  # mm's init must not overwrite the checkpoint
    net = model.backbone.body.model
    for key in ("conv1.weight", "layer3.conv2.weight", "layer3.static_filter_attn", "layer4.se.0.se.fc1.weight"):
        assert torch.equal(net.get_parameter(key), classifier.get_parameter(key))
    model.train()  # the COCO recipe: stem + layer1 frozen, every BatchNorm (the SE gates' too) in eval mode
    assert not net.conv1.weight.requires_grad and not net.layer1[0].conv1.weight.requires_grad
    assert net.layer2[0].conv1.weight.requires_grad and not net.layer2[0].bn1.training
    assert not net.layer3.se[0].se.bn.training

    save_checkpoint(tmp_path / "b.pt", {"model": build_model("resnet18", "baseline").state_dict()})
    with pytest.raises(UsageError, match="does not match kerneldna_resnet18"):
        mm.KernelDNAResNetBackbone(18, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "b.pt")))
    mm.KernelDNAResNetBackbone(18, "baseline", checkpoint=str(tmp_path / "b.pt"))
    with pytest.raises(UsageError, match="depth must be 18 or 50"):
        mm.backbone(34)
    with pytest.raises(UsageError, match="cannot freeze 5 stages"):
        mm.KernelDNAResNetBackbone(18, frozen_stages=5)
    with pytest.raises(UsageError, match="init_cfg"):
        mm.KernelDNAResNetBackbone(18, init_cfg=dict(type="Kaiming"))


def test_config_files_are_the_builders_output(mm):
    from pathlib import Path

    from mmengine.config import Config

    root = Path(__file__).resolve().parents[1] / "configs" / "mm"
    expected = {name: cfg for family in mm.config_files().values() for name, cfg in family.items()}
    assert {p.name for p in root.glob("*.py")} == set(expected) and len(expected) == 10
    assert {p.name for p in (root / "_base_").glob("*.py")} == set(mm.config_files())
    for name, built in expected.items():  # every file, loaded through its _base_, is the builder's output
        text = (root / name).read_text()  # (a MobileNetV2 file replaces the base's backbone dict whole)
        assert "_base_ = './_base_/" in text and len(text.splitlines()) <= (30 if "mobilenet" in name else 20), name
        assert Config.fromfile(root / name).to_dict() == Config(built).to_dict(), name
    det = Config.fromfile(root / "mask-rcnn_kerneldna-r50_fpn_1x_coco.py")
    built = mm.coco_config("data/coco", "work_dirs/mask-rcnn_kerneldna-r50_fpn_1x_coco", 50, "kerneldna",
                           "checkpoints/kerneldna_resnet50_imagenet.pt", check=False)
    assert det.to_dict() == Config(built).to_dict()
    assert det.optim_wrapper.optimizer == dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4)
    assert det.optim_wrapper.get("clip_grad") is None  # mmdet's stock R50 recipe: no gradient clipping
    assert det.model.backbone.frozen_stages == 1 and det.model.backbone.norm_eval
    assert det.model.neck.in_channels == [256, 512, 1024, 2048] and det.auto_scale_lr.base_batch_size == 16
    small = Config.fromfile(root / "mask-rcnn_baseline-r18_fpn_1x_coco.py")
    assert small.model.backbone.depth == 18 and small.model.neck.in_channels == [64, 128, 256, 512]
    mobile = Config.fromfile(root / "mask-rcnn_kerneldna-mobilenetv2_fpn_1x_coco.py")
    assert mobile.model.backbone == dict(type="KernelDNAMobileNetV2", widen_factor=1.0, variant="kerneldna",
                                         out_indices=(1, 2, 4, 7), frozen_stages=1, norm_eval=True, init_cfg=dict(
                                             type="Pretrained",
                                             checkpoint="checkpoints/kerneldna_mobilenetv2_100_imagenet.pt"))
    assert mobile.model.neck.in_channels == [24, 32, 96, 1280] and mobile.optim_wrapper == det.optim_wrapper
    seg = Config.fromfile(root / "upernet_kerneldna-r50_4xb4-160k_ade20k-512x512.py")
    assert seg.model.decode_head.type == "UPerHead" and seg.train_cfg.max_iters == 160_000
    assert Config.fromfile(root / "upernet_baseline-r18_4xb4-160k_ade20k-512x512.py").model.auxiliary_head.in_channels \
        == 256


def _mmdet_mobilenetv2(widen_factor, out_indices, frozen_stages=-1):
    from mmdet.models.backbones import MobileNetV2

    return MobileNetV2(widen_factor=widen_factor, out_indices=out_indices, frozen_stages=frozen_stages)


@pytest.mark.parametrize("widen_factor", [1.0, 0.5])
def test_mobilenetv2_backbone_has_mmdets_levels(mm, widen_factor):
    """Every one of the 8 levels has mmdet's MobileNetV2 shape, and the FPN widths the builder writes are right."""
    levels = tuple(range(8))
    ours = mm.KernelDNAMobileNetV2Backbone(widen_factor, out_indices=levels).eval()
    theirs = _mmdet_mobilenetv2(widen_factor, levels)
    theirs.eval()  # mmdet's train() returns None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in ours(x)]
        assert shapes == [tuple(t.shape) for t in theirs(x)]
    assert ours.out_channels == [s[1] for s in shapes] == mm.mobilenetv2_channels(widen_factor, levels)
    net = ours.body.model
    assert len(net.features) == 19 and isinstance(net.classifier, torch.nn.Identity)
    short = mm.KernelDNAMobileNetV2Backbone(widen_factor, out_indices=(2, 1))  # outputs in the order asked for
    assert len(short.body.model.features) == 7 and short.out_channels == mm.mobilenetv2_channels(widen_factor, (2, 1))


@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 4, 7])
def test_mobilenetv2_frozen_stages_freeze_what_mmdets_do(mm, frozen_stages):
    """The baseline variant is torchvision's MobileNetV2, the same layers as mmdet's: the same number of frozen
    parameters for every ``frozen_stages``; frozen BatchNorms stay in eval mode in training."""
    ours = mm.KernelDNAMobileNetV2Backbone(variant="baseline", out_indices=(7,), frozen_stages=frozen_stages).train()
    theirs = _mmdet_mobilenetv2(1.0, (7,), frozen_stages)
    theirs.train()

    def frozen(model):
        return sum(p.numel() for p in model.parameters() if not p.requires_grad)

    assert frozen(ours) == frozen(theirs) and (frozen(ours) > 0) == (frozen_stages >= 0)
    if frozen_stages >= 1:
        assert not ours.body.model.features[1].conv[0][1].training and ours.body.model.features[-1][1].training


def test_mobilenetv2_checkpoint_init_is_strict(mm, tmp_path):
    from kerneldna.models import build_model

    classifier = build_model("mobilenetv2_100", "kerneldna", num_classes=10)
    save_checkpoint(tmp_path / "k.pt", {"model": classifier.state_dict(), "config": {}})
    backbone = mm.KernelDNAMobileNetV2Backbone(out_indices=(1, 2, 4), checkpoint=str(tmp_path / "k.pt"))
    for key, value in backbone.body.model.state_dict().items():  # features 14-18 and the classifier are dropped
        assert torch.equal(value, classifier.state_dict()[key]), key
    assert len(backbone.body.model.features) == 14
    with pytest.raises(UsageError, match="does not match kerneldna_baseline_mobilenetv2_100"):
        mm.KernelDNAMobileNetV2Backbone(variant="baseline", checkpoint=str(tmp_path / "k.pt"))
    with pytest.raises(UsageError, match="does not match kerneldna_mobilenetv2_050"):
        mm.KernelDNAMobileNetV2Backbone(0.5, checkpoint=str(tmp_path / "k.pt"))
    for bad, match in ((dict(widen_factor=0.75), "1.0 or 0.5"), (dict(out_indices=(8,)), "range\\(0, 8\\)"),
                       (dict(frozen_stages=8), "frozen_stages"), (dict(variant="condconv"), "unknown variant")):
        with pytest.raises(UsageError, match=match):
            mm.KernelDNAMobileNetV2Backbone(**bad)
    with pytest.raises(UsageError, match="detection backbone 'vgg16'"):
        mm.mask_rcnn_model("vgg16")


def test_mobilenetv2_detector_from_the_config_file_trains_and_predicts(mm, tmp_path):
    """The shipped config file, as mmdet's tools/train.py reads it (full-size heads), builds the detector; one
    forward/backward on two random 64x64 images reaches the shared pointwise kernels and the adapters."""
    from pathlib import Path

    from effrepro.mm import build_detector
    from kerneldna.models import build_model
    from mmengine.config import Config

    save_checkpoint(tmp_path / "k.pt", {"model": build_model("mobilenetv2_100", "kerneldna").state_dict()})
    root = Path(__file__).resolve().parents[1] / "configs" / "mm"
    cfg = Config.fromfile(root / "mask-rcnn_kerneldna-mobilenetv2_fpn_1x_coco.py")
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / "k.pt")
    model = build_detector(cfg.model.to_dict())
    model.init_weights()
    model.train()
    net = model.backbone.body.model
    assert model.backbone.out_channels == [24, 32, 96, 1280] and not net.features[1].conv[0][0].weight.requires_grad
    losses = model(**_det_batch(model), mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses) and torch.isfinite(total)
    total.backward()
    cluster = net.features[10]  # layer4: a transition, two children and the parent whose pointwise kernels they share
    assert cluster.last_block.layers.pw1.weight.grad.abs().sum() > 0
    assert cluster.static_filter_attn1.grad.abs().sum() > 0 and cluster.blocks[1].se3.se.fc2.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(_det_batch(model)), mode="predict")
    assert out[0].pred_instances.bboxes.shape[1] == 4 and hasattr(out[0].pred_instances, "masks")


def test_full_scale_det_needs_a_coco_layout(tmp_path):
    from kerneldna.reproduce import REPRODUCTION

    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(UsageError, match="pass --coco"):
        REPRODUCTION.main(["--scale", "full", "--stages", "det", *out])
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    with pytest.raises(UsageError, match="COCO layout not found"):
        REPRODUCTION.main(["--scale", "full", "--stages", "det", "--coco", str(tmp_path / "coco"), *out])
    with pytest.raises(UsageError, match="KernelDNA backbones resnet18, resnet50, mobilenetv2_100"):
        REPRODUCTION.main(["--scale", "full", "--stages", "det", "--coco", str(tmp_path / "coco"), "--arch",
                           "mini", *out])
    with pytest.raises(UsageError, match="COCO layout not found"):  # MobileNetV2 is a detection backbone too
        REPRODUCTION.main(["--scale", "full", "--stages", "det", "--coco", str(tmp_path / "coco"), "--arch",
                           "mobilenetv2_100", *out])


def test_det_only_run_merges_into_the_earlier_claims(tmp_path):
    """``kerneldna reproduce --stages det`` at smoke scale (here with the tiny detection budget) keeps the main
    stage's claims and facts of the earlier claims.json and adds the det facts."""
    import dataclasses

    from effrepro.report import Claim, Fact, read_claims, write_claims

    from kerneldna import reproduce

    write_claims(tmp_path, [Claim(id="top1_gain", description="main", paper=None, measured=1.0, unit="points",
                                  baseline="b", expect="> 0", n=3, ci=(0.5, 1.5))],
                 [Fact(id="zoo_official_counts_match", description="main", value=16)])
    plan = dataclasses.replace(reproduce.PLANS["smoke"], stages=("det",), det_images=(8, 4, 1))  # seconds
    reproduce.REPRODUCTION.execute(plan, tmp_path)
    document = read_claims(tmp_path / "claims.json")
    ids = {c["id"] for c in document["claims"]} | {f["id"] for f in document["facts"]}
    assert {"top1_gain", "zoo_official_counts_match", "det_kerneldna_resnet18_bbox_ap",
            "det_kerneldna_resnet18_backbone_params_ratio"} <= ids
    assert (tmp_path / "runs" / "det_kerneldna_resnet18" / "epoch_1.pth").is_file()
    assert "Mask R-CNN" in (tmp_path / "report.md").read_text()
