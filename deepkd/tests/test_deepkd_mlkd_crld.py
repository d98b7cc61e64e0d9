"""MLKD and CRLD losses: hand-computed values, mask semantics and the released quirks they keep."""

import math

import pytest
import torch
from deepkd.distillers import CRLD, MLKD
from deepkd.losses import (
    batch_consistency_loss,
    class_consistency_loss,
    crld_losses,
    crld_masks,
    kd_loss,
    mlkd_losses,
    mlkd_masks,
)
from torch import nn

LOG3 = math.log(3.0)
KL_HALF_VS_3_1 = 0.5 * math.log(4.0 / 3.0)  # KL([.5, .5] || [.75, .25])


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_consistency_terms_match_hand_computed_gram_matrices():
    # p_s = [.5, .5] per row; p_t = [.75, .25], [.25, .75] -> both Gram matrices differ by +-0.125 everywhere
    student, teacher = _t([[0.0, 0.0], [0.0, 0.0]]), _t([[LOG3, 0.0], [0.0, LOG3]])
    assert batch_consistency_loss(student, teacher, 1.0).tolist() == pytest.approx([0.015625, 0.015625])
    assert class_consistency_loss(student, teacher, 1.0).tolist() == pytest.approx([0.015625, 0.015625])
    assert batch_consistency_loss(teacher, teacher, 4.0).abs().max().item() == 0.0


def test_mlkd_masks_select_the_uncertain_half():
    teacher = _t([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    samples, classes = mlkd_masks(teacher)
    assert samples.tolist() == [False, True, False, True]  # the two least confident rows (<= median)
    assert classes.tolist() == [False, True, True]  # class 0 collects most of the mass


def test_mlkd_losses_vanish_when_the_student_copies_the_teacher():
    torch.manual_seed(0)
    weak, strong = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    losses = mlkd_losses(weak, strong, weak, strong, (4.0, 3.0, 5.0, 2.0, 6.0))
    assert set(losses) == {"loss_kd", "loss_cc", "loss_bc"}
    assert all(v.abs().item() < 1e-12 for v in losses.values())


def test_mlkd_last_two_strong_terms_use_the_weak_logits_as_released():
    torch.manual_seed(1)
    teacher_weak, teacher_strong = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    student_strong = torch.randn(8, 6, dtype=torch.float64)
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    # a student that copies the weak teacher: only the strong-view terms at the first three temperatures remain
    losses = mlkd_losses(teacher_weak, student_strong, teacher_weak, teacher_strong, temps, kd_weight=0.5)
    expected = 0.5 * sum(kd_loss(student_strong, teacher_strong, t).mean() for t in temps[:3])
    torch.testing.assert_close(losses["loss_kd"], expected, rtol=0, atol=1e-12)


def test_mlkd_scalar_masks_weight_the_batch_mean_by_the_selected_fraction():
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    temps = (4.0,)
    samples, _ = mlkd_masks(teacher)
    # strong view copies its teacher, so loss_kd is the weak term alone
    scalar = mlkd_losses(student, teacher, teacher, teacher, temps, scalar_masks=True)["loss_kd"]
    per_sample = mlkd_losses(student, teacher, teacher, teacher, temps, scalar_masks=False)["loss_kd"]
    kd = kd_loss(student, teacher, 4.0)
    torch.testing.assert_close(scalar, kd.mean() * samples.double().mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(per_sample, (kd * samples).mean(), rtol=0, atol=1e-12)
    assert not torch.allclose(scalar, per_sample)


def test_crld_hand_computed_values_and_thresholds():
    # teacher [.5, .5] (confidence 0.5), student [.75, .25]: each KD term is 0.5 ln(4/3) at T = 1
    teacher, student = _t([[0.0, 0.0]]), _t([[LOG3, 0.0]])
    losses = crld_losses(student, student, teacher, teacher, 1.0, wv_weight=2.0, cv_weight=0.5, tau_w=0.5, tau_s=0.5)
    assert losses["loss_kd_wv"].item() == pytest.approx(2.0 * 2 * KL_HALF_VS_3_1)
    assert losses["loss_kd_cv"].item() == pytest.approx(0.5 * 2 * KL_HALF_VS_3_1)
    strict = crld_losses(student, student, teacher, teacher, 1.0, tau_w=0.9, tau_s=0.2)
    assert strict["loss_kd_wv"].item() == 0.0 and strict["loss_kd_cv"].item() > 0  # 0.5 < tau_w, >= tau_s


def test_crld_masks_are_per_sample_and_average_over_the_whole_batch():
    teacher = _t([[0.0, 0.0], [10.0, 0.0]])  # confidences 0.5 and ~1
    student = _t([[LOG3, 0.0], [10.0, 0.0]])  # the confident sample is copied exactly
    weak, strong = crld_masks(teacher, teacher, 0.9, 0.2)
    assert weak.tolist() == [False, True] and strong.tolist() == [True, True]
    losses = crld_losses(student, student, teacher, teacher, 1.0, cv_weight=1.0)
    assert losses["loss_kd_wv"].item() == pytest.approx(0.0, abs=1e-12)  # only the copied sample is selected
    assert losses["loss_kd_cv"].item() == pytest.approx(2 * KL_HALF_VS_3_1 / 2)  # its terms / B = 2


@pytest.mark.parametrize("cls", [MLKD, CRLD])
def test_distillers_feed_the_loss_functions(cls):
    torch.manual_seed(3)
    student, teacher = nn.Linear(4, 6).double(), nn.Linear(4, 6).double()
    weak, strong = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    target = torch.randint(0, 6, (8,))
    (s_weak, s_strong), losses = cls(student, teacher).train()((weak, strong), target)
    with torch.no_grad():
        t_weak, t_strong = teacher(weak), teacher(strong)
    if cls is MLKD:
        expected = mlkd_losses(s_weak, s_strong, t_weak, t_strong, (4.0, 3.0, 5.0, 2.0, 6.0))
    else:
        expected = crld_losses(s_weak, s_strong, t_weak, t_strong, 4.0)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=0, atol=1e-12)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(losses["loss_ce"], ce(s_weak, target) + ce(s_strong, target), rtol=0, atol=1e-12)
