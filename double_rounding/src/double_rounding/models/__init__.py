"""Model zoo: float architectures and their switchable-precision versions (first conv and last FC in FP32).

* ``resnet18``, ``resnet50``, ``mobilenet_v2``: torchvision's ImageNet models (the paper's Tables 1-3).
* ``resnet20``: the CIFAR-10 ResNet-20 (Table 4's first rows, see :class:`ResNet20`).
* ``tiny_cnn``: the CPU miniature (a plain CNN, see :class:`TinyCNN`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from effrepro.errors import UsageError
from effrepro.quant import quantize_model
from torch import nn

ARCHS = ("tiny_cnn", "resnet20", "resnet18", "resnet50", "mobilenet_v2")


@dataclass
class ModelConfig:
    arch: str = "tiny_cnn"
    num_classes: int = 10
    in_channels: int = 1
    width: int = 16  # tiny_cnn; resnet20: the first stage's channels (16 in the paper's ResNet-20)
    input_size: list[int] = field(default_factory=lambda: [28, 28])  # (H, W) used to trace the layer order
    pool: list[int] = field(default_factory=lambda: [1, 1])  # tiny_cnn: output grid of the final average pool


class TinyCNN(nn.Module):
    """FP32 stem conv (3x3 stride 2, ``w``) + BN + ReLU, five quantised 3x3 convs with BN + ReLU (widths w, 2w,
    2w, 4w, 4w; stride 2 at the 2nd and 4th), average pool to a ``pool`` grid ((1, 2) keeps the left/right
    digit apart on MNIST-100), FP32 linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 pool: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        plan = [(width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1), (2 * width, 4 * width, 2),
                (4 * width, 4 * width, 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        for cin, cout, stride in plan:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(tuple(pool))
        self.fc = nn.Linear(4 * width * pool[0] * pool[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN; the shortcut of a strided / widening block subsamples and zero-pads the channels (He et
    al.'s CIFAR option A: no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 CIFAR images: a 3x3 stem conv (``width`` channels) + BN + ReLU, three stages of three
    basic blocks (``width``, 2 ``width``, 4 ``width`` channels; stride 2 at the start of the 2nd and 3rd), global
    average pool, linear classifier (0.27 M parameters at width 16)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for index in range(3):
                blocks.append(BasicBlock(cin, cout, 2 if stage and not index else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_float_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch not in ARCHS:
        raise UsageError(f"unknown arch {cfg.arch!r}; use one of: {', '.join(ARCHS)}")
    if cfg.arch == "tiny_cnn":
        return TinyCNN(cfg.in_channels, cfg.num_classes, cfg.width, tuple(cfg.pool))
    if cfg.arch == "resnet20":
        return ResNet20(cfg.in_channels, cfg.num_classes, cfg.width)
    if cfg.in_channels != 3:
        raise UsageError(f"{cfg.arch} takes RGB input; set model.in_channels=3")
    return getattr(torchvision.models, cfg.arch)(weights=None, num_classes=cfg.num_classes)


def example_input(cfg: ModelConfig) -> torch.Tensor:
    return torch.zeros(2, cfg.in_channels, *cfg.input_size)


def build_quant_model(cfg: ModelConfig, bits: list[int] | tuple[int, ...], tie_mode: str = "half_up",
                      bn_mode: str = "per_bit", float_model: nn.Module | None = None,
                      weight_scales: str = "shared") -> nn.Module:
    """The switchable-precision model (from ``float_model``'s weights when given); ``weight_scales="unshared"``
    is the paper's "Ours*" (one weight step per bit-width instead of double rounding from one ``s_h``)."""
    model = float_model if float_model is not None else build_float_model(cfg)
    return quantize_model(model, example_input(cfg), bits=bits, tie_mode=tie_mode, bn_mode=bn_mode,
                          weight_scales=weight_scales)
