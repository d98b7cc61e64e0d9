"""Loss identities, the top-k mask and its schedule."""

import math

import pytest
import torch
from deepkd.deepkd import TopKSchedule, static_topk
from deepkd.losses import (
    MASK_OFFSET,
    dkd_parts,
    kd_loss,
    nckd_loss,
    target_mask,
    tckd_loss,
    teacher_target_prob,
    topk_mask,
)
from effrepro.errors import UsageError
from torch.nn import functional as F


def _logits(batch=32, classes=10, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * scale
    teacher = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, target


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_identity_tckd_plus_weighted_nckd_is_kd(temperature):
    student, teacher, target = _logits()
    tckd, nckd = dkd_parts(student, teacher, target, temperature)
    weight = 1 - teacher_target_prob(teacher, target, temperature)
    torch.testing.assert_close(tckd + weight * nckd, kd_loss(student, teacher, temperature), rtol=0, atol=1e-10)


def test_tckd_matches_the_released_log_of_sums_form():
    student, teacher, target = _logits()
    t = 4.0
    gt = target_mask(student, target)
    p_s, p_t = F.softmax(student / t, 1), F.softmax(teacher / t, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1)
    released = F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1) * t**2
    torch.testing.assert_close(tckd_loss(student, teacher, target, t), released, rtol=0, atol=1e-12)


def test_tckd_stays_finite_for_a_saturated_student():
    student, teacher, target = _logits(batch=4)
    student = student.clone()
    student[torch.arange(4), target] = 5000.0  # p_y == 1 in float64: log(1 - p_y) = -inf in the released form
    assert torch.isfinite(tckd_loss(student, teacher, target, 1.0)).all()


def test_known_values_kl_of_identical_distributions_and_t_squared_scaling():
    student, _, target = _logits()
    assert kd_loss(student, student, 4.0).abs().max().item() < 1e-12
    tckd, nckd = dkd_parts(student, student, target, 4.0)
    assert tckd.abs().max().item() < 1e-12 and nckd.abs().max().item() < 1e-12
    # doubling T and the logits keeps the distributions; the loss scales with T^2
    student, teacher, _ = _logits()
    torch.testing.assert_close(kd_loss(2 * student, 2 * teacher, 2.0), 4 * kd_loss(student, teacher, 1.0))


def test_mask_with_k_at_least_c_is_the_plain_nckd():
    student, teacher, target = _logits()
    plain = nckd_loss(student, teacher, target_mask(student, target), 4.0)
    for k in (10, 12):
        assert torch.equal(dkd_parts(student, teacher, target, 4.0, topk=k)[1], plain)
    assert torch.equal(topk_mask(teacher, target, 10), target_mask(teacher, target))


def test_kept_set_is_teacher_topk_minus_target():
    student, teacher, target = _logits(batch=64, classes=20)
    k = 5
    excluded = topk_mask(teacher, target, k)
    top = teacher.topk(k, 1).indices
    for row in range(64):
        kept = set(torch.nonzero(~excluded[row]).flatten().tolist())
        expected = set(top[row].tolist()) - {int(target[row])}
        assert kept == expected
        assert len(kept) == (k - 1 if int(target[row]) in top[row].tolist() else k)


def test_masked_student_logits_get_exactly_zero_gradient():
    student, teacher, target = _logits(batch=16, classes=20)
    student.requires_grad_(True)
    loss = dkd_parts(student, teacher, target, 4.0, topk=6)[1].sum()
    (grad,) = torch.autograd.grad(loss, student)
    excluded = topk_mask(teacher, target, 6)
    assert grad[excluded].abs().max().item() == 0.0
    assert grad[~excluded].abs().max().item() > 0.0
    # the same kept set on both sides: the teacher's masked distribution is zero exactly where excluded
    p_t = F.softmax(teacher / 4.0 - MASK_OFFSET * excluded.double(), 1)
    assert p_t[excluded].max().item() == 0.0


def test_k2_with_a_correct_teacher_is_zero_and_k1_degenerates_to_all_class_kd():
    student, teacher, target = _logits(batch=16, classes=10)
    target = teacher.argmax(1)  # the teacher ranks the target first: K=2 keeps exactly one class
    assert dkd_parts(student, teacher, target, 4.0, topk=2)[1].abs().max().item() < 1e-12
    # K=1 masks every class; the -1000 offset then cancels in the softmax: NCKD becomes the unmasked all-class KD
    torch.testing.assert_close(dkd_parts(student, teacher, target, 4.0, topk=1)[1], kd_loss(student, teacher, 4.0))


def test_schedule_values_monotone_and_endpoints():
    sched = TopKSchedule(num_classes=100, k0=10, start_epoch=20, end_epoch=150)
    values = [sched(e) for e in range(0, 241)]
    assert values[0] == 10 and sched(20) == 10
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(v == 100 for v in values[150:])
    assert sched(85) == 10 + math.ceil(90 * 0.5)
    cosine = TopKSchedule(100, 10, 0, 10, curve="cosine")
    assert cosine(5) == 10 + math.ceil(90 * 0.5) and cosine(10) == 100
    step = TopKSchedule(100, 10, 0, 10, curve="step")
    assert step(9) == 10 and step(10) == 100


def test_schedule_and_static_k_reject_bad_values():
    with pytest.raises(UsageError, match="larger than the class count"):
        TopKSchedule(100, 120, 0, 10)
    with pytest.raises(UsageError, match="degenerate"):
        TopKSchedule(100, 2, 0, 10)
    with pytest.raises(UsageError, match="end_epoch"):
        TopKSchedule(100, 10, 10, 10)
    with pytest.raises(UsageError, match="larger than the class count"):
        static_topk(101, 100)
    assert static_topk(0, 100) == 0 and static_topk(50, 100) == 50


def test_warmup_ramp_values():
    from deepkd.distillers import warmup_factor

    assert warmup_factor(1, 20) == pytest.approx(1 / 20)
    assert warmup_factor(20, 20) == 1.0 and warmup_factor(200, 20) == 1.0
