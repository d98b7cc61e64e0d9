"""PartialNet / PATNet: partial-channel CNN/ViT hybrid (PATConv, PAT_ch/sp/sf, DPConv).

The method: the family in :mod:`partialnet.models.partialnet`, its mixers (PATConv) in
:mod:`partialnet.models.patconv`, the learnable split (DPConv) in :mod:`partialnet.models.dpconv`; their public
names are exported here (imported on first use, so that ``partialnet --help`` does not load torch). Importing the
package registers ``partialnet_t0`` ... ``partialnet_l`` with ``timm.create_model`` (when timm is imported, before
or after).
"""

from effrepro.lazy import import_after, lazy_exports

import_after("timm", "partialnet.models")  # registers the timm models once timm is in use, not at --help

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "DPConv", "GaussianChannelAttention", "PATConvChannel", "PATConvSelf", "PartialConv", "PartialNet",
    "PartialNetBlock", "PartialNetConfig", "PartialNetFeatures", "PartialSpatialAttention", "create_partialnet",
    "fuse_conv_bn",
]
__getattr__, __dir__ = lazy_exports(__name__, {"partialnet.models": __all__})  # imported on first use
