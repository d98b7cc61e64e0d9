import dataclasses
import json

import double_rounding.train as train_module
import pytest
import torch
from double_rounding.cli import run
from double_rounding.double_rounding import BitSampler
from double_rounding.eval import evaluate_int8, parse_config
from double_rounding.train import (
    PrecisionStep,
    evaluate,
    export_model,
    first_batches,
    make_optimizers,
    posthoc_switch,
    quant_model_from_fp32,
    train_quantized,
)
from effrepro.errors import UsageError
from effrepro.quant import load_int8, to_transitional
from effrepro.train import seed_everything


@pytest.fixture(scope="module")
def setup(tiny_cfg, tiny_data):
    return (tiny_cfg(), *tiny_data)


def _model(setup, bits=(8, 6, 4, 2), tie="half_up"):
    cfg, _, _, _, fp32, calib = setup
    seed_everything(1)
    return quant_model_from_fp32(cfg, fp32, list(bits), tie, calib)


def test_alrs_changes_only_the_scale_lr(setup):
    cfg, dist, train, *_ = setup
    model = _model(setup)
    opt_w, opt_s = make_optimizers(model, cfg.multi)
    step = PrecisionStep(model, opt_s, cfg.multi, [8, 6, 4, 2], dist)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = step(model, next(iter(train)), opt_w)
    assert set(metrics) == {"loss_w8", "loss_w6", "loss_w4", "loss_w2"}
    assert opt_w.param_groups[0]["lr"] == cfg.multi.lr
    assert opt_s.param_groups[0]["lr"] == pytest.approx(0.001 * cfg.multi.lr)  # last step: 2 bits, D = 6
    assert step.alrs.steps == {8: 1, 6: 1, 4: 1, 2: 1}
    assert step.clamped_scales == 0
    after = model.state_dict()
    for b in (8, 6, 4, 2):  # every precision's BN copy and activation scale moved
        bn = f"features.4.norms.{b}.running_mean"
        assert not torch.equal(before[bn], after[bn])
        assert not torch.equal(before[f"features.3.act_quant.scale.{b}"], after[f"features.3.act_quant.scale.{b}"])


def test_resume_equals_uninterrupted(setup, tmp_path, monkeypatch):
    cfg, dist, train, *_ = setup
    full = _model(setup)
    train_quantized(cfg, full, cfg.multi, train, tmp_path / "full", dist, "multi", progress=False)
    original = PrecisionStep.__call__
    steps = len(train)

    def crash(self, model, batch, optimizer):
        if self.step_count == steps:
            raise KeyboardInterrupt
        return original(self, model, batch, optimizer)

    monkeypatch.setattr(PrecisionStep, "__call__", crash)
    with pytest.raises(KeyboardInterrupt):
        train_quantized(cfg, _model(setup), cfg.multi, train, tmp_path / "cut", dist, "multi", progress=False)
    monkeypatch.setattr(PrecisionStep, "__call__", original)
    resumed = _model(setup)
    train_quantized(cfg, resumed, cfg.multi, train, tmp_path / "cut", dist, "multi", progress=False)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_int8_eval_equals_in_memory_eval_and_posthoc(setup, tmp_path):
    cfg, dist, train, test, _, calib = setup
    cfg.multi.epochs = 1
    model = _model(setup)
    train_quantized(cfg, model, cfg.multi, train, tmp_path / "m", dist, "multi", progress=False)
    path = export_model(model, cfg, tmp_path / "m.int8.pt", [8, 6, 4, 2])
    rows = evaluate_int8(load_int8(path), test, [8, 6, 4, 2, {n: b for n, b in zip(model.quant_graph.layers,
                                                                                      [8, 2, 4, 6, 8])}])
    for row, config in zip(rows, [8, 6, 4, 2]):
        assert row["top1"] == evaluate(model, test, config)["top1"]
        assert row["nll"] == pytest.approx(evaluate(model, test, config)["nll"], rel=1e-6)
    cfg.multi.train_bits = [8]
    only8 = _model(setup)
    train_quantized(cfg, only8, cfg.multi, train, tmp_path / "p", dist, "multi", progress=False)
    cfg.multi.train_bits = None
    acc8 = evaluate(only8, test, 8)
    assert only8.features[3].act_quant.initialized.tolist() == [True, True, True, True]
    bits = posthoc_switch(only8, cfg, calib, first_batches(train, 2), 8)
    assert bits == [8, 6, 4, 2]
    assert evaluate(only8, test, 8) == acc8  # the trained precision is untouched
    cfg.multi.epochs = 2


