"""Distillers (KD / DKD / MLKD / CRLD), their DeepKD split, and the training step's component grouping."""

import pytest
import torch
from deepkd.config import TrainConfig
from deepkd.deepkd import build_optimizer, group_losses
from deepkd.distillers import CRLD, DKD, KD, MLKD, build_distiller, masked_reduce, student_outputs
from deepkd.engine import DistillStep, StepCounter
from effrepro.errors import UsageError
from effrepro.optim import component_grads
from torch import nn


def _pair(classes=10, dtype=torch.float64):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, classes))
    return student.to(dtype), teacher.to(dtype)


def _batch(n=16, classes=10, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)


def test_teacher_stays_frozen_in_eval_mode():
    student, teacher = _pair()
    d = DKD(student, teacher).train()
    assert d.student.training and not d.teacher.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    assert d.learnable_parameters() == list(student.parameters())


def test_dkd_decoupled_split_equals_the_dkd_loss():
    student, teacher = _pair()
    x, y = _batch()
    base = DKD(student, teacher, warmup=20).train()
    _, losses = base(x, y, epoch=5)
    split = DKD(student, teacher, warmup=20, decoupled=True).train()
    _, parts = split(x, y, epoch=5)
    assert set(parts) == {"loss_task", "loss_tckd", "loss_nckd"}
    total = sum(losses.values())
    torch.testing.assert_close(sum(parts.values()), total, rtol=0, atol=1e-12)


def test_kd_exact_split_sums_to_kd_and_release_split_uses_batch_means():
    student, teacher = _pair()
    x, y = _batch()
    _, base = KD(student, teacher, ce_weight=0.1, kd_weight=0.9).train()(x, y)
    _, exact = KD(student, teacher, ce_weight=0.1, kd_weight=0.9, decoupled=True, release_quirks=False).train()(x, y)
    torch.testing.assert_close(exact["loss_tckd"] + exact["loss_nckd"], base["loss_kd"], rtol=0, atol=1e-12)
    _, release = KD(student, teacher, decoupled=True, release_quirks=True).train()(x, y)
    # released: mean(1 - p_t[y]) * mean(NCKD) and no kd_weight; differs from the exact batch mean of the product
    assert not torch.allclose(release["loss_nckd"] * 0.9, exact["loss_nckd"])


@pytest.mark.parametrize("cls", [MLKD, CRLD])
def test_two_view_distillers_base_and_decoupled(cls):
    student, teacher = _pair()
    x, y = _batch()
    views = (x, x + 0.1)
    logits, base = cls(student, teacher).train()(views, y, epoch=3)
    assert isinstance(logits, tuple) and len(logits) == 2
    assert all(torch.isfinite(v) for v in base.values())
    _, split = cls(student, teacher, decoupled=True).train()(views, y, epoch=3)
    assert set(split) == {"loss_task", "loss_tckd", "loss_nckd"}
    with pytest.raises(UsageError, match="two views"):
        cls(student, teacher).train()(x, y)


def test_crld_exact_decoupled_with_kd_plugin_sums_to_the_base_kd_terms():
    student, teacher = _pair()
    x, y = _batch()
    views = (x, x * 0.5)
    _, base = CRLD(student, teacher, tau_w=0.0, tau_s=0.0).train()(views, y)
    _, split = CRLD(student, teacher, tau_w=0.0, tau_s=0.0, decoupled=True, plugin="kd",
                    release_quirks=False).train()(views, y)
    torch.testing.assert_close(split["loss_tckd"] + split["loss_nckd"], base["loss_kd_wv"] + base["loss_kd_cv"],
                               rtol=0, atol=1e-10)


def test_masked_reduce_scalar_vs_per_sample():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    mask = torch.tensor([True, False, True, False])
    assert masked_reduce(values, mask, scalar=True).item() == pytest.approx(3.0 * 0.5)
    assert masked_reduce(values, mask, scalar=False).item() == pytest.approx((1 + 3) / 4)
    full = torch.ones(4, dtype=torch.bool)
    assert masked_reduce(values, full, True).item() == masked_reduce(values, full, False).item()


def test_grouping_per_method_and_deepkd_needs_a_decoupled_distiller():
    losses = {"loss_ce": torch.tensor(1.0), "loss_tckd": torch.tensor(2.0), "loss_nckd": torch.tensor(3.0)}
    assert set(group_losses(losses, "sgd")) == {"total"}
    dot = group_losses(losses, "dot")
    assert dot["task"].item() == 1.0 and dot["kd"].item() == 5.0
    deep = group_losses(losses, "deepkd", {"loss_nckd": 2.0})
    assert (deep["tog"].item(), deep["tcg"].item(), deep["ncg"].item()) == (1.0, 2.0, 6.0)
    with pytest.raises(UsageError, match="decoupled"):
        group_losses({"loss_ce": torch.tensor(1.0), "loss_kd": torch.tensor(1.0)}, "deepkd")
    with pytest.raises(UsageError, match="unknown losses"):
        group_losses(losses, "sgd", {"loss_typo": 2.0})


def test_batched_vjp_equals_three_backward_passes_for_dkd_on_a_conv_student():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 10)).double()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).double()
    d = DKD(student, teacher, decoupled=True, warmup=1).train()
    x, y = torch.randn(8, 3, 4, 4, dtype=torch.float64), torch.randint(0, 10, (8,))
    params = d.learnable_parameters()
    grads = {}
    for method in ("backward", "batched"):
        logits, losses = d(x, y, epoch=2, topk=4)
        groups = group_losses(losses, "deepkd")
        grads[method] = component_grads(groups, params, method=method, outputs=student_outputs(logits))
    for comp in ("tog", "tcg", "ncg"):
        for a, b in zip(grads["backward"][comp], grads["batched"][comp]):
            assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize(("method", "grad_method"), [("sgd", "backward"), ("dot", "backward"),
                                                     ("deepkd", "backward"), ("deepkd", "batched")])
def test_training_step_runs_and_counts_epochs(method, grad_method):
    student, teacher = _pair(dtype=torch.float32)
    cfg = TrainConfig()
    cfg.solver.method, cfg.solver.grad_method = method, grad_method
    d = build_distiller("dkd", student, teacher, decoupled=method == "deepkd", warmup=1).train()
    opt = build_optimizer(d.learnable_parameters(), cfg.solver)
    counter = StepCounter(steps_per_epoch=2)
    step = DistillStep(cfg, counter, lambda epoch: 0)
    before = [p.detach().clone() for p in student.parameters()]
    for _ in range(3):
        metrics = step(d, _batch(dtype=torch.float32), opt)
    assert counter.step == 3 and counter.epoch == 2
    assert {"loss", "top1", "loss_tckd", "loss_nckd"} <= set(metrics)
    assert any((p - q).abs().max() > 0 for p, q in zip(student.parameters(), before))


def test_unknown_distiller_is_a_clear_error():
    student, teacher = _pair()
    with pytest.raises(UsageError, match="unknown distiller 'fitnet'"):
        build_distiller("fitnet", student, teacher)
    with pytest.raises(UsageError, match="needs a teacher"):
        build_distiller("dkd", student, None)
