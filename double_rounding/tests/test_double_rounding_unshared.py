"""The paper's "Ours*": one learnable weight step per precision (``quant.weight_scales=unshared``) instead of
double rounding from one shared ``s_h``. Its precisions are really separate, its file holds one code set per
precision, and evaluation from that file gives the training-time fake-quant model."""

import pytest
import torch
from double_rounding.eval import evaluate_int8
from double_rounding.integer import integer_model
from double_rounding.train import evaluate, export_model, quant_model_from_fp32, train_quantized
from effrepro.errors import UsageError
from effrepro.quant import (
    export_int8,
    load_dequantized,
    load_int8,
    payload_bytes,
    quant_layers,
    scale_groups,
    set_bits,
    split_parameters,
)

BITS = [8, 6, 4, 2]


@pytest.fixture(scope="module")
def setup(tiny_cfg, tiny_data):
    return (lambda weight_scales="unshared": tiny_cfg(weight_scales, epochs=1), *tiny_data)


def _model(setup, weight_scales="unshared"):
    config, _, _, _, fp32, calib = setup
    return quant_model_from_fp32(config(weight_scales), fp32, BITS, "half_up", calib)


@torch.no_grad()
def _outputs(model, x):
    """Logits at every precision; BN normalises by the batch (the untrained FP32 start has no running stats)."""
    model.train()
    out = {}
    for b in BITS:
        set_bits(model, b)
        out[b] = model(x)
    return out


def test_changing_one_precisions_step_leaves_the_other_precisions_unchanged(setup):
    x = setup[5][:16]
    model = _model(setup)
    before = _outputs(model, x)
    layer = quant_layers(model)[1][1]
    with torch.no_grad():
        layer.low_weight_scales["4"].mul_(1.7)
    after = _outputs(model, x)
    assert not torch.equal(after[4], before[4])
    assert all(torch.equal(after[b], before[b]) for b in (8, 6, 2))
    with torch.no_grad():  # the 8-bit step is the 8-bit precision's own as well
        layer.weight_scale.mul_(1.3)
    again = _outputs(model, x)
    assert not torch.equal(again[8], after[8]) and all(torch.equal(again[b], after[b]) for b in (6, 4, 2))
    # the shared model, by contrast: s_h sets every precision's step
    shared = _model(setup, "shared")
    base = _outputs(shared, x)
    with torch.no_grad():
        quant_layers(shared)[1][1].weight_scale.mul_(1.7)
    moved = _outputs(shared, x)
    assert all(not torch.equal(moved[b], base[b]) for b in BITS)


def test_each_precision_has_its_own_initialised_step_and_gets_only_its_own_gradient(setup):
    model = _model(setup)
    layer = quant_layers(model)[0][1]
    steps = {b: float(layer.weight_scale_at(b).detach()) for b in BITS}
    assert len(set(steps.values())) == 4 and all(s > 0 for s in steps.values())
    _, scales = split_parameters(model)
    assert {id(p) for p in layer.weight_scale_params()} <= {id(p) for p in scales}
    model.train()
    set_bits(model, 2)
    model(setup[5][:8]).sum().backward()
    assert layer.low_weight_scales["2"].grad is not None
    assert all(layer.weight_scale_at(b).grad is None for b in (8, 6, 4))
    assert [g[0] for g in scale_groups(model, 2)][0] is layer.low_weight_scales["2"]
    # the fake-quant weight at b is an LSQ quantisation at b bits with b's own step: at most 2^b levels
    for b in BITS:
        codes = layer.codes(b).int()
        assert torch.equal(layer.quantized_weight(b).detach(), codes.float() * layer.weight_scale_at(b).detach())
        assert codes.min() >= -(2 ** (b - 1)) and codes.max() < 2 ** (b - 1)


def test_file_holds_one_code_set_per_precision_and_evaluates_like_training(setup):
    config, _, _, test, _, _ = setup
    model = _model(setup)
    artefact = export_int8(model, {"model": config().model.__dict__}, BITS)
    assert set(artefact["low_codes"][quant_layers(model)[0][0]]) == {"6", "4", "2"}
    parts = payload_bytes(artefact)
    assert parts["low_codes"] == 3 * parts["codes"]  # one int8 code set per precision
    rebuilt = _model(setup)
    for b in BITS:
        load_dequantized(rebuilt, artefact, b)
        for (name, trained), (_, loaded) in zip(quant_layers(model), quant_layers(rebuilt)):
            assert torch.equal(trained.quantized_weight(b).detach(), loaded.weight), (name, b)
    rows = evaluate_int8(artefact, test, BITS)
    for b, row in zip(BITS, rows):
        assert row["top1"] == evaluate(model, test, b)["top1"]
    with pytest.raises(UsageError, match="unshared"):
        integer_model(artefact, 4)
    shared = export_int8(_model(setup, "shared"), {"model": config().model.__dict__}, BITS)
    with pytest.raises(UsageError, match="weight_scales"):
        load_dequantized(_model(setup), shared, 8)


def test_trains_with_one_step_per_precision_and_exports(setup, tmp_path):
    config, dist, train, test, fp32, calib = setup
    cfg = config()
    model = quant_model_from_fp32(cfg, fp32, BITS, "half_up", calib)
    layer = quant_layers(model)[0][1]
    start = {b: float(layer.weight_scale_at(b).detach()) for b in BITS}
    result = train_quantized(cfg, model, cfg.multi, train, tmp_path / "run", dist, "multi", progress=False)
    assert all(float(layer.weight_scale_at(b).detach()) != start[b] for b in BITS)  # every precision's step learns
    assert result["history"]
    path = export_model(model, cfg, tmp_path / "model.int8.pt", BITS)
    rows = evaluate_int8(load_int8(path), test, BITS)
    assert [r["top1"] for r in rows] == [evaluate(model, test, b)["top1"] for b in BITS]
