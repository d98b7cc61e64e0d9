"""Small models for the CPU miniature on MNIST-100 (two digits side by side, 1 x 28 x 56, 100 classes)."""

from __future__ import annotations

from torch import Tensor, nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MLP(nn.Module):
    """Flatten -> [Linear -> BN -> ReLU] x len(hidden) -> Linear; inputs normalised with MNIST statistics."""

    def __init__(self, hidden: tuple[int, ...], num_classes: int = 100, in_features: int = 28 * 56) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - MNIST_MEAN) / MNIST_STD)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool stages and a linear head (a LeNet-sized CNN for 28 x 56 inputs)."""

    def __init__(self, channels: tuple[int, int] = (16, 32), num_classes: int = 100) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(c2 * 7 * 14, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features((x - MNIST_MEAN) / MNIST_STD).flatten(1))


MNIST_MODELS = {
    "mlp_teacher": lambda num_classes=100: MLP((512, 512), num_classes),
    "mlp_student": lambda num_classes=100: MLP((64,), num_classes),
    "mlp_tiny": lambda num_classes=100: MLP((16,), num_classes),
    "cnn_teacher": lambda num_classes=100: SmallCNN((32, 64), num_classes),
    "cnn_student": lambda num_classes=100: SmallCNN((8, 16), num_classes),
}
