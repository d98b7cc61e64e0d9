"""KernelDNA: dynamic kernel sharing via decoupled naive adapters (Huang et al., arXiv 2503.23379).

``import kerneldna`` registers the zoo in timm (``timm.create_model("kerneldna_resnet18")``).
"""

from kerneldna.convert import auto_share_groups, check_sharing, convert, sharing_groups
from kerneldna.dynamic import CondConv, ODConv2d, dynamic_variant, replace_convs
from kerneldna.kerneldna import ChildConv2d, SEGate, fold_model, modulate_kernel, unfold_model
from kerneldna.models import OFFICIAL_COUNTS, build_model

__version__ = "0.1.0"

__all__ = [
    "OFFICIAL_COUNTS", "ChildConv2d", "CondConv", "ODConv2d", "SEGate", "auto_share_groups", "build_model",
    "check_sharing", "convert", "dynamic_variant", "fold_model", "modulate_kernel", "replace_convs",
    "sharing_groups", "unfold_model",
]
