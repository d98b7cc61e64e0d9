"""PartialNet / PATNet: partial-channel CNN/ViT hybrid (PATConv, PAT_ch/sp/sf, DPConv).

The method: the family in :mod:`partialnet.models.partialnet`, its mixers (PATConv) in
:mod:`partialnet.models.patconv`, the learnable split (DPConv) in :mod:`partialnet.models.dpconv`; their public
names are exported here. Importing the package registers ``partialnet_t0`` ... ``partialnet_l`` with
``timm.create_model``.
"""

from partialnet.models import (  # importing partialnet.models registers the timm models
    VARIANTS,
    DPConv,
    GaussianChannelAttention,
    PartialConv,
    PartialNet,
    PartialNetBlock,
    PartialNetConfig,
    PartialNetFeatures,
    PartialSpatialAttention,
    PATConvChannel,
    PATConvSelf,
    create_partialnet,
    fuse_conv_bn,
)

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "DPConv", "GaussianChannelAttention", "PATConvChannel", "PATConvSelf", "PartialConv", "PartialNet",
    "PartialNetBlock", "PartialNetConfig", "PartialNetFeatures", "PartialSpatialAttention", "create_partialnet",
    "fuse_conv_bn",
]
