import pytest
import torch
from effrepro.errors import UsageError
from effrepro.quant import (
    apply_codes,
    calibrate,
    calibrated_bits,
    dequantize_codes,
    export_int8,
    fake_quant_act,
    fake_quant_weight,
    load_dequantized,
    load_int8,
    quant_layers,
    quantize_model,
    save_int8,
    set_bits,
    shift_codes,
    split_parameters,
    to_transitional,
    weight_codes,
)
from effrepro.quant.functional import lsq_grad_factor, mse_weight_scale, second_rounding
from effrepro.quant.modules import SwitchableNorm
from torch import nn

ALL_CODES = torch.arange(-128, 128, dtype=torch.int32)


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _quant_net(bits=(8, 6, 4, 2), tie="half_up", seed=0):
    torch.manual_seed(seed)
    model = quantize_model(TinyNet(), torch.randn(2, 1, 8, 8), bits=bits, tie_mode=tie)
    calibrate(model, torch.randn(16, 1, 8, 8))
    return model


# ---- the integer switch ------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", range(1, 8))
def test_exhaustive_integer_shift_all_codes(delta):
    bits = 8 - delta
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = ALL_CODES.to(torch.int8)
    exact = ALL_CODES.double() / (1 << delta)
    expected = {
        "half_up": ((ALL_CODES + (1 << (delta - 1))) >> delta).clamp(lo, hi),
        "half_even": torch.round(exact).clamp(lo, hi).int(),  # torch.round is half-to-even
        "floor": (ALL_CODES >> delta).clamp(lo, hi),
    }
    assert torch.equal(expected["half_up"], torch.floor(exact + 0.5).clamp(lo, hi).int())
    assert torch.equal(expected["floor"], torch.floor(exact).clamp(lo, hi).int())
    for tie, want in expected.items():
        got = shift_codes(q, delta, bits, tie)
        assert got.dtype == torch.int8
        assert torch.equal(got.int(), want.int()), tie
        float_path = second_rounding(ALL_CODES.float(), delta, bits, tie)  # what training computes
        assert torch.equal(float_path.int(), want.int()), tie
        assert got.min() >= lo and got.max() <= hi
        assert bool((got[1:].int() >= got[:-1].int()).all()), "the switch must be monotone in q"


def test_hand_example_delta_6():
    codes = torch.tensor([-128, -33, -32, -31, 0, 31, 32, 95, 96, 127], dtype=torch.int8)
    assert shift_codes(codes, 6, 2, "half_up").tolist() == [-2, -1, 0, 0, 0, 0, 1, 1, 1, 1]
    assert shift_codes(codes, 6, 2, "half_even").tolist() == [-2, -1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert shift_codes(codes, 6, 2, "floor").tolist() == [-2, -1, -1, -1, 0, 0, 0, 1, 1, 1]


def test_clip_after_second_rounding():
    assert shift_codes(torch.tensor([127], dtype=torch.int8), 2, 6, "half_up").item() == 31  # 31.75 -> 32 -> 31
    assert shift_codes(torch.tensor([127], dtype=torch.int8), 6, 2, "half_up").item() == 1


def test_shift_rejects_bad_input():
    with pytest.raises(TypeError):
        shift_codes(torch.zeros(3), 1, 7)
    with pytest.raises(UsageError, match="tie mode"):
        shift_codes(torch.zeros(3, dtype=torch.int8), 1, 7, "nearest")


# ---- nesting / storage invariant -------------------------------------------------------------------
@pytest.mark.parametrize("tie", ["half_up", "half_even", "floor"])
def test_training_fake_quant_equals_dequantised_shifted_codes(tie):
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * 0.05
    s = torch.tensor(0.0011)
    codes = weight_codes(w, s, 8)
    assert codes.dtype == torch.int8
    for bits in (8, 7, 6, 5, 4, 3, 2):
        delta = 8 - bits
        train = fake_quant_weight(w, s, 8, bits, tie)
        deploy = dequantize_codes(shift_codes(codes, delta, bits, tie), s, delta)
        assert torch.equal(train, deploy), bits
    assert torch.equal(shift_codes(codes, 0, 8, tie), codes)


def _direct(w, s_l, bits, tie):
    """Direct single rounding at step s_l with the given tie rule (the reference)."""
    u = w / s_l
    q = torch.floor(u + 0.5) if tie == "half_up" else torch.round(u)
    return q.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) * s_l


