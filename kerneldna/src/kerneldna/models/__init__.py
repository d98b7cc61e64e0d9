"""The model zoo: ``build_model(arch, variant)`` and its timm registrations (``kerneldna_resnet18``, ...).

Architectures: ``resnet18``, ``resnet50``, ``mobilenetv2_100``, ``mobilenetv2_050`` (the official zoo) and
``mini`` (the CPU miniature). Variants: ``baseline`` (torchvision), ``samedepth`` (ResNet-18 / mini only: a
static net as deep as KernelDNA's), ``parammatched`` (mini only: ``samedepth`` narrowed to KernelDNA's parameter
count), ``kerneldna``, ``static_only``, ``dynamic_only``, ``condconv``, ``odconv``
(the dynamic convs replace the dense convs at the positions KernelDNA shares).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from effrepro.errors import UsageError
from timm.models import register_model
from torch import Tensor, nn

from kerneldna.dynamic import dynamic_variant
from kerneldna.models.mini import MINI_VARIANTS, MiniResNet
from kerneldna.models.mobilenetv2 import SHARED_STAGES, KernelDNAMobileNetV2
from kerneldna.models.resnet import KernelDNAResNet

ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_050", "mini")
VARIANTS = MINI_VARIANTS

# Exact unique-parameter and MAC counts at 224x224, batch 1, 1000 classes, as the official code builds the
# models (measured on the official code with torch.utils.flop_counter / 2). Our builds must equal them (tested).
OFFICIAL_COUNTS: dict[tuple[str, str], tuple[int, int]] = {
    ("resnet18", "baseline"): (11_689_512, 1_814_073_344),
    ("resnet18", "kerneldna"): (9_240_798, 2_276_986_880),
    ("resnet50", "baseline"): (25_557_032, 4_089_184_256),
    ("resnet50", "kerneldna"): (22_778_060, 4_307_779_584),
    ("mobilenetv2_100", "baseline"): (3_504_872, 300_774_272),
    ("mobilenetv2_100", "kerneldna"): (3_136_840, 300_928_384),
    ("mobilenetv2_050", "baseline"): (1_968_680, 97_131_840),
    ("mobilenetv2_050", "kerneldna"): (1_878_232, 97_170_368),
}


def _dynamic_positions(arch: str) -> tuple[list[str], tuple[int, ...]]:
    """Where CondConv/ODConv replace convs: the stages KernelDNA shares, the kernel size it shares there."""
    if arch.startswith("resnet"):
        return ["layer3", "layer4"], (3,)
    return [f"features.{i}" for stage in SHARED_STAGES for i in stage], (1,)


def build_model(arch: str = "resnet18", variant: str = "kerneldna", num_classes: int = 1000, in_chans: int = 3,
                **kwargs: Any) -> nn.Module:
    """A zoo model. ``kwargs`` go to :class:`MiniResNet` for ``arch='mini'`` (``widths``, ``stem_stride``)."""
    if arch not in ARCHS:
        raise UsageError(f"unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; use one of: {', '.join(VARIANTS)}")
    if arch == "mini":
        return MiniResNet(variant, in_chans=in_chans, num_classes=num_classes, **kwargs)
    if kwargs:
        raise UsageError(f"unknown model options {sorted(kwargs)} for {arch}")
    if variant == "parammatched":
        raise UsageError("variant 'parammatched' exists for the mini net only")
    if variant == "samedepth" and arch != "resnet18":
        raise UsageError("variant 'samedepth' exists for resnet18 and mini only (the other KernelDNA builds keep "
                         "the baseline's depth, except ResNet-50's one extra bottleneck)")
    kdna = variant in ("kerneldna", "static_only", "dynamic_only")
    flags = dict(kernel_dna=kdna, static=variant != "dynamic_only", dynamic=variant != "static_only",
                 num_classes=num_classes, in_chans=in_chans)
    if arch.startswith("resnet"):
        layers = [2, 2, 3, 3] if variant == "samedepth" else None
        model: nn.Module = KernelDNAResNet(int(arch[6:]), layers=layers, **flags)
    else:
        model = KernelDNAMobileNetV2(1.0 if arch == "mobilenetv2_100" else 0.5, **flags)
    if variant in ("condconv", "odconv"):
        stages, sizes = _dynamic_positions(arch)
        dynamic_variant(model, variant, stages, kernel_sizes=sizes)
    return model


class StageFeatures(nn.Module):
    """``features_only`` form: returns the multi-scale feature maps (e.g. C2..C5) as a list."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        from timm.models import FeatureInfo

        n_stages = len(model.feature_info)
        self.out_indices = tuple(range(n_stages) if out_indices is None else out_indices)
        if any(not 0 <= i < n_stages for i in self.out_indices):
            raise UsageError(f"out_indices {self.out_indices} out of range for {n_stages} feature stages")
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_stages(x, self.out_indices)


_TIMM_KEYS_IGNORED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_entry(arch: str, variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    if pretrained:
        raise UsageError("no KernelDNA checkpoints are released (the official repo has none); train one with "
                         "`kerneldna train` and load it with checkpoint_path=...")
    for key in _TIMM_KEYS_IGNORED:
        kwargs.pop(key, None)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    model = build_model(arch, variant, **kwargs)
    return StageFeatures(model, out_indices) if features_only else model


@register_model
def kerneldna_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """KernelDNA ResNet-18 (official build: layer3/layer4 = 3 kernels, 6 convs, SE r=4)."""
    return _timm_entry("resnet18", "kerneldna", pretrained, **kwargs)


@register_model
def kerneldna_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """KernelDNA ResNet-50 (official build: layer3 1+3x(kid, parent), layer4 block0, kid, parent)."""
    return _timm_entry("resnet50", "kerneldna", pretrained, **kwargs)


@register_model
def kerneldna_mobilenetv2_100(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """KernelDNA MobileNetV2 1.0x (four sharing clusters of pointwise kernels)."""
    return _timm_entry("mobilenetv2_100", "kerneldna", pretrained, **kwargs)


@register_model
def kerneldna_mobilenetv2_050(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """KernelDNA MobileNetV2 0.5x."""
    return _timm_entry("mobilenetv2_050", "kerneldna", pretrained, **kwargs)


@register_model
def kerneldna_baseline_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ResNet-18 with the same feature API (the official baseline)."""
    return _timm_entry("resnet18", "baseline", pretrained, **kwargs)


@register_model
def kerneldna_baseline_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _timm_entry("resnet50", "baseline", pretrained, **kwargs)


@register_model
def kerneldna_baseline_mobilenetv2_100(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _timm_entry("mobilenetv2_100", "baseline", pretrained, **kwargs)


@register_model
def kerneldna_baseline_mobilenetv2_050(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _timm_entry("mobilenetv2_050", "baseline", pretrained, **kwargs)


__all__ = ["ARCHS", "OFFICIAL_COUNTS", "VARIANTS", "KernelDNAMobileNetV2", "KernelDNAResNet", "MiniResNet",
           "StageFeatures", "build_model"]
