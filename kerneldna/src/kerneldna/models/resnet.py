"""KernelDNA ResNet-18 / ResNet-50 exactly as the official code builds them, plus baselines.

Both models are torchvision ResNets whose ``layer3`` / ``layer4`` are rebuilt as sharing stages. Module and
parameter names follow the official repository (``layer3.se.0.se.fc1.weight``, ``layer3.bns.0.weight``,
``layer4.static_filter_attn2`` ...) so that official checkpoints, should they ever appear, load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from kerneldna.kerneldna import (
    FILTER_FIRST,
    SPATIAL_FIRST,
    FoldableChildren,
    make_gate,
    make_static_attn,
    modulate_kernel,
)


class SharedBasicStage(FoldableChildren):
    """Official ResNet-18 ``NewLayer``: 3 real 3x3 kernels (W1, P2, P3) run as 3 residual blocks = 6 convs.

    Order: W1(stride s) → child0(P2) [+skip] → child1(P2) → P2 [+skip] → child2(P3) → P3 [+skip].
    This adds depth: a torchvision stage has 2 blocks (4 convs), this one 3 blocks (6 convs).
    """

    n_kids = 3

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        reduction: int = 4, static: bool = True, dynamic: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Identity() if downsample is None else downsample
        self.static_spatial_attn = make_static_attn(self.n_kids, 1, 1, 3, 3, trainable=static)
        self.static_filter_attn = make_static_attn(self.n_kids, planes, 1, 1, 1, trainable=static)
        self.se = nn.ModuleList([make_gate(planes, reduction, dynamic) for _ in range(self.n_kids)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(planes) for _ in range(self.n_kids)])
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        for m in self.modules():  # official: kaiming-normal fan_out for every conv, incl. SE and downsample
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def compute_child_kernels(self) -> list[Tensor]:
        parents = (self.conv2.weight, self.conv2.weight, self.conv3.weight)
        return [modulate_kernel(p, self.static_filter_attn[j], self.static_spatial_attn[j], SPATIAL_FIRST)
                for j, p in enumerate(parents)]

    def forward(self, x: Tensor) -> Tensor:
        k0, k1, k2 = self.child_kernels()
        identity = self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bns[0](F.conv2d(self.se[0](x), k0, padding=1)) + identity)
        identity = x
        x = self.relu(self.bns[1](F.conv2d(self.se[1](x), k1, padding=1)))
        x = self.relu(self.bn2(self.conv2(x)) + identity)
        identity = x
        x = self.relu(self.bns[2](F.conv2d(self.se[2](x), k2, padding=1)))
        return self.relu(self.bn3(self.conv3(x)) + identity)


class PlainBottleneck(nn.Module):
    """Official ResNet-50 ``Block``: 1x1 (4C→C) → 3x3 (stride) → 1x1 (C→4C), projection when asked."""

    def __init__(self, dim: int, inp: int | None = None, oup: int | None = None, stride: int = 1,
                 downsample: bool = False) -> None:
        super().__init__()
        inp, oup = inp or dim * 4, oup or dim * 4
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(inp, oup, 1, stride, bias=False)), ("bn", nn.BatchNorm2d(oup)),
        ])) if downsample else nn.Identity()
        self.layers = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(inp, dim, 1, bias=False)), ("bn1", nn.BatchNorm2d(dim)), ("relu", self.relu),
            ("conv2", nn.Conv2d(dim, dim, 3, stride, 1, bias=False)), ("bn2", nn.BatchNorm2d(dim)),
            ("relu2", self.relu),
            ("conv3", nn.Conv2d(dim, oup, 1, bias=False)), ("bn3", nn.BatchNorm2d(oup)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.layers(x) + self.downsample(x))


class ChildBottleneck(nn.Module):
    """Official ``Block_Share3x3``: own 1x1s, SE gate, and a 3x3 child kernel handed in by the stage."""

    def __init__(self, dim: int, reduction: int = 4, dynamic: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Identity()
        self.half1 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(dim * 4, dim, 1, bias=False)), ("bn1", nn.BatchNorm2d(dim)), ("relu", self.relu),
            ("se", make_gate(dim, reduction, dynamic)),
        ]))
        self.half2 = nn.Sequential(OrderedDict([
            ("bn2", nn.BatchNorm2d(dim)), ("relu2", self.relu),
            ("conv3", nn.Conv2d(dim, dim * 4, 1, bias=False)), ("bn3", nn.BatchNorm2d(dim * 4)),
        ]))

    def forward(self, x: Tensor, kernel: Tensor) -> Tensor:
        out = self.half2(F.conv2d(self.half1(x), kernel, padding=1))
        return self.relu(out + self.downsample(x))


class SharedBottleneckStage3(FoldableChildren):
    """Official ``NewLayer3``: block0 (stride 2), then (kid_i, parent_i) for i < n: 1 + 2n bottlenecks."""

    def __init__(self, dim: int = 256, n: int = 3, reduction: int = 4, static: bool = True,
                 dynamic: bool = True) -> None:
        super().__init__()
        self.n = n
        self.block0 = PlainBottleneck(dim, inp=2 * dim, stride=2, downsample=True)
        self.parents = nn.ModuleList([PlainBottleneck(dim) for _ in range(n)])
        self.kids = nn.ModuleList([ChildBottleneck(dim, reduction, dynamic) for _ in range(n)])
        self.static_filter_attn = make_static_attn(n, dim, 1, 1, 1, trainable=static)
        self.static_spatial_attn = make_static_attn(n, 1, 1, 3, 3, trainable=static)

    def compute_child_kernels(self) -> list[Tensor]:
        return [modulate_kernel(self.parents[i].layers.conv2.weight, self.static_filter_attn[i],
                                self.static_spatial_attn[i], FILTER_FIRST) for i in range(self.n)]

    def forward(self, x: Tensor) -> Tensor:
        kernels = self.child_kernels()
        x = self.block0(x)
        for kid, parent, kernel in zip(self.kids, self.parents, kernels):
            x = parent(kid(x, kernel))
        return x


class SharedBottleneckStage4(FoldableChildren):
    """Official ``NewLayer4``: block0 (stride 2), ``n_kids`` children of ``last_block``'s 3x3, last_block."""

    def __init__(self, dim: int = 512, n_kids: int = 1, reduction: int = 4, static: bool = True,
                 dynamic: bool = True) -> None:
        super().__init__()
        self.block0 = PlainBottleneck(dim, inp=2 * dim, stride=2, downsample=True)
        self.blocks = nn.ModuleList([ChildBottleneck(dim, reduction, dynamic) for _ in range(n_kids)])
        self.last_block = PlainBottleneck(dim)
        self.static_filter_attn2 = make_static_attn(n_kids, dim, 1, 1, 1, trainable=static)
        self.static_spatial_attn = make_static_attn(n_kids, 1, 1, 3, 3, trainable=static)

    def compute_child_kernels(self) -> list[Tensor]:
        parent = self.last_block.layers.conv2.weight
        return [modulate_kernel(parent, self.static_filter_attn2[i], self.static_spatial_attn[i], FILTER_FIRST)
                for i in range(len(self.blocks))]

    def forward(self, x: Tensor) -> Tensor:
        kernels = self.child_kernels()
        x = self.block0(x)
        for block, kernel in zip(self.blocks, kernels):
            x = block(x, kernel)
        return self.last_block(x)


