"""Building blocks shared by every PartialNet block: partial 3x3 convolution (FasterNet's PConv) and the
BatchNorm folding used to build the deploy (inference) form.

The folding helpers work on any float dtype, so the equivalence tests can run in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``y = scale * x + shift`` (per channel)."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def conv_from(weight: Tensor, bias: Tensor | None, like: nn.Conv2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` with ``like``'s geometry holding ``weight`` / ``bias``."""
    out_ch, in_per_group = weight.shape[:2]
    conv = nn.Conv2d(in_per_group * like.groups, out_ch, like.kernel_size, like.stride, like.padding,
                     like.dilation, like.groups, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution with bias. Checks that the BN belongs to the conv's outputs.

    The official ``utils/fuse_conv_bn.py`` paired every BN with the previous *sibling* conv in module
    order, which is not the data flow in PartialNet's blocks and crashed (``shape '[16, 1, 1, 1]' is
    invalid``); pairs are only ever fused here where the data flow is known.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fuse BatchNorm({bn.num_features}) into a conv with {conv.out_channels} outputs")
    scale, shift = bn_affine(bn)
    weight = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    return conv_from(weight, bias, conv)


def fold_input_affine(conv: nn.Conv2d, start: int, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """``conv(x')`` where input channels ``start:`` of ``x'`` are ``scale * x + shift``: one conv on ``x``.

    Only valid for an unpadded 1x1 convolution (a padded conv would see the shift at the borders).
    """
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("an input affine can only be folded into a dense 1x1 convolution")
    weight = conv.weight.detach().clone()
    extra = weight[:, start:, 0, 0] @ shift
    weight[:, start:] *= scale.reshape(1, -1, 1, 1)
    bias = extra if conv.bias is None else conv.bias.detach() + extra
    return conv_from(weight, bias, conv)


def fuse_sequential_conv_bn(module: nn.Module) -> nn.Module:
    """Fuse every ``Conv2d`` immediately followed by a ``BatchNorm2d`` inside ``nn.Sequential`` containers
    (where child order *is* data flow) and in ``proj/norm`` or ``reduction/norm`` stems (timm's FasterNet
    ``PatchEmbed`` / ``PatchMerging``). In place; returns ``module``. Used for timm's FasterNet baseline.
    """
    for child in module.children():
        fuse_sequential_conv_bn(child)
    if isinstance(module, nn.Sequential):
        for index in range(len(module) - 1):
            conv, bn = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[index], module[index + 1] = fuse_conv_bn(conv, bn), nn.Identity()
    for conv_name in ("proj", "reduction"):
        conv, bn = getattr(module, conv_name, None), getattr(module, "norm", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn(conv, bn))
            module.norm = nn.Identity()
    return module


def add_identity_to_kernel(conv: nn.Conv2d) -> None:
    """RepVGG-style re-parameterisation: afterwards ``conv(x)`` equals ``x + conv_before(x)`` (square conv)."""
    k_h, k_w = conv.kernel_size
    if conv.in_channels != conv.out_channels or conv.groups != 1 or conv.stride != (1, 1):
        raise ValueError("only a square, dense, stride-1 convolution can absorb an identity")
    with torch.no_grad():
        conv.weight[:, :, k_h // 2, k_w // 2] += torch.eye(conv.out_channels, dtype=conv.weight.dtype,
                                                          device=conv.weight.device)


class PartialConv(nn.Module):
    """FasterNet's PConv: a dense ``k x k`` convolution on the first ``dim // n_div`` channels (or
    ``dim_conv`` of them), the rest passed through (``split_cat`` form, as timm's ``Partial_conv3``).

    ``fuse_residual()`` re-parameterises ``x + pconv(x)`` (the last-stage blocks, where a residual wraps
    the mixer) into the module itself: identity into the kernel's centre tap, untouched channels doubled.
    """

    def __init__(self, dim: int, n_div: int = 4, kernel_size: int = 3, dim_conv: int | None = None) -> None:
        super().__init__()
        if dim_conv is None:
            if not 1 <= n_div <= dim:
                raise ValueError(f"n_div must be in [1, {dim}], got {n_div}")
            dim_conv = dim // n_div
        self.dim_conv = int(dim_conv)
        self.dim_untouched = dim - self.dim_conv
        self.untouched_scale = 1.0
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, kernel_size, 1, kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        if self.untouched_scale != 1.0:
            x2 = x2 * self.untouched_scale
        return torch.cat((self.conv(x1), x2), 1)

    def fuse_residual(self) -> None:
        """Afterwards ``self(x)`` equals ``x + self_before(x)``."""
        add_identity_to_kernel(self.conv)
        self.untouched_scale += 1.0
