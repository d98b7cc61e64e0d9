"""KernelDNA: dynamic kernel sharing via decoupled naive adapters (Huang et al., arXiv 2503.23379).

``import kerneldna`` registers the zoo in timm (``timm.create_model("kerneldna_resnet18")``, timm imported before or
after); the public names below are imported on first use, so that ``kerneldna --help`` does not load torch.
"""

from effrepro.lazy import import_after, lazy_exports

import_after("timm", "kerneldna.models")  # registers the timm models once timm is in use, not at --help

__version__ = "0.1.0"

__all__ = [
    "OFFICIAL_COUNTS", "ChildConv2d", "CondConv", "ODConv2d", "SEGate", "auto_share_groups", "build_model",
    "check_sharing", "convert", "dynamic_variant", "fold_model", "modulate_kernel", "replace_convs",
    "sharing_groups", "unfold_model",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    "kerneldna.convert": ("auto_share_groups", "check_sharing", "convert", "sharing_groups"),
    "kerneldna.dynamic": ("CondConv", "ODConv2d", "dynamic_variant", "replace_convs"),
    "kerneldna.kerneldna": ("ChildConv2d", "SEGate", "fold_model", "modulate_kernel", "unfold_model"),
    "kerneldna.models": ("OFFICIAL_COUNTS", "build_model"),
})
