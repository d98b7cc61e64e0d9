"""The deployed (fused) PartialNet exports with ``torch.export`` (and to ONNX where onnx is installed) and the
exported program computes what the eager deploy form computes."""

import pytest
import timm
import torch
from effrepro.export import export_onnx, export_program, onnx_missing
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
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = deployed(x)
    program = export_program(deployed, x, tmp_path / "partialnet_t1.pt2")
    torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=1e-6)
    loaded = torch.export.load(str(tmp_path / "partialnet_t1.pt2"))
    torch.testing.assert_close(loaded.module()(x), expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(onnx_missing() is not None, reason=onnx_missing() or "")
def test_onnx_export_equals_the_deploy_form(deployed, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    onnxruntime = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(deployed, x, tmp_path / "partialnet_t1.onnx")
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), deployed(x), rtol=1e-4, atol=1e-4)
