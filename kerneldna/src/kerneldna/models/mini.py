"""CIFAR-style ResNet minis for the CPU miniature, built from the same modules as the zoo.

Stem 3x3 conv → 3 stages of widths ``widths`` (strides 1, 2, 2) → GAP → linear. Stage 1 is always two
torchvision ``BasicBlock``s; stages 2-3 depend on the variant:

* ``baseline``: 2 BasicBlocks (4 convs) — the static reference;
* ``samedepth``: 3 BasicBlocks (6 convs) — a static net exactly as deep as KernelDNA's stage;
* ``parammatched``: ``samedepth`` with stages 2-3 narrowed until its parameter count is the closest to KernelDNA's
  (same depth, same parameters: only how the parameters are spent differs);
* ``kerneldna``: the official ResNet-18 sharing stage (:class:`SharedBasicStage`, 3 kernels → 6 convs);
* ``static_only`` / ``dynamic_only``: the same stage without SE gates / with static attentions frozen at 0;
* ``condconv`` / ``odconv``: the baseline with every 3x3 conv of stages 2-3 made dynamic (4-expert CondConv in
  its expert-wise form, the same function as timm's per-sample kernels; ODConv 1x).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from kerneldna.dynamic import dynamic_variant
from kerneldna.models.resnet import SharedBasicStage

MINI_VARIANTS = ("baseline", "samedepth", "parammatched", "kerneldna", "static_only", "dynamic_only", "condconv",
                 "odconv")


def _basic_stage(inplanes: int, planes: int, stride: int, blocks: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _shared_stage(inplanes: int, planes: int, stride: int, static: bool, dynamic: bool) -> SharedBasicStage:
    downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    return SharedBasicStage(inplanes, planes, stride, downsample, static=static, dynamic=dynamic)


def _param_count(variant: str, in_chans: int, num_classes: int, widths: tuple[int, ...]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in MiniResNet(variant, in_chans, num_classes, widths).parameters())


@lru_cache(maxsize=64)
def matched_widths(widths: tuple[int, ...], in_chans: int, num_classes: int) -> tuple[int, int, int]:
    """Widths of the ``parammatched`` net: stage 1 as given, stages 2-3 scaled down together (their ratio kept)
    to the parameter count closest to KernelDNA's at ``widths``."""
    w1, w2, w3 = widths
    target = _param_count("kerneldna", in_chans, num_classes, tuple(widths))
    candidates = [(w1, c, max(1, round(c * w3 / w2))) for c in range(1, w2 + 1)]
    return min(candidates, key=lambda w: abs(_param_count("samedepth", in_chans, num_classes, w) - target))


class MiniResNet(nn.Module):
    stage_names = ("layer1", "layer2", "layer3")

    def __init__(self, variant: str = "baseline", in_chans: int = 1, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), stem_stride: int = 1) -> None:
        super().__init__()
        if variant not in MINI_VARIANTS:
            raise ValueError(f"unknown mini variant {variant!r}; use one of {MINI_VARIANTS}")
        self.variant = variant
        if variant == "parammatched":
            widths = matched_widths(tuple(widths), in_chans, num_classes)
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_chans, w1, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(w1),
                                  nn.ReLU(inplace=True))
        self.layer1 = _basic_stage(w1, w1, 1, 2)
        if variant in ("kerneldna", "static_only", "dynamic_only"):
            static, dynamic = variant != "dynamic_only", variant != "static_only"
            self.layer2 = _shared_stage(w1, w2, 2, static, dynamic)
            self.layer3 = _shared_stage(w2, w3, 2, static, dynamic)
        else:
            blocks = 2 if variant in ("baseline", "condconv", "odconv") else 3
            self.layer2 = _basic_stage(w1, w2, 2, blocks)
            self.layer3 = _basic_stage(w2, w3, 2, blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        self.num_features = w3
        self.feature_info = [dict(num_chs=w, reduction=stem_stride * r, module=m)
                             for w, r, m in zip(widths, (1, 2, 4), self.stage_names)]
        for name, m in self.named_modules():  # torchvision ResNet init (the sharing stages keep their own)
            if name.startswith(("layer2", "layer3")) and variant in ("kerneldna", "static_only", "dynamic_only"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if variant in ("condconv", "odconv"):
            extra = {"expertwise": True} if variant == "condconv" else {}  # same function, faster to train on CPUs
            dynamic_variant(self, variant, ("layer2", "layer3"), kernel_sizes=(3,), **extra)

    def forward_stages(self, x: Tensor, out_indices: Sequence[int] | None = None) -> list[Tensor]:
        wanted = range(len(self.stage_names)) if out_indices is None else out_indices
        x, outs = self.stem(x), []
        for i, name in enumerate(self.stage_names[: max(wanted) + 1]):
            x = getattr(self, name)(x)
            if i in wanted:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x, [len(self.stage_names) - 1])[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))
