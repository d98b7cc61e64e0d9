import pytest
import torch
from effrepro.errors import UsageError
from gumiho.gumiho import (
    GumihoConfig,
    GumihoDraft,
    NoResBlock,
    ResBlock,
    count_parameters,
    load_official_state_dict,
)


def tiny_config(**overrides) -> GumihoConfig:
    values = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    values.update(overrides)
    return GumihoConfig(**values)


def test_mlp_head_structure_and_zero_init():
    draft = GumihoDraft(tiny_config())
    assert len(draft.mlp.mlp) == 5
    for head in draft.mlp.mlp:
        assert isinstance(head[0], NoResBlock) and head[0].linear.in_features == 64
        assert all(isinstance(block, ResBlock) for block in head[1:]) and len(head) == 6
        for block in head:
            assert torch.count_nonzero(block.linear.weight) == 0  # zero-initialised weights
            assert torch.count_nonzero(block.linear.bias) > 0  # biases keep the default init
    # an untrained head maps every input to the same feature: RB5(...RB1(silu(a)))
    x = torch.randn(3, 64)
    out = draft.mlp(x)
    assert out.shape == (3, 5, 32)
    torch.testing.assert_close(out[0], out[1])


def test_first_block_has_no_residual_and_res_blocks_do():
    block = NoResBlock(4, 4)
    torch.nn.init.zeros_(block.linear.bias)
    assert torch.all(block(torch.ones(2, 4)) == 0)
    res = ResBlock(4)
    torch.nn.init.zeros_(res.linear.bias)
    torch.testing.assert_close(res(torch.ones(2, 4)), torch.ones(2, 4))


def test_layer0_has_no_input_norm_and_fc_has_bias():
    draft = GumihoDraft(tiny_config())
    keys = set(draft.state_dict())
    assert "layers.0.input_layernorm.weight" not in keys
    assert "layers.1.input_layernorm.weight" in keys
    assert "fc.bias" in keys and "norm.weight" not in keys
    assert not draft.embed_tokens.weight.requires_grad


# (name, H, intermediate, heads, kv heads, vocab) -> trainable millions, T, fc, MLP, frozen embedding (paper table)
ZOO = {
    "vicuna-7b": ((4096, 11008, 32, 32, 32000), 1025.6, 404.8, 33.6, 587.3, 131.1),
    "llama3-8b": ((4096, 14336, 32, 8, 128256), 1057.1, 436.2, 33.6, 587.3, 525.3),
    "llama2-70b": ((8192, 28672, 64, 8, 32000), 4194.6, 1711.3, 134.2, 2349.1, 262.1),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_counts_of_the_released_configs(name):
    (hidden, inter, heads, kv, vocab), total, transformer, fc, mlp, emb = ZOO[name]
    with torch.device("meta"):
        draft = GumihoDraft(GumihoConfig(hidden, inter, heads, kv, vocab))
    counts = {k: v / 1e6 for k, v in count_parameters(draft).items()}
    assert counts["trainable"] == pytest.approx(total, abs=0.05)
    assert counts["transformer"] == pytest.approx(transformer, abs=0.05)
    assert counts["fc"] == pytest.approx(fc, abs=0.05)
    assert counts["mlp"] == pytest.approx(mlp, abs=0.05)
    assert counts["frozen_embedding"] == pytest.approx(emb, abs=0.05)


def test_official_checkpoint_keys_load_strictly():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny_config())
    # an official checkpoint stores the MLP heads as `mlp.{i}.{j}.linear.*` (its loader remaps to `mlp.mlp.*`)
    official = {}
    for key, value in draft.state_dict().items():
        official[key.replace("mlp.mlp.", "mlp.", 1) if key.startswith("mlp.mlp.") else key] = torch.randn_like(value)
    assert "mlp.0.0.linear.weight" in official and "layers.0.mlp.gate_proj.weight" in official
    fresh = GumihoDraft(tiny_config())
    load_official_state_dict(fresh, official)
    torch.testing.assert_close(fresh.mlp.mlp[0][0].linear.weight, official["mlp.0.0.linear.weight"])
    torch.testing.assert_close(fresh.layers[0].mlp.gate_proj.weight, official["layers.0.mlp.gate_proj.weight"])
    official.pop("fc.bias")
    with pytest.raises(UsageError, match="fc.bias"):
        load_official_state_dict(GumihoDraft(tiny_config()), official)


def test_train_forward_alignment_and_causality():
    torch.manual_seed(0)
    draft = GumihoDraft(tiny_config())
    for p in draft.mlp.parameters():  # non-trivial heads
        torch.nn.init.normal_(p, std=0.2)
    feats, ids = torch.randn(1, 9, 32), torch.randint(0, 50, (1, 9))
    hidden, preds = draft.train_forward(feats, ids)
    # MLP input at t is [fc(E x_{t+2}; h_t) ; fc(E x_{t+3}; h_{t+1})] (ids[t] holds x_{t+1})
    t = 3
    g_t = draft.fuse(ids[:, t + 1], hidden[:, t])
    g_t1 = draft.fuse(ids[:, t + 2], hidden[:, t + 1])
    torch.testing.assert_close(preds[:, t], draft.mlp(torch.cat([g_t, g_t1], dim=-1)))
    # causal: a change at position 6 leaves h_{<6} alone
    changed = feats.clone()
    changed[:, 6] += 1.0
    hidden2, _ = draft.train_forward(changed, ids)
    torch.testing.assert_close(hidden2[:, :6], hidden[:, :6])
    assert not torch.allclose(hidden2[:, 6], hidden[:, 6])


@pytest.mark.parametrize(("steps", "width"), [(0, 1), (1, 1), (3, 2)])
def test_serial_step_ablations_build(steps, width):
    config = tiny_config(serial_steps=steps, mlp_num=7 - steps, num_layers=0 if steps == 0 else 2)
    draft = GumihoDraft(config)
    assert draft.mlp.mlp[0][0].linear.in_features == width * 32 and config.depth == 7
    hidden, preds = draft.train_forward(torch.randn(2, 8, 32), torch.randint(0, 50, (2, 8)))
    assert preds.shape == (2, 8, 7 - steps, 32) and (hidden is None) == (steps == 0)


def test_bad_structure_is_a_usage_error():
    with pytest.raises(UsageError, match="num_layers"):
        tiny_config(num_layers=0)
    with pytest.raises(UsageError, match="draft level"):
        tiny_config(serial_steps=0, mlp_num=0)
