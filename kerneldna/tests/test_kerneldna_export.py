"""The folded KernelDNA ResNet exports with ``torch.export`` (and to ONNX where onnx is installed) and the exported
program computes what the eager folded model computes."""

import pytest
import torch
from effrepro.export import export_onnx, export_program, onnx_missing
from kerneldna.kerneldna import fold_model
from kerneldna.models import build_model


@pytest.fixture(scope="module")
def folded():
    torch.manual_seed(0)
    model = build_model("resnet18", "kerneldna", num_classes=10).eval()
    with torch.no_grad():  # non-trivial static attentions, so the folded child kernels differ from their parents
        for name, p in model.named_parameters():
            if "static" in name:
                p.add_(0.3 * torch.randn_like(p))
    return fold_model(model)


def test_torch_export_equals_the_folded_model(folded, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = folded(x)
    program = export_program(folded, x, tmp_path / "kerneldna_r18.pt2")
    torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=1e-6)
    loaded = torch.export.load(str(tmp_path / "kerneldna_r18.pt2"))
    torch.testing.assert_close(loaded.module()(x), expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(onnx_missing() is not None, reason=onnx_missing() or "")
def test_onnx_export_equals_the_folded_model(folded, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    onnxruntime = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(folded, x, tmp_path / "kerneldna_r18.onnx")
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), folded(x), rtol=1e-4, atol=1e-4)
