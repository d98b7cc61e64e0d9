"""effrepro.optim: multi-buffer momentum, gradient separation, GSNR (DeepKD's and DOT's configurations are tested
in deepkd/tests/test_deepkd_optimizer.py)."""

import copy
import io

import pytest
import torch
from effrepro.optim import GSNRAccumulator, MultiMomentumSGD, component_grads, measure_gsnr, sum_grads
from effrepro.testing import max_param_diff as _max_diff
from effrepro.testing import three_losses as _three_losses
from effrepro.testing import toy_mlp as _net
from torch import nn

MOMENTA = {"tog": 0.975, "tcg": 0.825, "ncg": 0.95}


def _run(model, opt, steps, start=0):
    params = list(model.parameters())
    for step in range(start, start + steps):
        losses, _ = _three_losses(model, step, next(model.parameters()).dtype)
        opt.step(component_grads(losses, params))


def test_single_component_with_weight_decay_is_torch_sgd_bit_for_bit():
    ours, ref = _net(), _net()
    opt = MultiMomentumSGD(ours.parameters(), lr=0.05, momenta={"all": 0.9}, weight_decay=5e-4)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(6):
        for model, is_ours in ((ours, True), (ref, False)):
            losses, _ = _three_losses(model, step)
            loss = sum(losses.values())
            if is_ours:
                opt.step({"all": list(torch.autograd.grad(loss, list(model.parameters())))})
            else:
                sgd.zero_grad()
                loss.backward()
                sgd.step()
    assert _max_diff(ours, ref) == 0.0


def test_first_step_is_a_plain_sgd_step():
    model = _net()
    before = copy.deepcopy(model)
    opt = MultiMomentumSGD(model.parameters(), lr=0.1, momenta=MOMENTA)
    params = list(model.parameters())
    losses, _ = _three_losses(model, 0)
    grads = component_grads(losses, params)
    total = sum_grads(grads)
    opt.step(grads)
    for p, q, g in zip(model.parameters(), before.parameters(), total):
        torch.testing.assert_close(p, q - 0.1 * g, rtol=0, atol=1e-14)


def test_component_gradients_sum_to_the_total_gradient():
    model = _net()
    params = list(model.parameters())
    losses, _ = _three_losses(model, 0)
    total = torch.autograd.grad(sum(losses.values()), params, retain_graph=True)
    grads = component_grads(losses, params)
    for a, b in zip(sum_grads(grads), total):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("bn", [False, True])
def test_batched_vjp_equals_separate_backward_passes(bn):
    model = _net(bn=bn)
    params = list(model.parameters())
    losses, logits = _three_losses(model, 3)
    sep = component_grads(losses, params, method="backward")
    losses, logits = _three_losses(model, 3)
    bat = component_grads(losses, params, method="batched", outputs=[logits])
    for name in losses:
        for a, b in zip(sep[name], bat[name]):
            assert (a - b).abs().max().item() <= 1e-12


def test_batched_vjp_through_a_conv_bn_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    params = list(model.parameters())

    def losses():
        logits = model(x)
        return {"a": logits.logsumexp(-1).mean(), "b": (logits[:, 0] ** 2).mean()}, logits

    sep = component_grads(losses()[0], params)
    loss_dict, logits = losses()
    bat = component_grads(loss_dict, params, method="batched", outputs=[logits])
    for name in ("a", "b"):
        for a, b in zip(sep[name], bat[name]):
            assert (a - b).abs().max().item() <= 1e-12


def test_captured_gradients_survive_later_backward_passes():
    model = _net()
    opt = MultiMomentumSGD(model.parameters(), lr=0.1, momenta=MOMENTA)
    losses, _ = _three_losses(model, 0)
    losses["ncg"].backward(retain_graph=True)
    opt.capture("ncg")
    stored = [g.clone() for g in opt._captured["ncg"]]
    assert all(p.grad is None for p in model.parameters())
    losses["tcg"].backward(retain_graph=True)  # would accumulate into a stored .grad if it were shared
    opt.capture("tcg")
    losses["tog"].backward()
    opt.capture("tog")
    for a, b in zip(opt._captured["ncg"], stored):
        assert torch.equal(a, b)
    opt.step()
    assert not opt._captured


def test_state_dict_round_trip_continues_identically():
    def make():
        model = _net()
        return model, MultiMomentumSGD(model.parameters(), lr=0.05, momenta=MOMENTA, weight_decay=5e-4,
                                       weight_decay_on="tcg", order=("tog", "ncg", "tcg"))

    straight, opt = make()
    _run(straight, opt, 8)

    resumed, opt2 = make()
    _run(resumed, opt2, 4)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": opt2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh, opt3 = make()
    fresh.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    state = opt3.state_dict()["state"][0]
    assert {"momentum_buffer_tog", "momentum_buffer_tcg", "momentum_buffer_ncg"} <= set(state)
    _run(fresh, opt3, 4, start=4)
    assert _max_diff(straight, fresh) == 0.0


def test_bad_configurations_are_rejected():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="momenta in"):
        MultiMomentumSGD(params, lr=0.1, momenta={"a": 1.2})
    with pytest.raises(ValueError, match="weight_decay_on"):
        MultiMomentumSGD(params, lr=0.1, momenta={"a": 0.9}, weight_decay_on="b")
    opt = MultiMomentumSGD(params, lr=0.1, momenta={"a": 0.9})
    with pytest.raises(ValueError, match="unknown components"):
        opt.step({"b": [torch.zeros(2)]})
    with pytest.raises(ValueError, match="1 parameters"):
        opt.step({"a": [torch.zeros(2), torch.zeros(2)]})


def test_gsnr_matches_the_closed_form_of_noisy_linear_regression():
    """y = w*.x + eps, x ~ N(0, I), loss 0.5 (w.x - y)^2 at w = w* + d: per-sample gradient mean d_j,
    variance |d|^2 + d_j^2 + sigma^2 (Isserlis), so a mini-batch of B has GSNR_j = B d_j^2 / (that)."""
    torch.manual_seed(0)
    dim, sigma, batch, samples = 4, 0.5, 8, 4000
    w_star = torch.randn(dim, dtype=torch.float64)
    d = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    w = nn.Parameter(w_star + d)
    gen = torch.Generator().manual_seed(1)

    def batches():
        for _ in range(samples):
            x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
            yield x, x @ w_star + sigma * torch.randn(batch, generator=gen, dtype=torch.float64)

    acc = GSNRAccumulator()
    for x, y in batches():
        loss = 0.5 * ((x @ w - y) ** 2).mean()
        acc.update({"mse": torch.autograd.grad(loss, [w])})
    measured = acc.per_parameter()["mse"][0]
    expected = batch * d ** 2 / (d.square().sum() + d ** 2 + sigma ** 2)
    # relative standard error of a variance estimate from M samples ~ sqrt(2/M) ~ 2 %; allow 4 sigma
    torch.testing.assert_close(measured, expected, rtol=0.1, atol=0)


def test_gsnr_is_invariant_to_positive_loss_scaling():
    model = _net()
    params = list(model.parameters())

    def losses_fn(scale):
        def fn(step):
            losses, logits = _three_losses(model, step)
            return {k: scale * v for k, v in losses.items()}, [logits]
        return fn

    base = measure_gsnr(losses_fn(1.0), params, range(12))
    scaled = measure_gsnr(losses_fn(37.5), params, range(12))
    assert set(base) == {"tog", "tcg", "ncg", "total"}
    for name in base:
        assert abs(base[name] - scaled[name]) <= 1e-9 * abs(base[name])
