"""DPConv: the training form is exactly the partial convolution it deploys to, and the split is learnt."""

import pytest
import timm
import torch
import torch.nn.functional as F
from partialnet.deploy import fusion_max_abs_diff
from partialnet.models import DPConv, PartialConv, budget_multiplier, dpconv_layers, freeze_gates, split_summary
from partialnet.models.dpconv import power_of_two_factor


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("dim", "init_div", "gates", "dim_conv"), [(64, 4, 6, 16), (48, 4, 4, 12), (160, 2, 5, 80)])
def test_initial_split_and_non_power_of_two_widths(dim, init_div, gates, dim_conv):
    conv = DPConv(dim, init_div=init_div)
    assert (conv.num_gates, conv.dim_conv, conv.split_divisor) == (gates, dim_conv, init_div)
    mask = conv.channel_mask()
    assert mask.shape == (dim,) and mask[:dim_conv].eq(1).all() and mask[dim_conv:].eq(0).all()
    assert power_of_two_factor(48) == 4 and power_of_two_factor(96) == 5


def test_training_forward_is_the_deployed_partial_conv():
    conv = DPConv(32, init_div=4).double()
    with torch.no_grad():
        conv.gate.copy_(torch.tensor([0.3, -0.2, 0.5, -0.1, 0.4], dtype=torch.float64))  # 2 closed -> 32/4
    x = _x(2, 32, 7, 7).double()
    deployed = conv.to_partial_conv()
    assert isinstance(deployed, PartialConv) and deployed.dim_conv == 8
    torch.testing.assert_close(conv(x), deployed(x), rtol=0, atol=1e-12)
    assert conv(x)[:, 8:].equal(x[:, 8:])


def test_gates_receive_gradient_from_the_task_loss():
    conv = DPConv(16, init_div=2)
    x = _x(4, 16, 6, 6)
    F.mse_loss(conv(x), torch.zeros_like(x)).backward()
    assert conv.gate.grad is not None and conv.gate.grad.abs().sum() > 0


def test_frozen_gates_get_a_zero_gradient_and_keep_the_split():
    model = torch.nn.Sequential(DPConv(16, init_div=4), DPConv(32, init_div=2))
    x = _x(4, 16, 6, 6)
    freeze_gates(model, True)  # the search's warm-up
    F.mse_loss(model[0](x), torch.zeros_like(x)).backward()
    assert model[0].gate.grad is not None and model[0].gate.grad.abs().sum() == 0
    assert model[1].gates_frozen and model[0].dim_conv == 4
    freeze_gates(model, False)
    model[0].gate.grad = None
    F.mse_loss(model[0](x), torch.zeros_like(x)).backward()
    assert model[0].gate.grad.abs().sum() > 0


def _fit(conv: DPConv, target_fn, steps: int, budget_div: float | None) -> None:
    opt = torch.optim.Adam(conv.parameters(), lr=0.02)
    for step in range(steps):
        x = _x(8, conv.dim, 6, 6, seed=step)
        loss = F.mse_loss(conv(x), target_fn(x))
        if budget_div is not None:
            loss = loss * budget_multiplier([conv], budget_div, alpha=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_split_grows_when_the_task_needs_every_channel():
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False)
    conv = DPConv(16, init_div=8)
    start = conv.dim_conv
    _fit(conv, lambda x: teacher(x).detach(), steps=60, budget_div=None)
    assert conv.dim_conv > start


def test_split_shrinks_under_a_tight_budget():
    torch.manual_seed(0)
    conv = DPConv(16, init_div=1)  # starts as a full conv
    assert conv.dim_conv == 16
    _fit(conv, lambda x: x, steps=60, budget_div=8.0)  # identity target: convolving is not needed
    assert conv.dim_conv < 16


def test_budget_multiplier_is_one_under_budget_and_grows_above():
    small, big = DPConv(16, init_div=8), DPConv(16, init_div=1)
    assert budget_multiplier([small], budget_div=4).item() == 1.0
    over = budget_multiplier([big], budget_div=4, alpha=0.01)
    assert over.item() == pytest.approx((256 / 16) ** 0.01)
    assert budget_multiplier([]) is None


def test_dynamic_model_builds_fuses_and_reports_its_splits():
    model = timm.create_model("partialnet_t0", dynamic_split=True, num_classes=10)
    assert {row["divisor"] for row in split_summary(model)} == {4} and len(split_summary(model)) == 13
    assert fusion_max_abs_diff(model, (1, 3, 64, 64)) < 1e-10


def test_max_div_bounds_the_split_and_the_last_stage_stays_retrainable_as_pat_sf():
    conv = DPConv(64, init_div=4, max_div=8)
    with torch.no_grad():
        conv.gate.fill_(-0.5)  # every gate closed: 64 / 64 without the bound
    assert conv.dim_conv == 8 and conv.channel_mask().sum() == 8
    x = _x(2, 64, 5, 5).double()
    torch.testing.assert_close(conv.double()(x), conv.to_partial_conv()(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="init_div"):
        DPConv(64, init_div=16, max_div=8)
    model = timm.create_model("partialnet_t0", dynamic_split=True, num_classes=10)
    with torch.no_grad():
        for layer in dpconv_layers(model):
            layer.gate.fill_(-0.5)
    divs = [row["divisor"] for row in split_summary(model)]
    assert divs[-2:] == [64, 64] and divs[0] == 32  # stage 4 (256 wide, 4 heads) stops at 256 / 64 = 4 channels
    retrained = timm.create_model("partialnet_t0", layer_n_div=tuple(divs), num_classes=10).eval()
    assert retrained(torch.randn(1, 3, 64, 64)).shape == (1, 10)
