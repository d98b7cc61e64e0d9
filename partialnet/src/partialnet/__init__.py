"""PartialNet / PATNet: partial-channel CNN/ViT hybrid (PATConv, PAT_ch/sp/sf, DPConv).

Importing the package registers ``partialnet_t0`` ... ``partialnet_l`` with ``timm.create_model``.
"""

from partialnet import models  # noqa: F401  (timm registration)

__version__ = "0.1.0"