@pytest.mark.parametrize("tie", ["half_up", "half_even"])
def test_double_rounding_equals_direct_requantisation_where_it_should(tie):
    """On the h-bit grid the shift IS direct rounding at s_l = 2^D s_h (ties included); off the grid it
    differs only within half an h-step of a coarse tie, and then by one l-step at most."""
    torch.manual_seed(1)
    s_h, h = torch.tensor(2.0**-7), 8  # a power of two: every product below is exact
    for bits in (6, 4, 2):
        delta = h - bits
        s_l = s_h * (1 << delta)
        on_grid = torch.randint(-128, 128, (4000,)).float() * s_h
        assert torch.equal(fake_quant_weight(on_grid, s_h, h, bits, tie), _direct(on_grid, s_l, bits, tie))
        w = (torch.rand(20000) * 2 - 1) * 1.2
        double = fake_quant_weight(w, s_h, h, bits, tie)
        direct = _direct(w, s_l, bits, tie)
        inside = (w > -128 * s_h) & (w < 127 * s_h) & (w < ((1 << (bits - 1)) - 1) * s_l)
        differs = (double != direct) & inside
        frac = (w / s_l) - torch.floor(w / s_l)
        near_tie = (frac - 0.5).abs() <= 0.5 / (1 << delta) + 1e-6
        assert bool(near_tie[differs].all())
        assert float(((double - direct).abs()[inside]).max()) <= float(s_l)
        assert differs.sum() > 0  # the double-rounding effect exists


