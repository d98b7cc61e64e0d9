"""KernelDNA MobileNetV2 (1.0x, 0.5x) exactly as the official code builds it, plus baselines.

Four torchvision stages (features 4-6, 7-10, 11-13, 14-16) become a ``ShareCluster``: a transition inverted
residual, ``n_kids`` children and the parent ``last_block``; the children borrow the parent's two pointwise
kernels (filter-wise static attention only, k = 1) and gate both pointwise inputs with SE. The replaced indices
become empty ``nn.Sequential()`` (identity), so depth and MACs stay those of torchvision's MobileNetV2.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import MobileNetV2

from kerneldna.kerneldna import FILTER_FIRST, FoldableChildren, make_gate, make_static_attn, modulate_kernel

# torchvision feature indices of the four shared stages; the cluster sits at the last index of each
SHARED_STAGES: tuple[tuple[int, ...], ...] = ((4, 5, 6), (7, 8, 9, 10), (11, 12, 13), (14, 15, 16))
EXPAND = 6


def _inverted_residual_layers(inp: int, oup: int, stride: int) -> nn.Sequential:
    hidden = inp * EXPAND
    act = nn.ReLU6(inplace=True)
    return nn.Sequential(OrderedDict([
        ("pw1", nn.Conv2d(inp, hidden, 1, bias=False)), ("bn1", nn.BatchNorm2d(hidden)), ("act1", act),
        ("dw", nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)), ("bn2", nn.BatchNorm2d(hidden)),
        ("act2", act),
        ("pw2", nn.Conv2d(hidden, oup, 1, bias=False)), ("bn3", nn.BatchNorm2d(oup)),
    ]))


class TransitionIB(nn.Module):
    """Official ``TransitionIB``: an inverted residual without skip (changes width and/or stride)."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.act = nn.ReLU6(inplace=True)
        self.layers = _inverted_residual_layers(inp, oup, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SameIB(TransitionIB):
    """Official ``SameIB``: an inverted residual with skip; the parent whose pointwise kernels are shared."""

    def __init__(self, inp: int) -> None:
        super().__init__(inp, inp, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + x


class ShareIB(nn.Module):
    """Official ``ShareIB``: SE → child pw1 → BN → ReLU6 → own dw3x3 → BN → ReLU6 → SE → child pw2 → BN, +x."""

    def __init__(self, inp: int, dynamic: bool = True) -> None:
        super().__init__()
        hidden = inp * EXPAND
        self.act = nn.ReLU6(inplace=True)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False, groups=hidden)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.bn3 = nn.BatchNorm2d(inp)
        self.se1 = make_gate(inp, 4, dynamic)
        self.se3 = make_gate(hidden, 24, dynamic)

    def forward(self, x: Tensor, kernel1: Tensor, kernel3: Tensor) -> Tensor:
        out = self.act(self.bn1(F.conv2d(self.se1(x), kernel1)))
        out = self.act(self.bn2(self.dwconv(out)))
        return self.bn3(F.conv2d(self.se3(out), kernel3)) + x


class ShareCluster(FoldableChildren):
    """Official ``ShareCluster``: transition, ``n_kids`` × :class:`ShareIB`, parent ``last_block``."""

    def __init__(self, inp: int, oup: int, stride: int, n_kids: int, static: bool = True,
                 dynamic: bool = True) -> None:
        super().__init__()
        hidden = oup * EXPAND
        self.transition = TransitionIB(inp, oup, stride)
        self.blocks = nn.ModuleList([ShareIB(oup, dynamic) for _ in range(n_kids)])
        self.last_block = SameIB(oup)
        self.static_filter_attn1 = make_static_attn(n_kids, hidden, 1, 1, 1, trainable=static)
        self.static_filter_attn3 = make_static_attn(n_kids, oup, 1, 1, 1, trainable=static)
        for m in self.modules():  # official: N(0, sqrt(2 / (k*k*out))) for every conv, biases 0, BN 1/0
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def compute_child_kernels(self) -> list[Tensor]:
        """``[pw1 child 0, pw2 child 0, pw1 child 1, pw2 child 1, ...]``."""
        pw1, pw2 = self.last_block.layers.pw1.weight, self.last_block.layers.pw2.weight
        kernels = []
        for i in range(len(self.blocks)):
            kernels.append(modulate_kernel(pw1, self.static_filter_attn1[i], None, FILTER_FIRST))
            kernels.append(modulate_kernel(pw2, self.static_filter_attn3[i], None, FILTER_FIRST))
        return kernels

    def forward(self, x: Tensor) -> Tensor:
        kernels = self.child_kernels()
        x = self.transition(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kernels[2 * i], kernels[2 * i + 1])
        return self.last_block(x)


class KernelDNAMobileNetV2(MobileNetV2):
    """torchvision ``mobilenet_v2(width_mult, dropout=0)``, with the official sharing clusters if ``kernel_dna``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, kernel_dna: bool = True,
                 static: bool = True, dynamic: bool = True, in_chans: int = 3) -> None:
        super().__init__(num_classes=num_classes, width_mult=width_mult, dropout=0.0)
        self.width_mult, self.kernel_dna = width_mult, kernel_dna
        if in_chans != 3:
            first = self.features[0][0]
            self.features[0][0] = nn.Conv2d(in_chans, first.out_channels, 3, 2, 1, bias=False)
            nn.init.kaiming_normal_(self.features[0][0].weight, mode="fan_out")
        if kernel_dna:
            for indices in SHARED_STAGES:
                first, last = self.features[indices[0]], self.features[indices[-1]]
                cluster = ShareCluster(first.conv[0][0].in_channels, last.out_channels, first.stride,
                                       n_kids=len(indices) - 2, static=static, dynamic=dynamic)
                for index in indices[:-1]:
                    self.features[index] = nn.Sequential()
                self.features[indices[-1]] = cluster
        # multi-scale outputs: ends of the stride-2, 4, 8, 16, 32 stages
        self.stage_ends = (1, 3, 6, 13, 18)
        self.num_features = self.last_channel
        self.feature_info = [dict(num_chs=self._out_channels(i), reduction=2 ** (k + 1), module=f"features.{i}")
                             for k, i in enumerate(self.stage_ends)]

    def _out_channels(self, index: int) -> int:
        module = self.features[index]
        if hasattr(module, "out_channels"):
            return module.out_channels
        if isinstance(module, ShareCluster):
            return module.last_block.layers.pw2.out_channels
        return module[0].out_channels  # the final Conv2dNormActivation

    def forward_stages(self, x: Tensor, out_indices: Sequence[int] | None = None) -> list[Tensor]:
        """Outputs at strides 2, 4, 8, 16, 32 (or those at ``out_indices`` into that list)."""
        wanted = {self.stage_ends[i] for i in (range(5) if out_indices is None else out_indices)}
        outs = []
        for index, module in enumerate(self.features[: max(wanted) + 1]):
            x = module(x)
            if index in wanted:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
