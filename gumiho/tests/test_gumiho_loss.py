import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftBatch, LossContext, feature_losses
from gumiho.gumiho import GumihoConfig, GumihoDraft, LossWeights, combine, gumiho_loss


def ones(mlp_num: int = 5) -> dict[str, torch.Tensor]:
    comps = {"reg_T": torch.tensor(1.0), "cls_T": torch.tensor(1.0)}
    for i in range(mlp_num):
        comps[f"reg_{i}"], comps[f"cls_{i}"] = torch.tensor(1.0), torch.tensor(1.0)
    return comps


def test_loss_weights_known_values():
    # by hand: 1.1 + 1.1 * (1/9) sum 0.8^(i+1) with MLP CE on; 1.1 + 0.298809 during the warm-up epochs
    weights = LossWeights()
    assert combine(ones(), weights, epoch=2, mlp_num=5).item() == pytest.approx(1.428690, abs=1e-5)
    assert combine(ones(), weights, epoch=1, mlp_num=5).item() == pytest.approx(1.398809, abs=1e-5)
    assert combine(ones(), weights, epoch=0, mlp_num=5).item() == pytest.approx(1.398809, abs=1e-5)
    assert combine(ones(), LossWeights.accelerate(), epoch=0, mlp_num=5).item() == pytest.approx(6.6)
    assert [round(weights.head_weight(i), 4) for i in range(5)] == [0.0889, 0.0711, 0.0569, 0.0455, 0.0364]


def test_loss_weights_from_config_dict():
    assert LossWeights.from_dict({"v_w": 1.0, "p_w": 0.1}) == LossWeights()
    assert LossWeights.from_dict({"mlp_ce_warmup_epochs": 0}).mlp_ce_weight(0) == pytest.approx(0.1)
    with pytest.raises(UsageError, match="mlp_decay"):
        LossWeights.from_dict({"mlp_decay": 0.5})


def make_batch(length=12, hidden=8, vocab=11, loss_mask=None) -> DraftBatch:
    """A DraftBatch of one sequence whose features are a ramp f_t = t e_1 (no noise)."""
    feats = torch.zeros(1, length, hidden)
    feats[0, :, 0] = torch.arange(length, dtype=torch.float32)
    ids = torch.randint(0, vocab, (1, length))
    target = torch.roll(feats, -1, dims=1)
    target[:, -1] = 0
    mask = torch.ones(1, length) if loss_mask is None else loss_mask
    mask[:, -1] = 0
    next_ids = torch.roll(ids, -1, dims=1)
    next_ids[:, -1] = 0
    return DraftBatch(ids, feats, next_ids, target, mask, torch.ones(1, length, dtype=torch.long))


class OracleDraft(GumihoDraft):
    """Predicts exactly the feature each head should regress (ramp), garbage where roll would wrap."""

    def train_forward(self, features, next_ids, attention_mask=None):
        length = features.shape[1]
        t = torch.arange(length, dtype=torch.float32)
        steps = self.config.serial_steps

        def ramp_at(pos):
            out = torch.zeros(1, length, self.config.hidden_size)
            out[0, :, 0] = torch.where(pos < length, pos, torch.full_like(pos, 1e6))  # past the end -> garbage
            return out

        hidden = ramp_at(t + 1)
        preds = torch.stack([ramp_at(t + steps + 1 + i) for i in range(self.config.mlp_num)], dim=2)
        return hidden, preds


def tiny(**kw):
    return GumihoConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                        vocab_size=11, **kw)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_training_alignment_on_a_ramp(steps):
    torch.manual_seed(0)
    draft = OracleDraft(tiny(serial_steps=steps, mlp_num=7 - steps))
    out = gumiho_loss(draft, make_batch(), torch.randn(11, 8), epoch=5)
    # Transformer vs f_{t+1}, MLP_i vs f_{t+S+1+i}: exact, and the wrapped / past-the-end rows are never used
    assert out["reg_T"].item() == 0.0
    for i in range(7 - steps):
        assert out[f"reg_{i}"].item() == 0.0