# ---- STE / LSQ gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_weight_scale_gradient_closed_form(bits):
    torch.manual_seed(2)
    h, delta = 8, 8 - bits
    w = (torch.randn(500, dtype=torch.float64) * 0.1).requires_grad_()
    s = torch.tensor(0.0009, dtype=torch.float64, requires_grad=True)
    g = torch.randn(500, dtype=torch.float64)
    (fake_quant_weight(w, s, h, bits, "half_up") * g).sum().backward()
    with torch.no_grad():
        u = w / s  # "clipped" = the unrounded value lies outside the integer range (LSQ)
        clip_h = (u < -128) | (u > 127)
        q_h = torch.round(u).clamp(-128, 127)
        v = q_h / 2**delta
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        clip_l = (v < lo) | (v > hi)
        q_l = torch.floor(v + 0.5).clamp(lo, hi)
        clipped = clip_h | clip_l
        s_l = s * 2**delta
        d_s = torch.where(clipped, 2**delta * q_l, 2**delta * (q_l - w / s_l))
    assert clipped.any() and (~clipped).any()
    torch.testing.assert_close(s.grad, (g * d_s).sum(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.grad, torch.where(clipped, torch.zeros_like(g), g), rtol=1e-12, atol=1e-14)
    assert bool((w.grad[clipped] == 0).all())


def test_activation_lsq_gradients_and_zero_point():
    x = torch.tensor([-0.3, 0.05, 0.31, 0.9, 2.5], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(-0.1, dtype=torch.float64, requires_grad=True)
    fake_quant_act(x, s, z, 2).sum().backward()  # range [0, 3]
    u = (x.detach() - z.detach()) / s.detach()
    inside = (u >= 0) & (u <= 3)
    expect_s = torch.where(inside, torch.round(u) - u, torch.where(u < 0, 0.0, 3.0).double())
    torch.testing.assert_close(s.grad, expect_s.sum())
    torch.testing.assert_close(z.grad, (~inside).double().sum())
    torch.testing.assert_close(x.grad, inside.double())


def test_lsq_grad_scale_changes_only_the_gradient():
    w = torch.randn(100, dtype=torch.float64)
    s1 = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    s2 = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    factor = lsq_grad_factor(100, 127)
    y1 = fake_quant_weight(w, s1, 8, 4, "half_up")
    y2 = fake_quant_weight(w, s2, 8, 4, "half_up", grad_factor=factor)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad * factor)


def test_mse_init_keeps_two_bit_weights_alive():
    torch.manual_seed(3)
    w = torch.randn(4096) * 0.05
    s = torch.tensor(mse_weight_scale(w, 8, (8, 6, 4, 2), "half_up"))
    assert (fake_quant_weight(w, s, 8, 2, "half_up") != 0).float().mean() > 0.3
    lsq = 2 * w.abs().mean() / 127**0.5  # LSQ's init at 8 bits zeroes nearly every 2-bit weight
    assert (fake_quant_weight(w, lsq, 8, 2, "half_up") != 0).float().mean() < 0.05


# ---- model conversion, BN switching, export -----------------------------------------------------------
def test_quantize_model_keeps_first_conv_and_last_linear_fp32():
    model = _quant_net()
    graph = model.quant_graph
    assert graph.layers == ["conv1", "conv2"] and graph.fp_layers == ["stem", "fc"]
    assert type(model.stem) is nn.Conv2d and type(model.fc) is nn.Linear
    assert all(isinstance(m, SwitchableNorm) for m in (model.bn0, model.bn1, model.bn2))
    weights, scales = split_parameters(model)
    assert len(scales) == 2 * (1 + 2 * 4)  # per layer: s_h + 4 activation scales + 4 zero points
    assert {id(p) for p in weights}.isdisjoint({id(p) for p in scales})
    assert calibrated_bits(model) == [8, 6, 4, 2]


def test_switchable_bn_only_active_copy_changes():
    model = _quant_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    set_bits(model, 4)
    model(torch.randn(8, 1, 8, 8))
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (".norms.4." in key), key


def test_transitional_bn_follows_the_bit_pair():
    model = to_transitional(_quant_net())
    assert sorted(model.bn1.keys) == sorted(f"{i}_{j}" for i in (8, 6, 4, 2) for j in (8, 6, 4, 2))
    set_bits(model, {"conv1": 6, "conv2": 2})
    assert (model.bn0.active, model.bn1.active, model.bn2.active) == ("6_6", "6_2", "2_2")
    model.eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize("tie", ["half_up", "half_even", "floor"])
def test_dequantised_eval_equals_fake_quant_eval(tie, tmp_path):
    model = _quant_net(tie=tie)
    model.train()
    for b in (8, 6, 4, 2):  # give every BN copy its own statistics
        set_bits(model, b)
        model(torch.randn(16, 1, 8, 8))
    model.eval()
    path = save_int8(tmp_path / "m.int8.pt", export_int8(model, {"arch": "tiny"}))
    artefact = load_int8(path)
    fresh = quantize_model(TinyNet(), torch.randn(2, 1, 8, 8), tie_mode=tie).eval()
    x = torch.randn(4, 1, 8, 8)
    for config in (8, 6, 4, 2, {"conv1": 2, "conv2": 8}, {"conv1": 6, "conv2": 4}):
        set_bits(model, config)
        load_dequantized(fresh, artefact, config)
        with torch.no_grad():
            assert torch.equal(model(x), fresh(x)), config
    assert all(layer.dequantized for _, layer in quant_layers(fresh))


def test_export_import_round_trip_is_bit_exact(tmp_path):
    model = _quant_net()
    artefact = export_int8(model, {"arch": "tiny"})
    loaded = load_int8(save_int8(tmp_path / "a.pt", artefact))
    fresh = load_dequantized(quantize_model(TinyNet(), torch.randn(2, 1, 8, 8)), loaded, 8)
    again = export_int8(fresh, {"arch": "tiny"})
    for name in artefact["codes"]:
        assert torch.equal(loaded["codes"][name], artefact["codes"][name])
        assert torch.equal(again["codes"][name], artefact["codes"][name])
        assert torch.equal(again["weight_scales"][name], artefact["weight_scales"][name])
    for key, value in artefact["state"].items():
        assert torch.equal(again["state"][key], value), key
    codes_bytes = sum(c.numel() for c in artefact["codes"].values())
    fp32_weight_bytes = 4 * sum(layer.weight.numel() for _, layer in quant_layers(model))
    assert codes_bytes * 4 == fp32_weight_bytes


def test_bad_bits_and_foreign_files_are_clear_errors(tmp_path):
    model = _quant_net(bits=(8, 4))
    for bad in (9, 1, 6):
        with pytest.raises(UsageError, match="bit-width"):
            set_bits(model, bad)
    artefact = export_int8(model, available_bits=[8])
    fresh = quantize_model(TinyNet(), torch.randn(2, 1, 8, 8), bits=(8, 4))
    with pytest.raises(UsageError, match="available: 8"):
        load_dequantized(fresh, artefact, 4)
    other = quantize_model(TinyNet(width=4), torch.randn(2, 1, 8, 8), bits=(8, 4))
    with pytest.raises(UsageError, match="does not match"):
        load_dequantized(other, artefact, 8)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="corrupt"):
        load_int8(tmp_path / "junk.pt")
    with pytest.raises(UsageError, match="does not match"):
        apply_codes(model, artefact, {"conv1": 8})


def test_signed_inputs_get_a_zero_point():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(36, 2))
    model = quantize_model(net, torch.randn(1, 1, 7, 7), bits=(8, 2))
    calibrate(model, torch.randn(8, 1, 7, 7))
    act = model[1].act_quant
    assert bool(act.signed_input) and float(act.zero_point["2"].detach()) < 0
