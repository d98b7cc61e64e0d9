"""Loss alignment: shifted targets, the +1 contrastive shift, masks, official formula."""

import torch
import torch.nn.functional as F
from effrepro.specdec import DraftBatch, LossContext, eagle_loss, feature_losses
from jakiro.jakiro import eagle_masked_loss, jakiro_loss, masked_feature_losses


def official_batch(feats: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor) -> DraftBatch:
    """The official ``CustomDataset.__getitem__`` pairing for unpadded rows (no noise)."""
    next_ids = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)
    target = torch.cat([feats[:, 1:], torch.zeros_like(feats[:, :1])], dim=1)
    mask = loss_mask.clone().to(feats.dtype)
    mask[:, -1] = 0
    return DraftBatch(ids, feats, next_ids, target, mask, torch.ones_like(ids))


def synthetic(length: int = 8, hidden: int = 6, vocab: int = 11):
    """f_t = c * t, one sequence."""
    c = torch.linspace(0.1, 0.6, hidden, dtype=torch.float64)
    feats = (c * torch.arange(length, dtype=torch.float64)[:, None])[None]
    ids = torch.arange(length)[None] + 3
    lm_head = torch.randn(vocab, hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return feats, ids, lm_head


def entropy_of(rows: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
    p = F.linear(rows, lm_head).softmax(-1)
    return -(p * p.log()).sum(-1)


def test_perfect_predictor_has_zero_regression_and_zero_kl():
    feats, ids, lm_head = synthetic()
    loss_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    batch = official_batch(feats, ids, loss_mask)
    # perfect: branch 0 at t outputs f_{t+1}; branch 1 at t outputs f_{t+2}
    pred0 = torch.cat([feats[:, 1:], torch.zeros_like(feats[:, :1])], dim=1)
    pred1 = torch.cat([feats[:, 2:], torch.zeros_like(feats[:, :2])], dim=1)
    out = jakiro_loss(torch.stack([pred0, pred1]), batch, lm_head, with_accuracy=True)
    assert out["reg0"].item() < 1e-12 and out["reg1"].item() < 1e-12
    m0 = batch.loss_mask[0, :-1] > 0  # t with M_t = 1 -> target f_{t+1}
    m1 = batch.loss_mask[0, 1:-1] > 0  # t with M_{t+1} = 1 -> target f_{t+2}
    h0 = entropy_of(feats[0, 1:][m0], lm_head).mean()
    h1 = entropy_of(feats[0, 2:][m1], lm_head).mean()
    torch.testing.assert_close(out["cls0"].double(), h0, rtol=1e-5, atol=1e-5)  # soft CE = entropy: KL = 0
    torch.testing.assert_close(out["cls1"].double(), h1, rtol=1e-5, atol=1e-5)
    assert out["acc0"].item() == 1.0 and out["acc1"].item() == 1.0
    torch.testing.assert_close(out["loss"].double(), 0.1 * (h0 + 0.5 * h1), rtol=1e-5, atol=1e-5)


def test_off_by_one_contrastive_branch_is_penalised():
    feats, ids, lm_head = synthetic()
    batch = official_batch(feats, ids, torch.ones_like(ids))
    pred0 = torch.cat([feats[:, 1:], torch.zeros_like(feats[:, :1])], dim=1)
    # a contrastive branch that (wrongly) predicts f_{t+1} instead of f_{t+2}
    out = jakiro_loss(torch.stack([pred0, pred0]), batch, lm_head)
    assert out["reg0"].item() < 1e-12 and out["reg1"].item() > 0.01


def test_loss_matches_official_dense_formula():
    torch.manual_seed(0)
    B, L, H, V = 2, 7, 5, 13
    feats = torch.randn(B, L, H, dtype=torch.float64)
    ids = torch.randint(0, V, (B, L))
    loss_mask = (torch.rand(B, L) > 0.3).long()
    lm_head = torch.randn(V, H, dtype=torch.float64)
    pred = torch.randn(2, B, L, H, dtype=torch.float64)
    batch = official_batch(feats, ids, loss_mask)
    out = jakiro_loss(pred, batch, lm_head, {"v_w": 1.0, "p_w": 0.1, "const": 0.5})
    # official main.py lines 446-470, written densely
    target_p = F.linear(batch.target_features, lm_head).softmax(-1)
    out_logp = F.linear(pred, lm_head).log_softmax(-1)
    m = batch.loss_mask[:, :, None]
    ploss1 = -torch.sum(torch.sum(m * target_p * out_logp[0], 2)) / (m.sum() + 1e-5)
    vloss1 = F.smooth_l1_loss(pred[0], batch.target_features, reduction="none")
    vloss1 = torch.sum(torch.mean(m * vloss1, 2)) / (m.sum() + 1e-5)
    m1 = m[:, 1:]
    ploss2 = -torch.sum(torch.sum(m1 * target_p[:, 1:] * out_logp[1][:, :-1], 2)) / (m1.sum() + 1e-5)
    vloss2 = F.smooth_l1_loss(pred[1][:, :-1], batch.target_features[:, 1:], reduction="none")
    vloss2 = torch.sum(torch.mean(m1 * vloss2, 2)) / (m1.sum() + 1e-5)
    official = 1.0 * (vloss1 + 0.5 * vloss2) + 0.1 * (ploss1 + 0.5 * ploss2)
    torch.testing.assert_close(out["loss"].double(), official, rtol=1e-6, atol=1e-6)
    # the ablation without the contrastive branch drops branch 1 entirely
    single = jakiro_loss(pred[0], batch, lm_head)
    torch.testing.assert_close(single["loss"].double(), vloss1 + 0.1 * ploss1, rtol=1e-6, atol=1e-6)
    assert "reg1" not in single
    zero_const = jakiro_loss(pred, batch, lm_head, {"const": 0.0})
    torch.testing.assert_close(zero_const["loss"], single["loss"])


def test_masked_rows_only_equal_the_engine_losses_on_padded_batches():
    torch.manual_seed(1)
    B, L, H, V = 3, 9, 6, 17
    feats = torch.randn(B, L, H)
    ids = torch.randint(0, V, (B, L))
    batch = official_batch(feats, ids, (torch.rand(B, L) > 0.5).long())
    batch.loss_mask[2] = 0  # a row without supervised tokens
    lm_head = torch.randn(V, H)
    pred = torch.randn(B, L, H, requires_grad=True)
    for shift in (0, 1):
        fast = masked_feature_losses(pred, batch, lm_head, shift)
        full = feature_losses(pred, batch, lm_head, shift)
        for a, b in zip(fast, full, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    grad_fast = torch.autograd.grad(sum(masked_feature_losses(pred, batch, lm_head, 1)), pred)[0]
    grad_full = torch.autograd.grad(sum(feature_losses(pred, batch, lm_head, 1)), pred)[0]
    torch.testing.assert_close(grad_fast, grad_full, rtol=1e-5, atol=1e-6)

    class Head(torch.nn.Module):
        def train_forward(self, features, next_ids, attention_mask=None):
            return pred

    ctx = LossContext(lm_head=lm_head)
    torch.testing.assert_close(eagle_masked_loss(Head(), batch, ctx)["loss"], eagle_loss(pred, batch, ctx)["loss"])
