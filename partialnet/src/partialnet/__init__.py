"""PartialNet / PATNet: partial-channel CNN/ViT hybrid (PATConv, PAT_ch/sp/sf, DPConv)."""

__version__ = "0.1.0"
