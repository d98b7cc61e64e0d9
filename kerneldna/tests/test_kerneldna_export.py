"""The folded KernelDNA ResNet and MobileNetV2 export with ``torch.export`` (and to ONNX where onnx is installed) and
the exported program computes what the eager folded model computes."""

import pytest
import torch
from effrepro.export import onnx_missing
from effrepro.testing import assert_export_matches, assert_onnx_matches
from kerneldna.kerneldna import fold_model
from kerneldna.models import build_model

ARCHS = ["resnet18", "mobilenetv2_050"]


@pytest.fixture(scope="module", params=ARCHS)
def folded(request):
    torch.manual_seed(0)
    model = build_model(request.param, "kerneldna", num_classes=10).eval()
    with torch.no_grad():  # non-trivial static attentions, so the folded child kernels differ from their parents
        for name, p in model.named_parameters():
            if "static" in name:
                p.add_(0.3 * torch.randn_like(p))
    return fold_model(model)


def test_torch_export_equals_the_folded_model(folded, tmp_path):
    assert_export_matches(folded, torch.randn(2, 3, 64, 64), tmp_path / "kerneldna.pt2")


@pytest.mark.skipif(onnx_missing() is not None, reason=onnx_missing() or "")
def test_onnx_export_equals_the_folded_model(folded, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    pytest.importorskip("onnxruntime")
    assert_onnx_matches(folded, torch.randn(1, 3, 64, 64), tmp_path / "kerneldna.onnx")
