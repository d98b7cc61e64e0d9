"""PartialNet / FasterNet as mmdet and mmseg backbones (``partialnet.mm``): builds, forward/backward, strict
checkpoint init, frozen stages, the config files and the ``--coco`` error."""

import pytest
import timm
import torch
from effrepro.errors import UsageError
from effrepro.train import save_checkpoint

pytestmark = pytest.mark.mm


@pytest.fixture(scope="module")
def mm():
    from partialnet import mm

    return mm


def _det_batch(model, size=64):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    samples = []
    for i in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        masks = torch.zeros(1, size, size, dtype=torch.uint8)
        masks[0, 10 + i:40, 12:30] = 1
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[12.0, 10 + i, 30, 40]]), labels=torch.tensor([1]),
                                           masks=BitmapMasks(masks.numpy(), size, size))
        samples.append(sample)
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in samples]
    return model.data_preprocessor({"inputs": images, "data_samples": samples}, training=True)


@pytest.mark.parametrize("family", ["partialnet", "fasternet"])
def test_backbone_in_mask_rcnn_forward_backward_predict(mm, family):
    from effrepro.mm import build_detector, mask_rcnn

    backbone = mm.backbone("t0", family)
    assert backbone["type"] == {"partialnet": "PartialNet", "fasternet": "FasterNet"}[family]
    model = build_detector(mask_rcnn(backbone, mm.stage_channels("t0", family), num_classes=3, width=32,
                                     fc_channels=64, roi_samples=32))
    model.init_weights()
    assert model.backbone.out_channels == mm.stage_channels("t0", family)
    losses = model(**_det_batch(model), mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses) and torch.isfinite(total)
    total.backward()
    assert model.backbone.body.patch_embed.proj.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(_det_batch(model)), mode="predict")
    assert out[0].pred_instances.bboxes.shape[1] == 4 and hasattr(out[0].pred_instances, "masks")


def test_backbone_in_semantic_fpn_forward_backward(mm):
    from effrepro.mm import build_segmentor
    from effrepro.mm.configs import semantic_fpn
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model = build_segmentor(semantic_fpn(mm.backbone("t0"), mm.stage_channels("t0"), num_classes=5, size=(64, 64)))
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 64, 64)))
        samples.append(sample)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in samples]
    losses = model(**model.data_preprocessor({"inputs": images, "data_samples": samples}, training=True), mode="loss")
    losses["decode.loss_ce"].backward()
    assert torch.isfinite(losses["decode.loss_ce"])
    assert model.backbone.body.stages_3.blocks[0].mlp[0].weight.grad is not None


def test_checkpoint_init_is_strict_and_stages_freeze(mm, tmp_path):
    from effrepro.mm import build_detector

    classifier = timm.create_model("partialnet_t0", num_classes=7)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in classifier.state_dict().items()}
    save_checkpoint(tmp_path / "pn.pt", {"model": classifier.state_dict(), "ema": ema})  # EMA weights preferred
    cfg = mm.mask_rcnn_model("t0", checkpoint=str(tmp_path / "pn.pt"), num_classes=3)
    cfg["backbone"]["frozen_stages"] = 1
    model = build_detector(cfg)
    model.init_weights()  # mm's init must not overwrite the checkpoint
    body = model.backbone.body
    assert torch.equal(body.patch_embed.proj.weight, ema["patch_embed.proj.weight"])
    assert torch.equal(body.stages_2.blocks[3].mlp[0].weight, ema["stages.2.blocks.3.mlp.0.weight"])
    model.train()
    assert not body.patch_embed.proj.weight.requires_grad and not body.stages_0.blocks[0].mlp[0].weight.requires_grad
    assert body.stages_1.blocks[0].mlp[0].weight.requires_grad
    assert not any(m.training for m in body.stages_0.modules()) and body.stages_1.training

    save_checkpoint(tmp_path / "fn.pt", {"model": timm.create_model("fasternet_t0").state_dict()})
    with pytest.raises(UsageError, match="does not match partialnet_t0"):
        mm.PartialNetBackbone("t0", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "fn.pt")))
    save_checkpoint(tmp_path / "t1.pt", {"model": timm.create_model("partialnet_t1").state_dict()})
    with pytest.raises(UsageError, match="does not match partialnet_t0"):
        mm.PartialNetBackbone("t0", checkpoint=str(tmp_path / "t1.pt"))
    with pytest.raises(UsageError, match="checkpoint not found"):
        mm.PartialNetBackbone("t0", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(UsageError, match="unknown arch"):
        mm.backbone("t9")


def test_config_files_are_the_builders_output(mm):
    from pathlib import Path

    from effrepro.mm import build_detector
    from mmengine.config import Config

    root = Path(__file__).resolve().parents[1] / "configs" / "mm"
    expected = {name: cfg for family in mm.config_files().values() for name, cfg in family.items()}
    assert {p.name for p in root.glob("*.py")} == set(expected) and len(expected) == 15
    assert {p.name for p in (root / "_base_").glob("*.py")} == set(mm.config_files())
    for name, built in expected.items():  # every file, loaded through its _base_, is the builder's output
        text = (root / name).read_text()
        assert "_base_ = './_base_/" in text and len(text.splitlines()) <= 20, name
        assert Config.fromfile(root / name).to_dict() == Config(built).to_dict(), name
    det = Config.fromfile(root / "mask-rcnn_partialnet-t2_fpn_1x_coco.py")
    assert det.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-4, weight_decay=1e-4)
    assert det.optim_wrapper.clip_grad is None  # the paper's recipe: no gradient clipping
    assert det.train_cfg.max_epochs == 12 and det.param_scheduler[1].milestones == [8, 11]
    assert det.model.neck.in_channels == [64, 128, 256, 512] and det.model.backbone.type == "PartialNet"
    small = Config.fromfile(root / "mask-rcnn_fasternet-t0_fpn_1x_coco.py")
    assert small.model.backbone.type == "FasterNet" and small.model.neck.in_channels == [40, 80, 160, 320]
    model_cfg = det.model.to_dict()
    assert model_cfg["backbone"].pop("init_cfg") == dict(type="Pretrained",
                                                         checkpoint="checkpoints/partialnet_t2_imagenet.pt")
    assert build_detector(model_cfg).backbone.arch == "t2"  # the file's model dict builds as is
    seg = Config.fromfile(root / "fpn_partialnet-s_40k_ade20k-512x512.py")
    assert seg.model.backbone.arch == "s" and seg.model.neck.in_channels == [96, 192, 384, 768]


def test_full_scale_det_needs_a_coco_layout(tmp_path):
    from partialnet.reproduce import REPRODUCTION

    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(UsageError, match="pass --coco"):
        REPRODUCTION.main(["--scale", "full", "--stages", "det", *out])
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    with pytest.raises(UsageError, match="COCO layout not found.*instances_train2017.json"):
        REPRODUCTION.main(["--scale", "full", "--stages", "det", "--coco", str(tmp_path / "coco"), *out])
    with pytest.raises(UsageError, match="COCO layout not found"):
        REPRODUCTION.main(["--scale", "full", "--data", "/imagenet", "--coco", str(tmp_path / "nowhere"), *out])
    with pytest.raises(UsageError, match="--stages"):
        REPRODUCTION.main(["--stages", "main,seg", *out])
