import pytest
import torch
from gumiho.loss import LossWeights, combine, gumiho_loss, shift_batch
from gumiho.model import GumihoConfig, GumihoDraft


def ones(mlp_num: int = 5) -> dict[str, torch.Tensor]:
    comps = {"reg_T": torch.tensor(1.0), "cls_T": torch.tensor(1.0)}
    for i in range(mlp_num):
        comps[f"reg_{i}"], comps[f"cls_{i}"] = torch.tensor(1.0), torch.tensor(1.0)
    return comps


def test_loss_weights_known_values():
    # spec §6.4.5: 1.1 + 1.1 * (1/9) sum 0.8^(i+1) with MLP CE on; 1.1 + 0.298809 during the warm-up epochs
    weights = LossWeights()
    assert combine(ones(), weights, epoch=2, mlp_num=5).item() == pytest.approx(1.428690, abs=1e-5)
    assert combine(ones(), weights, epoch=1, mlp_num=5).item() == pytest.approx(1.398809, abs=1e-5)
    assert combine(ones(), weights, epoch=0, mlp_num=5).item() == pytest.approx(1.398809, abs=1e-5)
    assert combine(ones(), LossWeights.accelerate(), epoch=0, mlp_num=5).item() == pytest.approx(6.6)
    assert [round(weights.head_weight(i), 4) for i in range(5)] == [0.0889, 0.0711, 0.0569, 0.0455, 0.0364]


def make_batch(length=12, hidden=8, vocab=11):
    ramp = torch.arange(length, dtype=torch.float32)
    feats = torch.zeros(1, length, hidden)
    feats[0, :, 0] = ramp  # f_t = t e_1
    ids = torch.randint(0, vocab, (1, length))
    return ids, feats, torch.ones(1, length), torch.ones(1, length)


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
    ids, feats, loss_mask, attn = make_batch()
    out = gumiho_loss(draft, ids, feats, loss_mask, attn, torch.randn(11, 8), epoch=5, noise_std=0.0)
    # Transformer vs f_{t+1}, MLP_i vs f_{t+S+1+i}: exact, and the wrapped / past-the-end rows are never used
    assert out["reg_T"].item() == 0.0
    for i in range(7 - steps):
        assert out[f"reg_{i}"].item() == 0.0


def test_mask_alignment_uses_shifted_masks():
    torch.manual_seed(0)
    draft = OracleDraft(tiny())
    ids, feats, _, attn = make_batch()
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
    out = gumiho_loss(draft, ids, feats, loss_mask, attn, torch.randn(11, 8), epoch=5, noise_std=0.0)
    # SmoothL1(1) = 0.5, averaged over H = 8 dims, one masked row: 0.5 / 8
    assert out["reg_1"].item() == pytest.approx(0.5 / 8, rel=1e-4)
    assert out["reg_0"].item() == 0.0 and out["reg_T"].item() == 0.0


def test_soft_cross_entropy_known_value():
    torch.manual_seed(0)
    draft = OracleDraft(tiny())
    ids, feats, loss_mask, attn = make_batch()
    lm_head = torch.randn(11, 8)
    out = gumiho_loss(draft, ids, feats, loss_mask, attn, lm_head, epoch=5, noise_std=0.0)
    # predictions equal the targets, so the soft CE is the mean entropy of softmax(W f_{t+1}) over masked rows
    shifted = shift_batch(ids, feats, loss_mask, attn)
    rows = shifted["mask"][0] > 0
    logp = torch.log_softmax(shifted["target"][0, rows] @ lm_head.t(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    assert out["cls_T"].item() == pytest.approx(entropy.sum().item() / (rows.sum().item() + 1e-5), rel=1e-5)


def test_shift_batch_masks_last_real_position_and_padding():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    feats = torch.randn(2, 4, 3)
    out = shift_batch(ids, feats, torch.ones(2, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert out["next_ids"].tolist() == [[6, 7, 8, 0], [2, 0, 0, 0]]
    assert out["mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    torch.testing.assert_close(out["target"][0, :3], feats[0, 1:])


def test_loss_backpropagates_into_every_part():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny())
    ids, feats, loss_mask, attn = make_batch()
    out = gumiho_loss(draft, ids, torch.randn_like(feats), loss_mask, attn, torch.randn(11, 8), epoch=0)
    out["loss"].backward()
    assert draft.fc.weight.grad.abs().sum() > 0
    assert draft.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert draft.mlp.mlp[4][0].linear.weight.grad.abs().sum() > 0
    assert draft.embed_tokens.weight.grad is None