def test_supernet_step_runs_mixed_configs(setup):
    cfg, dist, train, *_ = setup
    model = to_transitional(_model(setup))
    sampler = BitSampler(model.quant_graph.layers, [8, 6, 4, 2], None, "uniform")
    tc = dataclasses.replace(cfg.supernet, epochs=1)  # sigma = sigma0 (e + 1) / E = 1
    opt_w, opt_s = make_optimizers(model, tc)
    step = PrecisionStep(model, opt_s, tc, [8, 6, 4, 2], dist, sampler, sigma0=1.0, steps_per_epoch=100)
    seen = set()
    for _ in range(3):
        step(model, next(iter(train)), opt_w)
        seen.update(m.active for m in model.modules() if hasattr(m, "norms"))
    assert any(a.split("_")[0] != a.split("_")[1] for a in seen)  # transitional pairs were used


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    cfg, dist, train, test, _, calib = setup
    model = _model(setup, bits=(8, 4))
    cfg.quant.bits = [8, 4]
    path = export_model(model, cfg, tmp_path / "m.int8.pt", [8, 4])
    cfg.quant.bits = [8, 6, 4, 2]
    common = ["--set", "data.test_size=50", "--set", "model.width=4"]
    assert run(["eval", "--int8", str(path), "--bits", "4", *common, "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())[0]["config"] == 4
    for bits, message in (("9", "unsupported"), ("6", "available: 8, 4"), ("[8, 4]", "quantised layers")):
        with pytest.raises(UsageError, match=message):
            run(["eval", "--int8", str(path), "--bits", bits, *common])
    with pytest.raises(UsageError, match="not the tiny_cnn"):
        run(["eval", "--int8", str(path), "--bits", "8", "--set", "model.width=8"])
    with pytest.raises(UsageError, match="not found|no such file"):
        run(["eval", "--int8", str(tmp_path / "none.pt")])
    with pytest.raises(UsageError, match="unknown config key"):
        run(["eval", "--int8", str(path), "--set", "multi.alrz=off"])
    with pytest.raises(UsageError, match="ImageNet needs a path"):
        run(["train", "--stage", "fp32", "--out", str(tmp_path), "--set", "data.dataset=imagenet"])
    with pytest.raises(UsageError, match="multi.alrs"):
        run(["train", "--stage", "fp32", "--out", str(tmp_path), "--set", "multi.alrs=sometimes"])
    assert parse_config('{"a": 2}', ["a"]) == {"a": 2}


@pytest.mark.parametrize("sandwich", [True, False])
def test_sandwich_keeps_highest_and_lowest_uniform(setup, monkeypatch, sandwich):
    cfg, dist, train, *_ = setup
    model = to_transitional(_model(setup, bits=(4, 3, 2)))
    layers = model.quant_graph.layers
    sampler = BitSampler(layers, [4, 3, 2], None, "uniform")
    tc = dataclasses.replace(cfg.supernet, epochs=1)  # sigma = 1: every layer of a sampled config is drawn
    opt_w, opt_s = make_optimizers(model, tc)
    step = PrecisionStep(model, opt_s, tc, [4, 3, 2], dist, sampler, sigma0=1.0, steps_per_epoch=100,
                         sandwich=sandwich)
    seen = []
    original = train_module.set_bits
    monkeypatch.setattr(train_module, "set_bits", lambda m, c: seen.append(c) or original(m, c))
    batches = iter(train)
    for _ in range(3):
        step(model, next(batches), opt_w)
    assert len(seen) == 9
    uniform = [c for c in seen if isinstance(c, int)]
    if sandwich:  # per batch: 4 uniform, a per-layer sample around 3, 2 uniform
        assert uniform == [4, 2] * 3 and all(isinstance(c, dict) and set(c) == set(layers) for c in seen[1::3])
    else:
        assert not uniform
    assert len({tuple(sorted(c.items())) for c in seen if isinstance(c, dict)}) > 1
