"""Metric formulas on hand-written records, loss alignment and the collator."""

import json
import math

import pytest
import torch
from effrepro.specdec import (
    DraftBatch,
    DraftCollator,
    LossContext,
    acceptance_by_depth,
    eagle_loss,
    feature_losses,
    speed_ratio,
    summarize,
    tau_metrics,
    topk_accuracy,
)
from effrepro.specdec.harness import load_questions

RECORDS = """\
{"question_id": 1, "turn": 0, "new_tokens": 11, "cycle_tokens": 10, "idxs": 3, "cycles": 4, "wall_time": 1.0}
{"question_id": 1, "turn": 1, "new_tokens": 7, "cycle_tokens": 6, "idxs": 1, "cycles": 2, "wall_time": 0.5}
{"question_id": 2, "turn": 0, "new_tokens": 10, "cycle_tokens": 9, "idxs": 2, "cycles": 3, "wall_time": 2.0}
{"question_id": 2, "turn": 1, "new_tokens": 5, "cycle_tokens": 4, "idxs": 0, "cycles": 1, "wall_time": 1.0}
"""
BASELINE = """\
{"question_id": 1, "turn": 0, "new_tokens": 11, "idxs": 9, "cycles": 10, "wall_time": 2.0}
{"question_id": 1, "turn": 1, "new_tokens": 7, "idxs": 5, "cycles": 6, "wall_time": 1.0}
{"question_id": 2, "turn": 0, "new_tokens": 10, "idxs": 8, "cycles": 9, "wall_time": 4.0}
{"question_id": 2, "turn": 1, "new_tokens": 5, "idxs": 3, "cycles": 4, "wall_time": 2.0}
"""


def _rows(text, tmp_path, name):
    path = tmp_path / name
    path.write_text(text)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tau_formulas_on_hand_written_records(tmp_path):
    rows = _rows(RECORDS, tmp_path, "method.jsonl")
    tau = tau_metrics(rows)
    assert tau["tau"] == pytest.approx(29 / 10)  # pooled: sum new / sum cycles
    assert tau["tau_script"] == pytest.approx((16 / 4 + 13 / 2) / 2)  # official: per question sum new / sum idx
    assert tau["tau_cycle"] == pytest.approx((16 / 6 + 13 / 4) / 2)  # per question sum new / (sum idx + turns)


def test_speedup_is_a_ratio_of_mean_per_question_speeds(tmp_path):
    method = _rows(RECORDS, tmp_path, "method.jsonl")
    base = _rows(BASELINE, tmp_path, "plain.jsonl")
    # method: q1 18 tokens / 1.5 s = 12, q2 15 / 3 = 5 -> 8.5; plain: 18 / 3 = 6, 15 / 6 = 2.5 -> 4.25
    assert speed_ratio(method, base) == pytest.approx(2.0)


def test_acceptance_by_depth_and_summary():
    rows = [{"question_id": 1, "accept_lengths": [2, 0, 1, 3], "tree_depths": [3, 3, 3, 3], "new_tokens": 10,
             "cycle_tokens": 10, "idxs": 3, "cycles": 4, "wall_time": 1.0, "draft_time": 0.4, "verify_time": 0.5,
             "draft_forwards": 16, "tokens": [1, 2]}]
    assert acceptance_by_depth(rows) == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    plain = [{"question_id": 1, "new_tokens": 10, "idxs": 9, "cycles": 10, "wall_time": 2.0, "tokens": [1, 2]}]
    summary = summarize({"plain": plain, "m": rows}, costs={"step": 0.1, "verify_8": 0.2}, tree_sizes={"m": 8})
    m = summary["m"]
    assert m["tau"] == pytest.approx(2.5) and m["speedup"] == pytest.approx(2.0)
    assert m["greedy_mismatches"] == 0 and m["draft_forwards_per_cycle"] == pytest.approx(4.0)
    assert m["draft_share"] == pytest.approx(0.4) and m["verify_ms_per_cycle"] == pytest.approx(125.0)
    # cost model: tau * t_step / (median draft per cycle + t_verify) = 2.5 * 0.1 / (0.1 + 0.2)
    assert m["cost_model_speedup"] == pytest.approx(2.5 * 0.1 / 0.3)


def test_question_file_loading(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question_id": 7, "category": "x", "turns": ["a", "b"]}\n\n')
    assert load_questions(str(good)) == [{"question_id": 7, "category": "x", "turns": ["a", "b"]}]
    from effrepro.errors import UsageError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1"):
        load_questions(str(bad))
    with pytest.raises(UsageError, match="not found"):
        load_questions(str(tmp_path / "missing.jsonl"))


def ramp_batch(length: int = 8, hidden: int = 4, shift_mask: bool = False) -> DraftBatch:
    """A sample with f_t = (t+1) * c, collated the way training sees it."""
    c = torch.linspace(0.5, 1.0, hidden)
    hidden_state = torch.arange(1, length + 1, dtype=torch.float32)[:, None] * c
    sample = {"input_ids": torch.arange(10, 10 + length), "hidden_state": hidden_state,
              "loss_mask": torch.tensor([0, 0, 1, 1, 1, 1, 1, 1][:length])}
    return DraftCollator(noise="none")([sample])


def test_collator_shifts_and_masks():
    batch = ramp_batch()
    assert batch.next_ids[0].tolist() == [11, 12, 13, 14, 15, 16, 17, 0]
    assert torch.equal(batch.target_features[0, :-1], batch.features[0, 1:])  # T_t = f_{t+1}
    assert batch.target_features[0, -1].abs().sum() == 0
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0]  # M_{L-1} = 0


