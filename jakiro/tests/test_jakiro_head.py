"""The Jakiro / Jakiro* draft head: MoE identities, state-dict interchangeability, cache consistency, sizes."""

import pytest
import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.specdec.target import TreeKVCache
from jakiro.jakiro import (
    JakiroConfig,
    JakiroDraft,
    JakiroMoE,
    JakiroStarMoE,
    causal_allowed,
    count_parameters,
    load_official_state_dict,
)


def tiny_config(**overrides) -> JakiroConfig:
    values = dict(hidden_size=32, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2, vocab_size=60)
    values.update(overrides)
    return JakiroConfig(**values)


def official_jakiro_moe(moe: JakiroMoE, u: torch.Tensor, penult: bool) -> torch.Tensor:
    """The official winner/loser ``torch.where`` formulation (``MixtralSparseMoeBlock.forward``, E = 2)."""
    r = moe.gate(u)
    y0, y1 = moe.experts[0](u), moe.experts[1](u)
    first = (r[..., 0] > r[..., 1]).unsqueeze(-1)
    w = F.softmax(r[..., :2], dim=-1)
    w_win = torch.where(first[..., 0], w[..., 0], w[..., 1]).unsqueeze(-1)
    w_lose = torch.where(first[..., 0], w[..., 1], w[..., 0]).unsqueeze(-1)
    left = torch.where(first, y0, y1) * w_win + torch.where(first, y1, y0) * w_lose
    if not penult:
        return left
    second = (r[..., 2] > r[..., 3]).unsqueeze(-1)
    v = F.softmax(r[..., 2:], dim=-1)
    v_win = torch.where(second[..., 0], v[..., 0], v[..., 1]).unsqueeze(-1)
    v_lose = torch.where(second[..., 0], v[..., 1], v[..., 0]).unsqueeze(-1)
    right = torch.where(second, y0, y1) * v_win - torch.where(second, y1, y0) * v_lose
    return torch.stack([left, right])


def test_jakiro_moe_matches_spec_formulas_and_official_where_form():
    torch.manual_seed(0)
    moe = JakiroMoE(16).double()
    u = torch.randn(3, 7, 16, dtype=torch.float64)
    r = moe.gate(u)
    y0, y1 = moe.experts[0](u), moe.experts[1](u)
    w, v = r[..., :2].softmax(-1), r[..., 2:].softmax(-1)
    m_moe = w[..., :1] * y0 + w[..., 1:] * y1
    s = torch.sign(r[..., 2:3] - r[..., 3:4])
    m_con = s * (v[..., :1] * y0 - v[..., 1:] * y1)
    torch.testing.assert_close(moe(u), m_moe, rtol=0, atol=1e-12)
    both = moe(u, branches="both")
    assert both.shape == (2, 3, 7, 16)
    torch.testing.assert_close(both[0], m_moe, rtol=0, atol=1e-12)
    torch.testing.assert_close(both[1], m_con, rtol=0, atol=1e-12)
    # the contrastive branch is (preferred weight * preferred output) - (other weight * other output)
    assert torch.all((s > 0) | (s < 0))
    torch.testing.assert_close(moe(u), official_jakiro_moe(moe, u, penult=False), rtol=0, atol=1e-12)
    torch.testing.assert_close(both, official_jakiro_moe(moe, u, penult=True), rtol=0, atol=1e-12)


def test_training_block_equals_penultimate_inference_block():
    """Official ``_train`` always returns the stack the inference block returns on the penultimate step."""
    torch.manual_seed(1)
    draft = JakiroDraft(tiny_config()).double()
    feats = torch.randn(2, 9, 32, dtype=torch.float64)
    ids = torch.randint(0, 60, (2, 9))
    train_out = draft.train_forward(feats, ids)
    pos = torch.arange(9)[None]
    infer = draft(feats, ids, pos, causal_allowed(9, 0), branches="both")
    torch.testing.assert_close(train_out, infer, rtol=0, atol=1e-12)
    # branch 0 of the stack is exactly the normal (non-penultimate) inference step
    torch.testing.assert_close(infer[0], draft(feats, ids, pos, causal_allowed(9, 0)), rtol=0, atol=1e-12)


def test_jakiro_star_moe_train_mixture_and_unweighted_split():
    torch.manual_seed(2)
    moe = JakiroStarMoE(16, 40).double()
    u = torch.randn(4, 5, 16, dtype=torch.float64)
    r = moe.gate(u)
    y0, y1 = moe.experts[0](u), moe.experts[1](u)
    w = r.softmax(-1)
    torch.testing.assert_close(moe(u), w[..., :1] * y0 + w[..., 1:] * y1, rtol=0, atol=1e-12)
    split = moe(u, split=True)
    first = r[..., :1] > r[..., 1:]
    torch.testing.assert_close(split[0], torch.where(first, y0, y1), rtol=0, atol=0)
    torch.testing.assert_close(split[1], torch.where(first, y1, y0), rtol=0, atol=0)
    assert moe.gate.out_features == 2 and moe.experts[0].fc.out_features == 40