class KernelDNAResNet(ResNet):
    """A torchvision ResNet whose ``layer3`` / ``layer4`` may be KernelDNA sharing stages.

    ``kernel_dna=False`` gives the plain torchvision baseline with the same forward/feature API; ``layers``
    changes the blocks per stage of the baseline (``[2, 2, 3, 3]`` = a static ResNet-18 as deep as KernelDNA's).
    Multi-scale features (C2..C5 for an FPN): :meth:`forward_stages`; timm's ``features_only`` uses it.
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, depth: int = 18, num_classes: int = 1000, kernel_dna: bool = True, static: bool = True,
        dynamic: bool = True, in_chans: int = 3, layers: Sequence[int] | None = None,
    ) -> None:
        if depth not in (18, 50):
            raise ValueError(f"KernelDNA ResNet is defined for depth 18 and 50, not {depth}")
        block, default_layers = (BasicBlock, [2, 2, 2, 2]) if depth == 18 else (Bottleneck, [3, 4, 6, 3])
        super().__init__(block, list(layers or default_layers), num_classes=num_classes)
        self.depth, self.kernel_dna = depth, kernel_dna
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if kernel_dna:
            if depth == 18:
                for name in ("layer3", "layer4"):
                    first = getattr(self, name)[0]
                    setattr(self, name, SharedBasicStage(
                        first.conv1.in_channels, first.conv1.out_channels, stride=first.conv1.stride[0],
                        downsample=first.downsample, static=static, dynamic=dynamic))
            else:
                self.layer3 = SharedBottleneckStage3(256, n=3, static=static, dynamic=dynamic)
                self.layer4 = SharedBottleneckStage4(512, n_kids=1, static=static, dynamic=dynamic)
        width = 1 if depth == 18 else 4
        self.num_features = 512 * width
        self.feature_info = [dict(num_chs=c * width, reduction=r, module=m)
                             for c, r, m in zip((64, 128, 256, 512), (4, 8, 16, 32), self.stage_names)]

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: Tensor, out_indices: Sequence[int] | None = None) -> list[Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32), or those at ``out_indices``."""
        wanted = range(4) if out_indices is None else out_indices
        x, outs = self.stem(x), []
        for i, name in enumerate(self.stage_names[: max(wanted) + 1]):
            x = getattr(self, name)(x)
            if i in wanted:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x, [3])[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