def test_uniform_noise_amplitude_depends_on_length():
    for length in (8, 64):
        sample = {"input_ids": torch.zeros(length, dtype=torch.long), "hidden_state": torch.zeros(length, 16),
                  "loss_mask": torch.ones(length)}
        batch = DraftCollator(noise_std=0.2)([sample])
        bound = 0.2 * 512 / length / 2
        assert batch.features.abs().max() <= bound and batch.features.abs().max() > 0.8 * bound
        assert batch.target_features.abs().max() == 0  # targets are never noised


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_feature_loss_alignment(shift):
    """A prediction at t of f_{t+1+shift} has zero regression loss, and soft-CE equal to the teacher entropy."""
    batch = ramp_batch()
    lm_head = torch.randn(11, 4, generator=torch.Generator().manual_seed(0))
    length = batch.features.shape[1]
    perfect = torch.zeros_like(batch.features)
    perfect[0, : length - shift] = batch.target_features[0, shift:]
    reg, cls = feature_losses(perfect, batch, lm_head, shift=shift)
    mask = batch.loss_mask[0, shift:]
    assert float(reg) == pytest.approx(0.0, abs=1e-7)
    teacher = torch.softmax(batch.target_features[0, shift:] @ lm_head.t(), -1)
    entropy = -(teacher * teacher.log()).sum(-1)
    assert float(cls) == pytest.approx(float((entropy * mask).sum() / (mask.sum() + 1e-5)), rel=1e-5)
    wrong = perfect.clone()
    wrong[0, 2] += 3.0  # a masked position (M_{2+shift} = 1) must be penalised
    assert float(feature_losses(wrong, batch, lm_head, shift=shift)[0]) > 0.1


def test_eagle_loss_weights():
    batch = ramp_batch()
    lm_head = torch.randn(11, 4, generator=torch.Generator().manual_seed(1))
    pred = batch.target_features + 0.5
    parts = eagle_loss(pred, batch, LossContext(lm_head, weights={"v_w": 1.0, "p_w": 0.1}))
    assert float(parts["loss"]) == pytest.approx(float(parts["reg"] + 0.1 * parts["cls"]))
    # SmoothL1 with beta 1 of a constant 0.5 error is 0.5 * 0.5^2 = 0.125 on every masked position
    assert float(parts["reg"]) == pytest.approx(0.125 * 5 / (5 + 1e-5))
    assert math.isfinite(float(parts["cls"]))


def test_feature_losses_skip_unsupervised_rows():
    """Prompt / padding rows are dropped, not computed and zeroed: garbage (NaN) there cannot reach the loss or
    the gradient, and the value equals the masked-mean formula."""
    torch.manual_seed(0)
    batch_size, length, hidden, vocab = 2, 7, 4, 11
    target = torch.randn(batch_size, length, hidden)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    batch = DraftBatch(torch.zeros(batch_size, length, dtype=torch.long), target.clone(),
                       torch.zeros(batch_size, length, dtype=torch.long), target, mask,
                       torch.ones(batch_size, length, dtype=torch.long))
    lm_head = torch.randn(vocab, hidden)
    pred = torch.randn(batch_size, length, hidden)
    reg, cls = feature_losses(pred, batch, lm_head)
    denom = mask.sum() + 1e-5
    want_reg = (torch.nn.functional.smooth_l1_loss(pred, target, reduction="none").mean(-1) * mask).sum() / denom
    teacher = torch.softmax(target @ lm_head.t(), -1)
    want_cls = -((teacher * torch.log_softmax(pred @ lm_head.t(), -1)).sum(-1) * mask).sum() / denom
    assert float(reg) == pytest.approx(float(want_reg), rel=1e-6)
    assert float(cls) == pytest.approx(float(want_cls), rel=1e-6)
    poisoned = pred.clone().requires_grad_(True)
    with torch.no_grad():
        poisoned[mask == 0] = float("nan")
    reg2, cls2 = feature_losses(poisoned, batch, lm_head)
    assert float(reg2.detach()) == pytest.approx(float(reg), rel=1e-6)
    assert float(cls2.detach()) == pytest.approx(float(cls), rel=1e-6)
    (reg2 + cls2).backward()
    assert torch.all(poisoned.grad[mask == 0] == 0) and torch.isfinite(poisoned.grad).all()
    hits, count = topk_accuracy(poisoned.detach(), batch, lm_head, k=1)
    assert count == float(mask.sum()) and 0 <= hits <= count