def test_mask_alignment_uses_shifted_masks():
    torch.manual_seed(0)
    draft = OracleDraft(tiny())
    loss_mask = torch.zeros(1, 12)
    loss_mask[0, 7] = 1  # only M_7 is on
    original = OracleDraft.train_forward

    def broken(self, features, next_ids, attention_mask=None):
        hidden, preds = original(self, features, next_ids, attention_mask)
        preds = preds.clone()
        preds[0, 7 - 2 - 1, 1, 0] += 1.0  # head 1 at t = 4 is scored against f_8 under M_{t+2+1} = M_7
        preds[0, 7, 1, 0] += 1.0  # the same head at t = 7 is masked out (M_10 = 0)
        return hidden, preds

    draft.train_forward = broken.__get__(draft)
    out = gumiho_loss(draft, make_batch(loss_mask=loss_mask), torch.randn(11, 8), epoch=5)
    # SmoothL1(1) = 0.5, averaged over H = 8 dims, one masked row: 0.5 / 8
    assert out["reg_1"].item() == pytest.approx(0.5 / 8, rel=1e-4)
    assert out["reg_0"].item() == 0.0 and out["reg_T"].item() == 0.0


def test_soft_cross_entropy_known_value():
    torch.manual_seed(0)
    draft = OracleDraft(tiny())
    batch = make_batch()
    lm_head = torch.randn(11, 8)
    out = gumiho_loss(draft, batch, lm_head, epoch=5)
    # predictions equal the targets, so the soft CE is the mean entropy of softmax(W f_{t+1}) over masked rows
    rows = batch.loss_mask[0] > 0
    logp = torch.log_softmax(batch.target_features[0, rows] @ lm_head.t(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    assert out["cls_T"].item() == pytest.approx(entropy.sum().item() / (rows.sum().item() + 1e-5), rel=1e-5)


def test_matches_the_engine_feature_losses_and_skips_warmup_ce():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny())
    for p in draft.mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch = make_batch(loss_mask=(torch.rand(1, 12) > 0.4).float())
    batch.features = torch.randn_like(batch.features)
    batch.target_features = torch.randn_like(batch.target_features)
    lm_head = torch.randn(11, 8)
    out = gumiho_loss(draft, batch, lm_head, epoch=2)
    hidden, preds = draft.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    for name, pred, shift in [("T", hidden, 0)] + [(str(i), preds[:, :, i], 2 + i) for i in range(5)]:
        reg, cls = feature_losses(pred, batch, lm_head, shift=shift)
        assert out[f"reg_{name}"].item() == pytest.approx(reg.item(), rel=1e-5)
        assert out[f"cls_{name}"].item() == pytest.approx(cls.item(), rel=1e-5)
    warm = gumiho_loss(draft, batch, lm_head, epoch=1)
    assert warm["cls_0"].item() == 0.0 and warm["cls_T"].item() == pytest.approx(out["cls_T"].item())


def test_compute_loss_hook_reads_epoch_and_weights():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny())
    batch = make_batch()
    lm_head = torch.randn(11, 8)
    warm = draft.compute_loss(batch, LossContext(lm_head, epoch=0, weights={"v_w": 1.0, "p_w": 0.1}))
    on = draft.compute_loss(batch, LossContext(lm_head, epoch=0, weights={"mlp_ce_warmup_epochs": 0}))
    assert on["loss"].item() > warm["loss"].item()


def test_loss_backpropagates_into_every_part():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny())
    batch = make_batch()
    batch.features = torch.randn_like(batch.features)
    out = gumiho_loss(draft, batch, torch.randn(11, 8), epoch=0)
    out["loss"].backward()
    assert draft.fc.weight.grad.abs().sum() > 0
    assert draft.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert draft.mlp.mlp[4][0].linear.weight.grad.abs().sum() > 0
    assert draft.embed_tokens.weight.grad is None


def test_eval_metrics_top1_matches_the_engine_topk_accuracy():
    from effrepro.specdec import topk_accuracy

    torch.manual_seed(0)
    draft = GumihoDraft(tiny())
    for p in draft.mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch = make_batch(loss_mask=(torch.rand(1, 12) > 0.3).float())
    batch.features = torch.randn_like(batch.features)
    batch.target_features = torch.randn_like(batch.target_features)
    lm_head = torch.randn(11, 8)
    metrics = draft.eval_metrics(batch, LossContext(lm_head, epoch=3))
    hidden, preds = draft.train_forward(batch.features, batch.next_ids, batch.attention_mask)
    hits, count = topk_accuracy(hidden, batch, lm_head, k=1, shift=0)
    assert metrics["top1_T"] == pytest.approx(hits / count)
    hits, count = topk_accuracy(preds[:, :, 2], batch, lm_head, k=1, shift=4)
    assert metrics["top1_2"] == pytest.approx(hits / count)
