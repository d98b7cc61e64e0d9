"""Model zoo: parameter counts against the published table (100 classes; MobileNet-V1 1000) and output shapes."""

import pytest
import torch
from deepkd.models import build_model
from effrepro.bench import count_params
from effrepro.errors import UsageError

PUBLISHED_PARAMS_M = {  # millions, as CRD / mdistiller report them
    "resnet56": 0.86, "resnet110": 1.74, "resnet32x4": 7.43, "ResNet50": 23.7, "wrn_40_2": 2.26, "vgg13": 9.46,
    "resnet20": 0.28, "resnet32": 0.47, "resnet8x4": 1.23, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg8": 3.97,
    "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_cifar_parameter_counts_match_the_published_ones(name):
    model = build_model(name, 100, "cifar")
    published = PUBLISHED_PARAMS_M[name]
    assert count_params(model) / 1e6 == pytest.approx(published, abs=0.006 * max(1, published))


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_cifar_students_map_32x32_images_to_logits(name):
    model = build_model(name, 100, "cifar").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_imagenet_models():
    assert count_params(build_model("MobileNetV1", 1000, "imagenet")) / 1e6 == pytest.approx(4.23, abs=0.01)
    assert count_params(build_model("ResNet18", 1000, "imagenet")) / 1e6 == pytest.approx(11.69, abs=0.01)
    assert count_params(build_model("ResNet34", 1000, "imagenet")) / 1e6 == pytest.approx(21.80, abs=0.01)


def test_mnist_models_and_unknown_names():
    for name in ("mlp_teacher", "mlp_student", "cnn_student"):
        assert build_model(name, 100, "mnist").eval()(torch.rand(2, 1, 28, 56)).shape == (2, 100)
    with pytest.raises(UsageError, match="unknown cifar model 'resnet9'"):
        build_model("resnet9", 100, "cifar")
    with pytest.raises(UsageError, match="unknown model family"):
        build_model("resnet20", 100, "svhn")
