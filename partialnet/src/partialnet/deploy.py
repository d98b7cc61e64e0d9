"""Deploy (inference) forms of PartialNet and of timm's FasterNet baseline, and the check that they agree."""

from __future__ import annotations

import copy

import torch
from torch import nn

from partialnet.models import PartialNet, PartialNetFeatures, fuse_sequential_conv_bn


def deploy_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every BatchNorm folded: ``PartialNet.fuse()`` (attention, gates and residuals
    re-parameterised too) or, for timm's FasterNet, conv+BN fusion along the data flow. ``model`` is untouched."""
    fused = copy.deepcopy(model).eval()
    if isinstance(fused, (PartialNet, PartialNetFeatures)):
        return fused.fuse()
    return fuse_sequential_conv_bn(fused)


def randomize_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (fresh models have mean 0,
    var 1, weight 1, bias 0, for which a wrong fusion can still look right)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


@torch.no_grad()
def fusion_max_abs_diff(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> float:
    """``max |fused(x) - model(x)|`` in float64 with randomised BN statistics and attention position biases."""
    reference = randomize_bn_statistics(copy.deepcopy(model), seed).double().eval()
    gen = torch.Generator().manual_seed(seed)
    for name, param in reference.named_parameters():
        if name.endswith("rpe_bias"):
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.5)
    x = torch.randn(input_shape, generator=gen, dtype=torch.float64)
    fused, expected = deploy_copy(reference)(x), reference(x)
    if isinstance(expected, torch.Tensor):
        fused, expected = [fused], [expected]
    return max(float((a - b).abs().max()) for a, b in zip(fused, expected, strict=True))