def test_state_dicts_interchangeable_and_official_key_names():
    draft = JakiroDraft(tiny_config())
    keys = set(draft.state_dict())
    for key in ("fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.o_proj.weight",
                "layers.0.post_attention_layernorm.weight", "layers.0.mlp_moe.gate.weight",
                "layers.0.mlp_moe.experts.0.gate_proj.weight", "layers.0.mlp_moe.experts.1.down_proj.weight"):
        assert key in keys
    assert not any("input_layernorm" in k for k in keys)  # layer 0 has no input norm
    assert draft.layer.mlp_moe.gate.out_features == 4
    assert draft.layer.mlp_moe.experts[0].gate_proj.out_features == 32  # expert width = H (official override)
    assert not draft.embed_tokens.weight.requires_grad
    # a checkpoint without the embedding loads into a fresh draft and reproduces it
    ckpt = {k: v for k, v in draft.state_dict().items() if "embed" not in k}
    other = JakiroDraft(tiny_config())
    load_official_state_dict(other, ckpt)
    other.embed_tokens.weight.data.copy_(draft.embed_tokens.weight)
    feats, ids = torch.randn(1, 5, 32), torch.randint(0, 60, (1, 5))
    torch.testing.assert_close(other.train_forward(feats, ids), draft.train_forward(feats, ids))


def test_mismatched_checkpoint_is_a_usage_error():
    jakiro = JakiroDraft(tiny_config())
    star = JakiroDraft(tiny_config(variant="star"))
    with pytest.raises(UsageError, match="does not match"):
        load_official_state_dict(jakiro, star.state_dict())
    wider = JakiroDraft(tiny_config(hidden_size=64, intermediate_size=100))
    with pytest.raises(UsageError):
        load_official_state_dict(jakiro, wider.state_dict())
    with pytest.raises(UsageError, match="variant"):
        tiny_config(variant="medusa")


def test_fc_bias_is_a_config_field():
    assert "fc.bias" not in JakiroDraft(tiny_config(fc_bias=False)).state_dict()


def test_incremental_kv_equals_full_recompute_and_first_forward_shortcut():
    torch.manual_seed(3)
    for variant, branches in (("jakiro", "moe"), ("jakiro", "both"), ("star", "split")):
        draft = JakiroDraft(tiny_config(variant=variant)).double()
        feats = torch.randn(1, 11, 32, dtype=torch.float64)
        ids = torch.randint(0, 60, (1, 11))
        pos = torch.arange(11)[None]
        full = draft(feats, ids, pos, causal_allowed(11, 0), branches=branches)
        kv = TreeKVCache(1, 64)
        first = draft(feats[:, :6], ids[:, :6], pos[:, :6], causal_allowed(6, 0), kv=kv, branches=branches)
        assert kv.length == 6
        rest = draft(feats[:, 6:], ids[:, 6:], pos[:, 6:], causal_allowed(5, 6), kv=kv, branches=branches)
        assert kv.length == 11
        torch.testing.assert_close(torch.cat([first, rest], dim=-2), full, rtol=0, atol=1e-10)
        # first_forward: FFN on the last position only, same value as the full computation there
        kv2 = TreeKVCache(1, 64)
        last = draft(feats, ids, pos, causal_allowed(11, 0), kv=kv2, branches=branches, last_only=True)
        assert last.shape[-2] == 1 and kv2.length == 11
        torch.testing.assert_close(last, full[..., -1:, :], rtol=0, atol=1e-10)
        kv.crop(4)
        assert kv.length == 4


def test_parameter_counts_match_spec_table_vicuna_7b():
    """Paper: Vicuna-7B Jakiro 201.4 M, Jakiro* 281.0 M trainable (fc with bias); frozen embedding 131.1 M."""
    widths = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                  vocab_size=32000)
    with torch.device("meta"):
        jakiro = count_parameters(JakiroDraft(JakiroConfig(**widths)))
        star = count_parameters(JakiroDraft(JakiroConfig(**widths, variant="star")))
    assert round(jakiro["trainable"] / 1e6, 1) == 201.4
    assert round(star["trainable"] / 1e6, 1) == 281.0
    assert round(jakiro["frozen_embedding"] / 1e6, 1) == 131.1
    assert jakiro["router"] == 4 * 4096 and star["router"] == 2 * 4096
    assert round(jakiro["experts"] / 1e6, 2) == 100.66
