"""The model zoo in timm: names, exact official parameter / FLOP counts, multi-scale features, checkpoints."""

import pytest
import timm
import torch
from effrepro.bench import count_flops, count_params
from partialnet.deploy import deploy_copy, fusion_max_abs_diff
from partialnet.figures import OFFICIAL_COUNTS
from partialnet.models import VARIANTS, PartialNet, PartialNetFeatures, checkpoint_filter_fn


def test_all_variants_are_registered():
    assert set(timm.list_models("partialnet_*")) == {f"partialnet_{v}" for v in VARIANTS}
    assert set(VARIANTS) == {"t0", "t1", "t2", "s", "m", "l"}


@pytest.mark.parametrize("variant", list(OFFICIAL_COUNTS))
def test_params_and_flops_equal_the_official_configs(variant):
    with torch.device("meta"):  # counts need shapes only: seconds for the 100 M-parameter L
        model = timm.create_model(f"partialnet_{variant}")
        x = torch.empty(1, 3, 224, 224)
    assert count_params(model) == OFFICIAL_COUNTS[variant]["params"]
    assert count_flops(model, x) == OFFICIAL_COUNTS[variant]["flops"]


@pytest.mark.parametrize("variant", ["t0", "t1", "t2"])
def test_deploy_form_equals_training_form_float64(variant):
    assert fusion_max_abs_diff(timm.create_model(f"partialnet_{variant}"), (1, 3, 96, 64)) < 1e-10


def test_multiscale_features():
    model = timm.create_model("partialnet_t1", features_only=True).eval()  # batch 1: BN needs eval
    feats = model(torch.randn(1, 3, 128, 96))
    assert [f.shape[1] for f in feats] == [48, 96, 192, 384] == model.feature_info.channels()
    assert [f.shape[2:] for f in feats] == [(32, 24), (16, 12), (8, 6), (4, 3)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    net = timm.create_model("partialnet_t0").eval()
    final, inter = net.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert len(inter) == 4 and torch.equal(final, inter[-1])


def test_detection_backbone_uses_the_classifier_widths_and_loads_its_weights():
    backbone = PartialNetFeatures("s")
    assert backbone.out_channels == [96, 192, 384, 768] and backbone.strides == [4, 8, 16, 32]
    classifier = PartialNet(**VARIANTS["s"].model_kwargs())
    missing, unexpected = backbone.load_classifier_state(classifier.state_dict())
    assert unexpected == [] and all(k.startswith("out_norms") for k in missing)
    assert fusion_max_abs_diff(PartialNetFeatures("t0", out_indices=(1, 3)), (1, 3, 64, 64)) < 1e-10


def test_pretrained_needs_a_local_file_and_loads_one(tmp_path):
    with pytest.raises(ValueError, match="no official PartialNet weights"):
        timm.create_model("partialnet_t0", pretrained=True)
    source = timm.create_model("partialnet_t0", num_classes=7).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = timm.create_model("partialnet_t0", num_classes=7, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), source(x))


def test_official_key_names_are_mapped():
    ours = timm.create_model("partialnet_t1", num_classes=5).state_dict()
    official = {"model.stages.6.blocks.0.spatial_mixing.attn.rpe_k.lookup_table_bias": 0,
                "model.stages.5.reduction.weight": 1, "model.stages.2.blocks.1.mlp.4.norm2.running_mean": 2,
                "model.stages.0.blocks.0.spatial_mixing.attn.cfc1.weight": 3, "model.avgpool_pre_head.1.weight": 4,
                "model.head.bias": 5, "model.stages.0.blocks.0.spatial_mixing.partial_conv3.weight": 6}
    mapped = checkpoint_filter_fn({"state_dict": official})
    assert set(mapped) <= set(ours)
    assert mapped["stages.3.downsample.reduction.weight"] == 1 and mapped["stages.1.blocks.1.mlp.4.value_norm"
                                                                            ".running_mean"] == 2


def test_unknown_variant_is_rejected():
    from partialnet.models import create_partialnet

    with pytest.raises(ValueError, match="unknown PartialNet variant"):
        create_partialnet("t9")


def test_deploy_copy_leaves_the_original_untouched():
    model = timm.create_model("partialnet_t0", num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy_copy(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
