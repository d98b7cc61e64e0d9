"""Integer inference from the one int8 file (double_rounding.integer) against the de-quantised / fake-quant model."""

from __future__ import annotations

import pytest
import torch
from double_rounding.integer import (
    IntegerLayer,
    compare_outputs,
    float_weight_bytes,
    integer_model,
    layerwise_agreement,
    weight_bytes,
)
from double_rounding.models import ModelConfig, build_quant_model
from effrepro.errors import UsageError
from effrepro.quant import calibrate, export_int8, load_dequantized, set_bits
from effrepro.train import seed_everything

BITS = [8, 6, 4, 2]
LAYER_TOL = 1e-5  # per layer, same input: float summation error only (the integer product is exact)


def _artefact(cfg: ModelConfig, batch: int = 4) -> tuple[dict, torch.Tensor]:
    seed_everything(0)
    model = build_quant_model(cfg, BITS)
    x = torch.randn(batch, cfg.in_channels, *cfg.input_size)
    calibrate(model, x, scale_init="lsq")
    # non-trivial running statistics, so BatchNorm does not hide differences
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return export_int8(model, {"model": cfg.__dict__}, BITS), x


@pytest.fixture(scope="module")
def resnet() -> tuple[dict, torch.Tensor, ModelConfig]:
    cfg = ModelConfig(arch="resnet18", num_classes=10, in_channels=3, input_size=[32, 32])
    artefact, x = _artefact(cfg)
    return artefact, x, cfg


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_resnet18_integer_matches_dequantized(resnet: tuple[dict, torch.Tensor, ModelConfig], bits: int) -> None:
    artefact, x, cfg = resnet
    deq = load_dequantized(build_quant_model(cfg, BITS), artefact, bits).eval()
    model = integer_model(artefact, bits)
    layers = [m for m in model.modules() if isinstance(m, IntegerLayer)]
    assert len(layers) == len(artefact["codes"]) and not any(hasattr(m, "weight") for m in layers)
    errors = layerwise_agreement(deq, model, x)
    assert len(errors) == len(layers) and max(errors.values()) <= LAYER_TOL, errors
    with torch.no_grad():
        agreement = compare_outputs(deq(x), model(x))
    # end to end, a float-summation difference can flip an activation code on a rounding boundary
    assert agreement["top1_agreement"] == 1.0 and agreement["max_rel_diff"] < 0.05, agreement
    packed = integer_model(artefact, bits, packed=True)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
    fp = float_weight_bytes(deq)["resident"]
    packed_bytes, store_bytes = weight_bytes(packed), weight_bytes(model)
    per_byte = {8: 1, 4: 2, 2: 4}[bits]
    assert packed_bytes["stored"] == packed_bytes["resident"]  # the packed form caches nothing
    assert abs(packed_bytes["stored"] / fp - 0.25 / per_byte) < 0.01  # FP32 -> int8 -> two / four codes per byte
    assert abs(store_bytes["stored"] / fp - 0.25) < 0.01
    assert abs(store_bytes["resident"] / fp - (0.25 if bits == 8 else 0.5)) < 0.01  # + the cached b-bit codes


def test_switching_bits_and_packed_limits(resnet: tuple[dict, torch.Tensor, ModelConfig]) -> None:
    artefact, x, cfg = resnet
    model = integer_model(artefact, 8)
    set_bits(model, 2)
    fresh = integer_model(artefact, 2)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    packed = integer_model(artefact, 4, packed=True)
    with pytest.raises(UsageError):
        set_bits(packed, 2)
    with pytest.raises(UsageError):
        integer_model(artefact, {"x": 4}, packed=True)


def test_tiny_cnn_mixed_config_and_kernel_backends() -> None:
    cfg = ModelConfig()
    artefact, x = _artefact(cfg, batch=8)
    layers = list(artefact["codes"])
    config = {name: BITS[i % 4] for i, name in enumerate(layers)}
    deq = load_dequantized(build_quant_model(cfg, BITS), artefact, config).eval()
    for backend in ("int_mm", "reference"):
        model = integer_model(artefact, config, backend=backend)
        errors = layerwise_agreement(deq, model, x)
        assert max(errors.values()) <= LAYER_TOL, (backend, errors)


def test_bench_integer_small_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from double_rounding import bench_integer

    out = tmp_path / "r.json"
    assert bench_integer.main(["--size", "32", "--batch", "2", "--repeats", "2", "--warmup", "1", "--bits", "4",
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["ms"]) == {"fp32", "dequantized_w4", "integer_w4", "integer_packed_w4"}
    assert result["quantised_layer_bytes_over_fp32"]["integer_packed_w4"]["resident"] == pytest.approx(0.125, abs=0.005)
    assert result["agreement"]["w4"]["max_layer_rel_diff"] <= LAYER_TOL
    assert "integer_w4 / fp32" in capsys.readouterr().out
