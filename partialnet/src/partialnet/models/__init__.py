"""PartialNet models; importing this package registers ``partialnet_t0`` ... ``partialnet_l`` in timm."""

from partialnet.models.dpconv import DPConv, budget_multiplier, dpconv_layers, freeze_gates, split_summary
from partialnet.models.layers import PartialConv, fuse_conv_bn, fuse_sequential_conv_bn
from partialnet.models.partialnet import (
    ABLATION_LADDER,
    VARIANTS,
    PartialNet,
    PartialNetBlock,
    PartialNetConfig,
    PartialNetFeatures,
    checkpoint_filter_fn,
    create_partialnet,
)
from partialnet.models.patconv import (
    GaussianChannelAttention,
    PartialSpatialAttention,
    PATConvChannel,
    PATConvSelf,
    RelPosSelfAttention,
    rpe_bucket_ids,
)

__all__ = [
    "ABLATION_LADDER", "DPConv", "GaussianChannelAttention", "PATConvChannel", "PATConvSelf", "PartialConv",
    "PartialNet", "PartialNetBlock", "PartialNetConfig", "PartialNetFeatures", "PartialSpatialAttention",
    "RelPosSelfAttention", "VARIANTS", "budget_multiplier", "checkpoint_filter_fn", "create_partialnet",
    "dpconv_layers", "freeze_gates", "fuse_conv_bn", "fuse_sequential_conv_bn", "rpe_bucket_ids", "split_summary",
]
