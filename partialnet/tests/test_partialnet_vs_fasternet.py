"""The parts PartialNet shares with FasterNet are timm's: with the attention switched off (``use_channel_attn=
False``), a FasterNet-T0-shaped PartialNet loaded with timm FasterNet-T0 weights reproduces its stages 1-3."""

import timm
import torch
from effrepro.bench import count_params
from partialnet.models import PartialNet
from timm.models.fasternet import PatchEmbed, PatchMerging


def test_shared_stem_merging_and_pconv_blocks_match_timm_fasternet():
    torch.manual_seed(0)
    base = timm.create_model("fasternet_t0", num_classes=10).double().eval()
    ours = PartialNet(embed_dim=40, depths=(1, 2, 8, 2), act_layer="gelu", use_channel_attn=False,
                      num_classes=10).double().eval()
    assert count_params(ours) == count_params(base)
    state = {k.replace("spatial_mixing.partial_conv3", "spatial_mixing.conv"): v for k, v in base.state_dict().items()}
    ours.load_state_dict(state)
    assert isinstance(ours.patch_embed, PatchEmbed) and isinstance(ours.stages[1].downsample, PatchMerging)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _, theirs = base.forward_intermediates(x)
    _, mine = ours.forward_intermediates(x)
    for stage in range(3):
        torch.testing.assert_close(mine[stage], theirs[stage], rtol=0, atol=0)
    # stage 4 differs by design: the official PartialNet adds a residual around the last-stage mixer
    assert not torch.allclose(mine[3], theirs[3])
