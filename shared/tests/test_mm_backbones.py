import pytest
import timm
import torch
from effrepro.errors import UsageError
from effrepro.train import save_checkpoint

pytestmark = pytest.mark.mm


def test_timm_backbone_features_freezing_and_checkpoint(tmp_path):
    from effrepro.mm import TimmBackbone

    classifier = timm.create_model("resnet18", num_classes=7)
    save_checkpoint(tmp_path / "cls.pt", {"model": classifier.state_dict(), "config": {}})
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4), frozen_stages=1, checkpoint=str(tmp_path / "cls.pt"))
    assert backbone.out_channels == [64, 128, 256, 512]
    assert torch.equal(backbone.body.conv1.weight, classifier.conv1.weight)
    assert torch.equal(backbone.body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    backbone.train()
    assert not backbone.body.conv1.weight.requires_grad and not backbone.body.bn1.training
    assert not backbone.body.layer1[0].conv1.weight.requires_grad and not backbone.body.layer1[0].bn1.training
    assert backbone.body.layer2[0].conv1.weight.requires_grad and backbone.body.layer2[0].bn1.training
    with pytest.raises(UsageError, match="cannot freeze 5 stages"):
        TimmBackbone("resnet18", out_indices=(1, 2, 3, 4), frozen_stages=5)

    save_checkpoint(tmp_path / "other.pt", {"model": timm.create_model("resnet34").state_dict()})
    with pytest.raises(UsageError, match="does not match resnet18"):
        TimmBackbone("resnet18", checkpoint=str(tmp_path / "other.pt"))
    with pytest.raises(UsageError, match="out_indices"):
        TimmBackbone("fasternet_t0", out_indices=(1, 2, 3, 4))
    with pytest.raises(UsageError, match="unknown timm model"):
        TimmBackbone("no_such_net")


def test_fasternet_from_timm_inside_mask_rcnn():
    from effrepro.mm import build_detector, mask_rcnn

    backbone = dict(type="TimmBackbone", model_name="fasternet_t0", out_indices=(0, 1, 2, 3))
    model = build_detector(mask_rcnn(backbone, [40, 80, 160, 320], num_classes=10, width=32, fc_channels=64))
    feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert len(feats) == 5 and feats[0].shape[1] == 32


def test_det_facts_match_their_specs_and_the_arms():
    from effrepro.mm.miniature import det_fact_specs, det_facts

    arm = {"bbox_mAP": 0.2, "segm_mAP": 0.1, "bbox_mAP_50": 0.4, "backbone_params": 200, "backbone_flops": 1000,
           "feature_latency_ms": 30.0}
    base = {**arm, "bbox_mAP": 0.25, "backbone_params": 250, "backbone_flops": 2000, "feature_latency_ms": 40.0}
    details = {"arms": {"ours": arm, "base": base}, "baseline": "base", "seed": 0,
               "latency_round_ratios": {"ours": [0.7, 0.8, 0.9], "base": [1.0, 1.0, 1.0]}}
    facts = det_facts(details)
    specs = det_fact_specs(["ours", "base"], "base")
    assert set(facts) == {s.id for s in specs}
    assert facts["det_ours_bbox_ap_delta"] == pytest.approx(-0.05)
    assert facts["det_ours_backbone_flops_ratio"] == 0.5 and facts["det_ours_backbone_params_ratio"][0] == 0.8
    assert facts["det_ours_backbone_latency_ratio"][0] == pytest.approx(0.8)
    assert not {s.id for s in specs if s.id.endswith("_ap")} & {s.id for s in specs if s.exact}
