"""effrepro.optim: multi-buffer momentum, gradient separation, GSNR (DeepKD spec §6.5 items 1-4, 8-10)."""

import copy
import io

import pytest
import torch
from effrepro.optim import (
    GSNRAccumulator,
    MultiMomentumSGD,
    component_grads,
    deepkd_optimizer,
    dot_optimizer,
    measure_gsnr,
    sum_grads,
)
from torch import nn
from torch.nn import functional as F


def _net(dtype=torch.float64, bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.Tanh(), nn.Linear(12, 5)]
    return nn.Sequential(*layers).to(dtype)


def _three_losses(model, step, dtype=torch.float64):
    """Three different scalar losses of the same logits (stand-ins for TOG / TCG / NCG)."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 6, generator=gen, dtype=dtype)
    y = torch.randint(0, 5, (16,), generator=gen)
    target = torch.randn(16, 5, generator=gen, dtype=dtype).softmax(-1)
    logits = model(x)
    return {
        "tog": F.cross_entropy(logits, y),
        "tcg": 0.7 * F.kl_div(logits.log_softmax(-1), target, reduction="batchmean"),
        "ncg": 2.0 * (logits ** 2).mean(),
    }, logits


def _run(model, opt, steps, start=0):
    params = list(model.parameters())
    for step in range(start, start + steps):
        losses, _ = _three_losses(model, step, next(model.parameters()).dtype)
        opt.step(component_grads(losses, params))


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_equal_momenta_reduce_to_sgd_float64(mode):
    ours, ref = _net(), _net()
    opt = deepkd_optimizer(ours.parameters(), lr=0.1, momentum=0.9, delta_tog=0, delta_tcg=0, delta_ncg=0,
                           weight_decay=0.0, mode=mode)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    _run(ours, opt, 8)
    for step in range(8):
        losses, _ = _three_losses(ref, step)
        sgd.zero_grad()
        sum(losses.values()).backward()
        sgd.step()
    assert _max_diff(ours, ref) <= 1e-12


def test_equal_momenta_reduce_to_sgd_float32():
    ours, ref = _net(torch.float32), _net(torch.float32)
    opt = deepkd_optimizer(ours.parameters(), lr=0.1, momentum=0.9, delta_tog=0, delta_tcg=0, delta_ncg=0)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    _run(ours, opt, 8)
    for step in range(8):
        losses, _ = _three_losses(ref, step, torch.float32)
        sgd.zero_grad()
        sum(losses.values()).backward()
        sgd.step()
    assert _max_diff(ours, ref) <= 1e-6


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


def _release_deepkd_reference(model, steps, mu_tog, mu_tcg, mu_ncg, lr, wd):
    """Plain transcription of the released DeepKD update (spec §1.3) for students where every parameter
    receives all three gradients: TOG buffer with mu_TCG, then NCG, then TCG with the weight decay."""
    del mu_tog  # the released TOG buffer never uses it
    params = list(model.parameters())
    bufs = {k: [None] * len(params) for k in ("tog", "ncg", "tcg")}
    mus = {"tog": mu_tcg, "ncg": mu_ncg, "tcg": mu_tcg}
    for step in range(steps):
        losses, _ = _three_losses(model, step)
        grads = {k: torch.autograd.grad(losses[k], params, retain_graph=True) for k in ("tog", "ncg", "tcg")}
        with torch.no_grad():
            for k in ("tog", "ncg", "tcg"):
                for i, p in enumerate(params):
                    d = grads[k][i] + wd * p if k == "tcg" else grads[k][i]
                    bufs[k][i] = d.clone() if bufs[k][i] is None else mus[k] * bufs[k][i] + d
                    p -= lr * bufs[k][i]


def test_code_mode_matches_the_released_update_rule():
    ours, ref = _net(), _net()
    opt = deepkd_optimizer(ours.parameters(), lr=0.05, weight_decay=5e-4, mode="code")
    _run(ours, opt, 7)
    _release_deepkd_reference(ref, 7, 0.975, 0.825, 0.95, 0.05, 5e-4)
    assert _max_diff(ours, ref) <= 1e-12


def test_code_mode_ignores_mu_tog_and_paper_mode_uses_it():
    results = {}
    for mode in ("code", "paper"):
        for delta_tog in (0.075, -0.4):
            model = _net()
            opt = deepkd_optimizer(model.parameters(), lr=0.05, delta_tog=delta_tog, weight_decay=5e-4, mode=mode)
            _run(model, opt, 6)
            results[mode, delta_tog] = model
    assert _max_diff(results["code", 0.075], results["code", -0.4]) == 0.0  # bit-identical: mu_TOG is dead
    assert _max_diff(results["paper", 0.075], results["paper", -0.4]) > 1e-4


def test_paper_mode_with_tied_kd_momenta_reduces_to_dot():
    ours, ref = _net(), _net()
    # DeepKD paper mode: mu_TOG = 0.825 (task), mu_TCG = mu_NCG = 0.975 (kd), decay moved to the task buffer
    opt = deepkd_optimizer(ours.parameters(), lr=0.05, delta_tog=-0.075, delta_tcg=0.075, delta_ncg=0.075,
                           weight_decay=5e-4, mode="paper", weight_decay_on="tog")
    dot = dot_optimizer(ref.parameters(), lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
    _run(ours, opt, 7)
    params = list(ref.parameters())
    for step in range(7):
        losses, _ = _three_losses(ref, step)
        grads = component_grads({"task": losses["tog"], "kd": losses["tcg"] + losses["ncg"]}, params)
        dot.step(grads)
    assert _max_diff(ours, ref) <= 1e-12


def test_dot_matches_a_two_buffer_reference():
    ours, ref = _net(), _net()
    dot = dot_optimizer(ours.parameters(), lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
    params = list(ours.parameters())
    for step in range(5):
        losses, _ = _three_losses(ours, step)
        dot.step(component_grads({"task": losses["tog"], "kd": losses["tcg"] + losses["ncg"]}, params))
    ref_params = list(ref.parameters())
    bufs = {"task": [None] * len(ref_params), "kd": [None] * len(ref_params)}
    for step in range(5):
        losses, _ = _three_losses(ref, step)
        task = torch.autograd.grad(losses["tog"], ref_params, retain_graph=True)
        kd = torch.autograd.grad(losses["tcg"] + losses["ncg"], ref_params)
        with torch.no_grad():
            for i, p in enumerate(ref_params):  # task buffer (with decay) first, then the KD buffer
                d = task[i] + 5e-4 * p
                bufs["task"][i] = d.clone() if bufs["task"][i] is None else 0.825 * bufs["task"][i] + d
                p -= 0.05 * bufs["task"][i]
            for i, p in enumerate(ref_params):
                bufs["kd"][i] = kd[i].clone() if bufs["kd"][i] is None else 0.975 * bufs["kd"][i] + kd[i]
                p -= 0.05 * bufs["kd"][i]
    assert _max_diff(ours, ref) <= 1e-12


def test_first_step_is_a_plain_sgd_step():
    model = _net()
    before = copy.deepcopy(model)
    opt = deepkd_optimizer(model.parameters(), lr=0.1, weight_decay=0.0)
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
    opt = deepkd_optimizer(model.parameters(), lr=0.1)
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
        return model, deepkd_optimizer(model.parameters(), lr=0.05, weight_decay=5e-4, mode="paper")

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
    with pytest.raises(ValueError, match="unknown DeepKD momentum mode"):
        deepkd_optimizer(params, lr=0.1, mode="typo")
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
