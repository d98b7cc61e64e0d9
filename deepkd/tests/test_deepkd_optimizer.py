"""DeepKD's three-buffer optimizer (released "code" and "paper" assignments) and DOT's two buffers, against
plain SGD and transcriptions of the released update rules."""

import pytest
import torch
from deepkd.deepkd import deepkd_optimizer, dot_optimizer
from effrepro.optim import component_grads
from effrepro.testing import max_param_diff as _max_diff
from effrepro.testing import three_losses as _three_losses
from effrepro.testing import toy_mlp as _net
from torch import nn


def _run(model, opt, steps, start=0):
    params = list(model.parameters())
    for step in range(start, start + steps):
        losses, _ = _three_losses(model, step, next(model.parameters()).dtype)
        opt.step(component_grads(losses, params))


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


def _release_deepkd_reference(model, steps, mu_tog, mu_tcg, mu_ncg, lr, wd):
    """Plain transcription of the released DeepKD update for students where every parameter
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


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown DeepKD momentum mode"):
        deepkd_optimizer([nn.Parameter(torch.zeros(2))], lr=0.1, mode="typo")
