"""ImageNet models: torchvision's ResNets (teachers load torchvision V1 weight files) and MobileNet-V1.

The DeepKD / DKD papers call the R50 student "MobileNetV2", but the code defines MobileNet-V1 (Howard et
al. 2017, a depthwise-separable stack 32 -> ... -> 1024, 4.23 M parameters); we name it what it is.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet-V1 with mdistiller's module names (``model.<i>``, ``fc``); global average pool."""

    STAGES = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
              (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2),
              (1024, 1024, 1)]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [_conv_bn(3, 32, 2)] + [_conv_dw(cin, cout, s) for cin, cout, s in self.STAGES]
        self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.model(x).flatten(1))


IMAGENET_MODELS = {
    "ResNet18": lambda num_classes=1000: resnet18(num_classes=num_classes),
    "ResNet34": lambda num_classes=1000: resnet34(num_classes=num_classes),
    "ResNet50": lambda num_classes=1000: resnet50(num_classes=num_classes),
    "ResNet101": lambda num_classes=1000: resnet101(num_classes=num_classes),
    "MobileNetV1": lambda num_classes=1000: MobileNetV1(num_classes),
}
