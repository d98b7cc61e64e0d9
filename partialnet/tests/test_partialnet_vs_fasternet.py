"""With every attention switched off (``ABLATION_LADDER["pconv"]``) a PartialNet *is* timm's FasterNet: loaded with
FasterNet-T0 weights, a FasterNet-T0-shaped PartialNet computes the same stages and logits bit for bit. The official
behaviour (a residual around the stage-4 mixer whatever the mixer) is kept behind ``official_mixer_residual``."""

import pytest
import timm
import torch
from effrepro.bench import count_params
from partialnet.deploy import fusion_max_abs_diff
from partialnet.models import ABLATION_LADDER, PartialConv, PartialNet, PATConvChannel, PATConvSelf
from timm.models.fasternet import PatchEmbed, PatchMerging

T0_SHAPE = dict(embed_dim=40, depths=(1, 2, 8, 2), act_layer="gelu", num_classes=10)


def _pair(**switches):
    torch.manual_seed(0)
    base = timm.create_model("fasternet_t0", num_classes=10).double().eval()
    ours = PartialNet(**T0_SHAPE, **switches).double().eval()
    state = {k.replace("spatial_mixing.partial_conv3", "spatial_mixing.conv"): v for k, v in base.state_dict().items()}
    ours.load_state_dict(state)
    return base, ours


@pytest.mark.parametrize("switches", [ABLATION_LADDER["pconv"], dict(use_channel_attn=False)])
def test_fasternet_equivalent_setting_is_timm_fasternet(switches):
    base, ours = _pair(**switches)
    assert count_params(ours) == count_params(base)
    assert isinstance(ours.patch_embed, PatchEmbed) and isinstance(ours.stages[1].downsample, PatchMerging)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _, theirs = base.forward_intermediates(x)
    _, mine = ours.forward_intermediates(x)
    for stage in range(4):
        torch.testing.assert_close(mine[stage], theirs[stage], rtol=0, atol=0)
    torch.testing.assert_close(ours(x), base(x), rtol=0, atol=0)


def test_official_flag_keeps_the_doubled_stage4_residual():
    base, ours = _pair(use_channel_attn=False, official_mixer_residual=True)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _, theirs = base.forward_intermediates(x)
    _, mine = ours.forward_intermediates(x)
    for stage in range(3):
        torch.testing.assert_close(mine[stage], theirs[stage], rtol=0, atol=0)
    y = theirs[2]  # stage 4 by hand with FasterNet's modules: x + pconv(x) (untouched channels doubled), + MLP
    y = base.stages[3].downsample(y)
    for block in base.stages[3].blocks:
        y = y + block.spatial_mixing(y)
        y = y + block.mlp(y)
    torch.testing.assert_close(mine[3], y, rtol=0, atol=1e-12)
    assert not torch.allclose(mine[3], theirs[3])


def _mixers(model: PartialNet) -> list[tuple[str, bool]]:
    return [(type(b.spatial_mixing).__name__, b.mixer_residual) for stage in model.stages for b in stage.blocks]


def test_ablation_ladder_adds_one_component_per_rung():
    depths = (1, 1, 2, 2)
    sizes, expected = [], {
        "pconv": ["PartialConv"] * 6,
        "pat_ch": ["PATConvChannel"] * 4 + ["PartialConv"] * 2,
        "pat_ch_sf": ["PATConvChannel"] * 4 + ["PATConvSelf"] * 2,
        "pat_ch_sf_sp": ["PATConvChannel"] * 4 + ["PATConvSelf"] * 2,
    }
    for name, switches in ABLATION_LADDER.items():
        model = PartialNet(embed_dim=16, depths=depths, num_classes=10, **switches)
        mixers = _mixers(model)
        assert [m for m, _ in mixers] == expected[name]
        assert [res for _, res in mixers] == [m == "PATConvSelf" for m, _ in mixers]  # residual only with PAT_sf
        has_sp = any(type(b.mlp[-1]).__name__ == "PartialSpatialAttention" for s in model.stages for b in s.blocks)
        assert has_sp == switches["use_spatial_attn"]
        sizes.append(count_params(model))
        assert fusion_max_abs_diff(model, (1, 3, 64, 64)) < 1e-10
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # the default (no use_self_attn) follows use_channel_attn: the official T-variant mixers
    default = PartialNet(embed_dim=16, depths=depths, num_classes=10)
    assert {type(m) for m in (default.stages[0].blocks[0].spatial_mixing, default.stages[3].blocks[0].spatial_mixing)} \
        == {PATConvChannel, PATConvSelf}


def test_layer_n_div_sets_each_blocks_split():
    divs = (2, 4, 8, 4, 16, 2)
    model = PartialNet(embed_dim=16, depths=(1, 1, 2, 2), num_classes=10, layer_n_div=divs)
    convs = [b.spatial_mixing for s in model.stages for b in s.blocks]
    assert all(isinstance(c, PartialConv) for c in convs)
    assert [c.dim_conv for c in convs] == [16 // 2, 32 // 4, 64 // 8, 64 // 4, 128 // 16, 128 // 2]
    with pytest.raises(ValueError, match="6 blocks"):
        PartialNet(embed_dim=16, depths=(1, 1, 2, 2), layer_n_div=(4, 4))
