"""``convert``: parent/child groups in standard torchvision / timm CNNs, and its errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from effrepro.bench import count_params
from effrepro.errors import UsageError
from kerneldna.convert import auto_share_groups, check_sharing, convert, sharing_groups
from kerneldna.kerneldna import ChildConv2d, fold_model
from torch import nn


def _adapter_params(channels: int, k: int = 3, r: int = 4) -> int:
    hidden = channels // r
    se = channels * hidden + 2 * hidden + hidden * channels + channels
    return channels + k * k + se


def test_auto_groups_follow_the_official_rule():
    model = torchvision.models.resnet18()
    groups = auto_share_groups(model, ["layer3", "layer4"])
    assert groups == {"layer3.1.conv2": ["layer3.0.conv2", "layer3.1.conv1"],
                      "layer4.1.conv2": ["layer4.0.conv2", "layer4.1.conv1"]}


def test_convert_torchvision_resnet18_counts_and_shapes():
    model = torchvision.models.resnet18()
    before = count_params(model)
    convert(model, stages=["layer3", "layer4"])
    removed = 2 * 256 * 256 * 9 + 2 * 512 * 512 * 9
    expected = before - removed + 2 * _adapter_params(256) + 2 * _adapter_params(512)
    assert count_params(model) == expected
    assert isinstance(model.layer3[0].conv2, ChildConv2d)
    assert model.layer3[0].conv2.parent is model.layer3[1].conv2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_convert_timm_model_and_fold_equivalence():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4)
    convert(model, stages=["layer4"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "static_" in name:
                p.normal_(0, 0.2)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(fold_model(model)(x), reference)


def test_static_zero_init_child_equals_parent_conv_with_own_stride():
    parent = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    model = nn.Sequential(parent, nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=True))
    with torch.no_grad():
        bias = model[2].bias.clone()
    convert(model, {"0": ["2"]}, dynamic=False)
    child = model[2]
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(child(x), F.conv2d(x, parent.weight, bias, stride=2, padding=1))


def test_deepcopy_and_dtype_keep_sharing_by_reference():
    model = torchvision.models.resnet18()
    convert(model, stages=["layer3"])
    clone = copy.deepcopy(model).double()
    assert clone.layer3[0].conv2.parent is clone.layer3[1].conv2
    assert clone.layer3[0].conv2.parent.weight.dtype == torch.float64
    assert clone.layer3[0].conv2.static_filter_attn.dtype == torch.float64
    assert count_params(clone) == count_params(model)


@pytest.mark.parametrize("groups,match", [
    ({"layer3.1.conv2": ["layer1.0.conv1"]}, "layer1.0.conv1.*exact kernel shape"),
    ({"layer3.1.conv2": ["fc"]}, "'fc' is a Linear, which cannot be shared"),
    ({"layer3.1.conv2": ["layer3.1.bn2"]}, "BatchNorm2d, which cannot be shared"),
    ({"layer3.1.conv2": ["layer9.0.conv1"]}, "'layer9.0.conv1' not found"),
    ({"layer3.1.conv2": ["layer3.0.conv2"], "layer3.1.conv1": ["layer3.0.conv2"]}, "appears twice"),
    ({"layer3.1.conv2": []}, "has no children"),
])
def test_convert_errors_name_the_layer(groups, match):
    model = torchvision.models.resnet18()
    with pytest.raises(UsageError, match=match):
        convert(model, groups)
    assert not any(isinstance(m, ChildConv2d) for m in model.modules())  # nothing half-converted


def test_convert_rejects_convs_that_are_not_plain():
    from timm.layers import StdConv2d

    model = nn.Sequential(StdConv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(UsageError, match="StdConv2d, which cannot be shared"):
        convert(model, {"0": ["1"]})
    with pytest.raises(UsageError, match="needs groups"):
        convert(model)


def test_sharing_groups_and_mismatch_error():
    model = torchvision.models.resnet18()
    convert(model, stages=["layer4"])
    groups = sharing_groups(model)
    assert groups == {"layer4.1.conv2": ["layer4.0.conv2", "layer4.1.conv1"]}
    check_sharing(groups, model)
    other = torchvision.models.resnet18()
    convert(other, {"layer4.1.conv2": ["layer4.0.conv2"]})
    with pytest.raises(UsageError, match="layer4.1.conv2"):
        check_sharing(groups, other)
