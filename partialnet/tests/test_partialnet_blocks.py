"""Every PartialNet block: shapes, known values, and deploy form == training form (float64, eval mode)."""

import math

import pytest
import torch
import torch.nn.functional as F
from partialnet.deploy import randomize_bn_statistics
from partialnet.models import (
    GaussianChannelAttention,
    PartialConv,
    PartialNetBlock,
    PartialSpatialAttention,
    PATConvChannel,
    PATConvSelf,
    RelPosSelfAttention,
    fuse_conv_bn,
    rpe_bucket_ids,
)
from partialnet.models.patconv import channel_mean_std
from timm.models.fasternet import Partial_conv3
from torch import nn


def _prepared(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = randomize_bn_statistics(module, seed).double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rpe_bias") or name.endswith("layer_scale"):
                p.copy_(torch.randn_like(p))
    return module


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_partial_conv_matches_timm_fasternet_pconv_and_absorbs_a_residual():
    ours = PartialConv(32, n_div=4).double()
    theirs = Partial_conv3(32, 4, "split_cat").double()
    theirs.partial_conv3.weight.data.copy_(ours.conv.weight.data)
    x = _x(2, 32, 9, 11)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    assert ours(x)[:, 8:].equal(x[:, 8:])  # the untouched 3/4 pass through
    expected = x + ours(x)
    ours.fuse_residual()
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-12)


def test_channel_statistics_are_mean_and_unbiased_std():
    x = _x(3, 5, 4, 6)
    mean, std = channel_mean_std(x)
    ref_std, ref_mean = torch.std_mean(x.flatten(2), dim=2)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(std, ref_std)
    with pytest.raises(ValueError, match="at least 2 positions"):
        channel_mean_std(_x(1, 5, 1, 1))


def test_gaussian_channel_attention_gates_in_unit_interval_and_fuses():
    attn = _prepared(GaussianChannelAttention(12))
    x = _x(2, 12, 7, 7)
    y = attn(x)
    gate = y / x
    assert y.shape == x.shape and gate.min() >= 0 and gate.max() <= 1
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate))  # one gate per (sample, channel)
    torch.testing.assert_close(attn.fuse()(x), y, rtol=0, atol=1e-12)


def test_patconv_channel_shapes_and_split():
    mixer = _prepared(PATConvChannel(16, n_div=4))
    x = _x(2, 16, 8, 8)
    y = mixer(x)
    assert y.shape == x.shape and (mixer.dim_conv, mixer.dim_untouched) == (4, 12)
    torch.testing.assert_close(y[:, :4], mixer.conv(x[:, :4]))
    fused, scale, shift = mixer.fuse()
    torch.testing.assert_close(fused(x)[:, :4], y[:, :4], rtol=0, atol=1e-12)
    torch.testing.assert_close(fused(x)[:, 4:] * scale[:, None, None] + shift[:, None, None], y[:, 4:],
                               rtol=0, atol=1e-12)


def test_rpe_buckets_known_values():
    ids = rpe_bucket_ids(2, 2, ratio=20)  # distances 0, 1, sqrt(2) -> 1; bucket = distance + beta (40)
    assert ids.tolist() == [[40, 41, 41, 41], [41, 40, 41, 41], [41, 41, 40, 41], [41, 41, 41, 40]]
    far = rpe_bucket_ids(1, 200, ratio=20)[0]
    assert far[20].item() == 60  # exact up to alpha = 20
    # beyond alpha: alpha + log(d / alpha) / log(gamma / alpha) * (beta - alpha), rounded, clipped at beta
    assert far[30].item() == 40 + round(20 + math.log(30 / 20) / math.log(8) * 20)
    assert far[199].item() == 80 and int(rpe_bucket_ids(9, 9, 20).max()) < 81


def test_relative_position_attention_matches_explicit_softmax():
    attn = _prepared(RelPosSelfAttention(24, num_heads=4))
    x = _x(2, 24, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = attn.qkv(tokens).reshape(2, 15, 3, 4, 6).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / math.sqrt(6) + attn.rpe_bias[:, rpe_bucket_ids(3, 5, 20)]
    ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 15, 24)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attn(x), ref, rtol=0, atol=1e-12)
    attn.train()
    attn(x).sum().backward()
    assert attn.rpe_bias.grad.abs().sum() > 0


def test_patconv_self_fused_includes_the_residual():
    mixer = _prepared(PATConvSelf(32, n_div=4, num_heads=4))
    x = _x(2, 32, 4, 6)
    expected = x + mixer(x)
    fused = mixer.fuse()
    torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(fused(_x(1, 32, 5, 5)), _x(1, 32, 5, 5) + mixer(_x(1, 32, 5, 5)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_layer_scale", [False, True])
def test_partial_spatial_attention_folds_into_the_projection(with_layer_scale):
    torch.manual_seed(0)
    proj = nn.Conv2d(20, 10, 1, bias=False).double()
    spatial = _prepared(PartialSpatialAttention(10))
    scale = torch.rand(10, dtype=torch.float64) + 0.5 if with_layer_scale else None
    h = _x(2, 20, 5, 5)
    expected = spatial(proj(h)) * (scale[:, None, None] if scale is not None else 1)
    torch.testing.assert_close(spatial.fuse_after(proj, scale)(h), expected, rtol=0, atol=1e-12)
    y = spatial(proj(h))
    assert y.shape == (2, 10, 5, 5) and (spatial.dim_untouched, spatial.dim_conv) == (5, 5)


@pytest.mark.parametrize("mixer", ["channel", "self", "pconv", "dynamic"])
@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("layer_scale", [0.0, 0.5])
def test_block_deploy_equals_training_form(mixer, spatial, layer_scale):
    last = mixer == "self" or (mixer in ("pconv", "dynamic") and spatial)  # residual around the mixer too
    block = _prepared(PartialNetBlock(32, mixer, last, act_layer=nn.GELU, use_spatial_attn=spatial,
                                      layer_scale_init_value=layer_scale, drop_path=0.1))
    x = _x(2, 32, 6, 6)
    expected = block(x)
    block.fuse()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-11)
    block.fuse()  # idempotent


def test_fuse_conv_bn_refuses_a_batchnorm_of_another_width():
    """The official fuse paired a BN with the previous sibling conv regardless of width and crashed."""
    with pytest.raises(ValueError, match="cannot fuse"):
        fuse_conv_bn(nn.Conv2d(8, 4, 3), nn.BatchNorm2d(12))
    conv, bn = nn.Conv2d(3, 4, 3).double(), _prepared(nn.BatchNorm2d(4))
    x = _x(1, 3, 6, 6)
    torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=0, atol=1e-12)


def test_sdpa_dropout_only_in_training():
    attn = RelPosSelfAttention(8, num_heads=2, attn_drop=0.5, proj_drop=0.0).double().eval()
    x = _x(1, 8, 3, 3)
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert not torch.equal(attn(x), attn(x))
    assert F.hardsigmoid(torch.tensor([-3.0, 0.0, 3.0])).tolist() == [0.0, 0.5, 1.0]
