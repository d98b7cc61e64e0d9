"""The deployed (fused) PartialNet exports with ``torch.export`` (and to ONNX where onnx is installed) and the
exported program computes what the eager deploy form computes."""

import pytest
import timm
import torch
from effrepro.export import onnx_missing
from effrepro.testing import assert_export_matches, assert_onnx_matches
from partialnet.deploy import deploy_copy, randomize_bn_statistics


@pytest.fixture(scope="module")
def deployed():
    torch.manual_seed(0)
    model = randomize_bn_statistics(timm.create_model("partialnet_t1", num_classes=10), 0).eval()  # PAT_ch/sp/sf
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rpe_bias"):
                p.copy_(torch.randn_like(p))
    return deploy_copy(model)


def test_torch_export_equals_the_deploy_form(deployed, tmp_path):
    assert_export_matches(deployed, torch.randn(2, 3, 64, 96), tmp_path / "partialnet_t1.pt2")


@pytest.mark.skipif(onnx_missing() is not None, reason=onnx_missing() or "")
def test_onnx_export_equals_the_deploy_form(deployed, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    pytest.importorskip("onnxruntime")
    assert_onnx_matches(deployed, torch.randn(1, 3, 64, 64), tmp_path / "partialnet_t1.onnx")
