"""The official zoo: exact parameter / MAC parity, official key names, timm registration, features."""

from __future__ import annotations

import pytest
import timm
import torch
from effrepro.bench import count_flops, count_params
from effrepro.errors import UsageError
from kerneldna.models import OFFICIAL_COUNTS, build_model

import kerneldna  # noqa: F401  (registers the timm models)


@pytest.mark.parametrize("arch,variant", sorted(OFFICIAL_COUNTS))
def test_official_parameter_and_mac_parity(arch, variant):
    params, macs = OFFICIAL_COUNTS[(arch, variant)]
    with torch.device("meta"):  # exact counts without allocating or computing anything
        model = build_model(arch, variant)
        assert count_params(model) == params
        assert count_flops(model, torch.empty(1, 3, 224, 224)) == 2 * macs


def test_official_counts_are_the_spec_integers():
    # the official code's counts, written out here so a change to OFFICIAL_COUNTS cannot silently move the target
    assert [OFFICIAL_COUNTS[(a, "kerneldna")][0] for a in ("resnet18", "resnet50", "mobilenetv2_100",
                                                            "mobilenetv2_050")] == [9240798, 22778060, 3136840,
                                                                                    1878232]
    assert [OFFICIAL_COUNTS[(a, "kerneldna")][1] for a in ("resnet18", "resnet50", "mobilenetv2_100",
                                                            "mobilenetv2_050")] == [2276986880, 4307779584,
                                                                                    300928384, 97170368]
    assert [OFFICIAL_COUNTS[(a, "baseline")][0] for a in ("resnet18", "resnet50", "mobilenetv2_100",
                                                           "mobilenetv2_050")] == [11689512, 25557032, 3504872,
                                                                                   1968680]


def test_state_dict_keys_follow_the_official_names():
    with torch.device("meta"):
        r18 = build_model("resnet18").state_dict()
        r50 = build_model("resnet50").state_dict()
        mb = build_model("mobilenetv2_100").state_dict()
    for key in ("layer3.se.0.se.fc1.weight", "layer3.bns.0.weight", "layer3.static_filter_attn",
                "layer3.static_spatial_attn", "layer4.conv3.weight", "layer3.downsample.0.weight"):
        assert key in r18, key
    assert tuple(r18["layer4.static_filter_attn"].shape) == (3, 512, 1, 1, 1)
    for key in ("layer3.static_filter_attn", "layer4.static_filter_attn2", "layer4.static_spatial_attn",
                "layer3.kids.0.half1.se.se.fc2.bias", "layer3.parents.2.layers.conv2.weight",
                "layer4.last_block.layers.conv2.weight", "layer4.block0.downsample.conv.weight"):
        assert key in r50, key
    for key in ("features.6.static_filter_attn1", "features.10.blocks.1.se3.se.fc1.weight",
                "features.16.last_block.layers.pw2.weight", "features.13.transition.layers.dw.weight"):
        assert key in mb, key
    assert not any(k.startswith("features.4.") for k in mb)


def test_timm_registration_and_features_only():
    model = timm.create_model("kerneldna_resnet18", num_classes=10)
    assert model.fc.out_features == 10
    assert count_params(timm.create_model("kerneldna_baseline_mobilenetv2_050")) == 1968680
    feats = timm.create_model("kerneldna_resnet50", features_only=True, out_indices=(1, 2, 3)).eval()
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels() == [512, 1024, 2048]
    assert [64 // o.shape[-1] for o in outs] == feats.feature_info.reduction() == [8, 16, 32]
    with pytest.raises(UsageError, match="no KernelDNA checkpoints"):
        timm.create_model("kerneldna_resnet18", pretrained=True)


def test_stage_shapes_equal_torchvision():
    import torchvision

    x = torch.randn(1, 3, 64, 64)
    ours = build_model("mobilenetv2_100").eval()
    ref = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():
        y = x
        shapes = []
        for i, m in enumerate(ref.features):
            y = m(y)
            if i in ours.stage_ends:
                shapes.append(y.shape)
        assert [o.shape for o in ours.forward_stages(x)] == shapes


def test_build_model_rejects_bad_names():
    with pytest.raises(UsageError, match="unknown arch"):
        build_model("vgg16")
    with pytest.raises(UsageError, match="unknown variant"):
        build_model("resnet18", "kwarehouse")
    with pytest.raises(UsageError, match="samedepth"):
        build_model("resnet50", "samedepth")


def test_dynamic_variants_replace_the_shared_positions():
    from kerneldna.dynamic import CondConv, ODConv2d

    with torch.device("meta"):
        cond = build_model("resnet18", "condconv")
        od = build_model("mobilenetv2_050", "odconv")
    n_cond = sum(isinstance(m, CondConv) for m in cond.modules())
    assert n_cond == 8  # the 3x3 convs of layer3 and layer4
    assert sum(isinstance(m, ODConv2d) for m in od.modules()) == 2 * 13  # 13 blocks x (pw1, pw2)
