"""Loss alignment (spec §6.4 item 9): shifted targets, the +1 contrastive shift, masks, noise amplitude."""

import torch
import torch.nn.functional as F
from jakiro.loss import LossWeights, jakiro_loss, shift_batch, uniform_feature_noise


def synthetic(length: int = 8, hidden: int = 6, vocab: int = 11):
    """f_t = c * t (plus a per-dim offset so the LM head sees distinct rows), one sequence, all-assistant mask."""
    c = torch.linspace(0.1, 0.6, hidden, dtype=torch.float64)
    t = torch.arange(length, dtype=torch.float64)[:, None]
    feats = (c * t)[None]
    ids = torch.arange(length)[None] + 3
    lm_head = torch.randn(vocab, hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return feats, ids, lm_head


def entropy_of(rows: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
    p = F.linear(rows, lm_head).softmax(-1)
    return -(p * p.log()).sum(-1)


def test_shift_targets_and_masks():
    feats, ids, _ = synthetic()
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    batch = shift_batch(feats, ids, loss_mask)
    torch.testing.assert_close(batch.target[0, :-1], feats[0, 1:])  # branch 0 at t -> f_{t+1}
    assert torch.all(batch.target[0, -1] == 0)
    assert batch.next_ids[0].tolist() == ids[0, 1:].tolist() + [0]  # x_{t+1}, zero-padded
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0]  # M_{L-1} = 0


def test_right_padding_zeroes_the_last_real_position():
    feats = torch.randn(2, 5, 4, dtype=torch.float64)
    ids = torch.randint(1, 9, (2, 5))
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = shift_batch(feats, ids, torch.ones(2, 5, dtype=torch.long), attn)
    assert batch.loss_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]


def test_perfect_predictor_has_zero_regression_and_zero_kl():
    feats, ids, lm_head = synthetic()
    loss_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    batch = shift_batch(feats, ids, loss_mask)
    # perfect: branch 0 at t outputs f_{t+1}; branch 1 at t outputs f_{t+2} (targets beyond the end: anything)
    pred0 = torch.cat([feats[:, 1:], torch.zeros_like(feats[:, :1])], dim=1)
    pred1 = torch.cat([feats[:, 2:], torch.zeros_like(feats[:, :2])], dim=1)
    out = jakiro_loss(torch.stack([pred0, pred1]), batch, lm_head)
    assert out["reg0"].item() == 0 and out["reg1"].item() == 0
    m0 = batch.loss_mask[0] > 0
    m1 = batch.loss_mask[0, 1:] > 0
    h0 = entropy_of(feats[0, 1:][m0[:-1]], lm_head).mean()
    h1 = entropy_of(feats[0, 2:][m1[:-1]], lm_head).mean()
    torch.testing.assert_close(out["cls0"], h0, rtol=1e-6, atol=1e-6)  # soft CE = entropy (KL = 0)
    torch.testing.assert_close(out["cls1"], h1, rtol=1e-6, atol=1e-6)
    assert out["acc0"].item() > 0.999 and out["acc1"].item() > 0.999
    expected = 1.0 * (0 + 0.5 * 0) + 0.1 * (h0 + 0.5 * h1)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-6)


def test_off_by_one_contrastive_branch_is_penalised():
    feats, ids, lm_head = synthetic()
    batch = shift_batch(feats, ids, torch.ones_like(ids))
    pred0 = torch.cat([feats[:, 1:], torch.zeros_like(feats[:, :1])], dim=1)
    # a contrastive branch that (wrongly) predicts f_{t+1} instead of f_{t+2}
    out = jakiro_loss(torch.stack([pred0, pred0]), batch, lm_head)
    assert out["reg0"].item() == 0 and out["reg1"].item() > 0.01


def test_loss_matches_official_dense_formula():
    torch.manual_seed(0)
    B, L, H, V = 2, 7, 5, 13
    feats = torch.randn(B, L, H, dtype=torch.float64)
    ids = torch.randint(0, V, (B, L))
    loss_mask = (torch.rand(B, L) > 0.3).long()
    lm_head = torch.randn(V, H, dtype=torch.float64)
    pred = torch.randn(2, B, L, H, dtype=torch.float64)
    batch = shift_batch(feats, ids, loss_mask)
    out = jakiro_loss(pred, batch, lm_head, LossWeights(v_w=1.0, p_w=0.1, const=0.5))
    # official main.py lines, written densely
    target_p = F.linear(batch.target, lm_head).softmax(-1)
    out_logp = F.linear(pred, lm_head).log_softmax(-1)
    m = batch.loss_mask[:, :, None]
    ploss1 = -torch.sum(torch.sum(m * target_p * out_logp[0], 2)) / (m.sum() + 1e-5)
    vloss1 = torch.sum(torch.mean(m * F.smooth_l1_loss(pred[0], batch.target, reduction="none"), 2)) / (m.sum() + 1e-5)
    m1 = m[:, 1:]
    ploss2 = -torch.sum(torch.sum(m1 * target_p[:, 1:] * out_logp[1][:, :-1], 2)) / (m1.sum() + 1e-5)
    vloss2 = torch.sum(torch.mean(m1 * F.smooth_l1_loss(pred[1][:, :-1], batch.target[:, 1:], reduction="none"), 2))
    vloss2 = vloss2 / (m1.sum() + 1e-5)
    official = 1.0 * (vloss1 + 0.5 * vloss2) + 0.1 * (ploss1 + 0.5 * ploss2)
    torch.testing.assert_close(out["loss"], official, rtol=1e-10, atol=1e-10)
    # the ablation without the contrastive branch drops branch 1 entirely
    single = jakiro_loss(pred[0], batch, lm_head)
    torch.testing.assert_close(single["loss"], vloss1 + 0.1 * ploss1, rtol=1e-10, atol=1e-10)


def test_uniform_noise_amplitude_depends_on_length():
    feats = torch.zeros(2, 4096, 3)
    noisy = uniform_feature_noise(feats, torch.tensor([512, 2048]), std=0.2,
                                  generator=torch.Generator().manual_seed(0))
    assert 0.099 < noisy[0].abs().max() <= 0.1  # +-0.1 at L = 512
    assert 0.0249 < noisy[1].abs().max() <= 0.025  # +-0.025 at L = 2048
