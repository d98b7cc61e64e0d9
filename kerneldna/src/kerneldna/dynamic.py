"""Dynamic-convolution peers for like-for-like comparisons: CondConv (timm's ``CondConv2d``) and ODConv.

Both build a per-sample kernel and run it as one grouped convolution over the batch (``groups = B``): the
cost KernelDNA avoids by gating the activation instead of the kernel. ``replace_convs`` swaps them (or any
other layer) in for chosen convolutions of a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from timm.layers import CondConv2d
from torch import Tensor, nn


class CondConv(nn.Module):
    """CondConv (Yang et al. 2019): ``num_experts`` kernels mixed by ``sigmoid(Linear(GAP(x)))`` per sample.

    The routing function is timm's EfficientNet-CondConv one; the mixing and grouped conv are timm's
    ``CondConv2d``. ``expertwise=True`` trains the same function as ``sum_e r_e * conv(x, W_e)``: one dense
    convolution with all experts' kernels, then a per-sample mix of the outputs (``groups=1`` only). That costs
    ``num_experts`` times the MACs but no convolution over the batch, which on a CPU with small maps is several
    times faster to train. In eval mode (benchmarks, MAC counts, test accuracy) the layer always runs timm's
    per-sample-kernel form, CondConv's deployment form.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1, bias: bool = False, num_experts: int = 4,
                 expertwise: bool = False) -> None:
        super().__init__()
        if expertwise and groups != 1:
            raise ValueError("the expert-wise CondConv form needs groups=1")
        padding = kernel_size // 2 if padding is None else padding
        self.expertwise = expertwise
        self.routing_fn = nn.Linear(in_channels, num_experts)
        self.conv = CondConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               groups=groups, bias=bias, num_experts=num_experts)

    def forward(self, x: Tensor) -> Tensor:
        routing = torch.sigmoid(self.routing_fn(x.mean((2, 3))))
        return self.mix_experts(x, routing) if self.expertwise and self.training else self.conv(x, routing)

    def mix_experts(self, x: Tensor, routing: Tensor) -> Tensor:
        conv = self.conv
        experts, out_channels = conv.num_experts, conv.out_channels
        weight = conv.weight.view(experts * out_channels, *conv.weight_shape[1:])
        y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation)
        y = (y.view(x.shape[0], experts, out_channels, *y.shape[-2:]) * routing[:, :, None, None, None]).sum(1)
        return y if conv.bias is None else y + (routing @ conv.bias)[:, :, None, None]


class ODConv2d(nn.Module):
    """Omni-dimensional dynamic convolution (Li et al., ICLR 2022), written from the paper's formula.

    One trunk ``GAP → 1x1 (C → max(C/16, 16)) → BN → ReLU`` feeds four heads: input-channel (sigmoid), output
    filter (sigmoid), spatial k×k (sigmoid) and kernel-number (softmax over ``kernel_num`` kernels), all with
    temperature ``temperature`` (1 after ODConv's annealing). The per-sample kernel
    ``Σ_n α_kn ⊙ α_s ⊙ W_n`` runs as a grouped conv over the batch; the channel attention scales the input and
    the filter attention the output (the same trick KernelDNA uses, here only for those two dimensions).
    With ``kernel_size == 1`` and ``kernel_num == 1`` no per-sample kernel is needed (ODConv's 1x1 fast path).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1, reduction: float = 0.0625, kernel_num: int = 1,
                 min_channel: int = 16, temperature: float = 1.0) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.kernel_num, self.temperature = kernel_num, temperature
        hidden = max(int(in_channels * reduction), min_channel)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_channels, 1)
        depthwise = in_channels == groups == out_channels
        self.filter_fc = None if depthwise else nn.Conv2d(hidden, out_channels, 1)
        self.spatial_fc = None if kernel_size == 1 else nn.Conv2d(hidden, kernel_size * kernel_size, 1)
        self.kernel_fc = None if kernel_num == 1 else nn.Conv2d(hidden, kernel_num, 1)
        self.weight = nn.Parameter(torch.empty(kernel_num, out_channels, in_channels // groups,
                                               kernel_size, kernel_size))
        for i in range(kernel_num):
            nn.init.kaiming_normal_(self.weight[i], mode="fan_out", nonlinearity="relu")
        for m in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if m is not None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def attentions(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Channel ``[B,I,1,1]``, filter ``[B,O,1,1]``, spatial ``[B,1,1,1,k,k]``, kernel ``[B,N,1,1,1,1]``."""
        h = self.relu(self.bn(self.fc(self.avgpool(x))))
        t = self.temperature
        channel = torch.sigmoid(self.channel_fc(h) / t)
        filt = torch.sigmoid(self.filter_fc(h) / t) if self.filter_fc is not None else None
        spatial = (torch.sigmoid(self.spatial_fc(h) / t).view(x.shape[0], 1, 1, 1, self.kernel_size,
                                                                 self.kernel_size)
                   if self.spatial_fc is not None else None)
        kernel = (F.softmax(self.kernel_fc(h).view(x.shape[0], -1, 1, 1, 1, 1) / t, dim=1)
                  if self.kernel_fc is not None else None)
        return channel, filt, spatial, kernel

    def forward(self, x: Tensor) -> Tensor:
        channel, filt, spatial, kernel_attn = self.attentions(x)
        x = x * channel
        if spatial is None and kernel_attn is None:  # 1x1 fast path: one batch-shared kernel
            out = F.conv2d(x, self.weight[0], None, self.stride, self.padding, groups=self.groups)
        else:
            batch, channels, height, width = x.shape
            weight = self.weight.unsqueeze(0)  # [1, N, O, I/g, k, k]
            if spatial is not None:
                weight = weight * spatial
            weight = (weight * kernel_attn).sum(1) if kernel_attn is not None else weight[:, 0]
            weight = weight.expand(batch, *weight.shape[1:]).reshape(-1, channels // self.groups,
                                                                     self.kernel_size, self.kernel_size)
            out = F.conv2d(x.reshape(1, -1, height, width), weight, None, self.stride, self.padding,
                           groups=self.groups * batch)
            out = out.view(batch, self.out_channels, out.shape[-2], out.shape[-1])
        return out * filt if filt is not None else out


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted path ``name``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def convs_under(model: nn.Module, prefixes: Iterable[str], kernel_sizes: Iterable[int] | None = None) -> list[str]:
    """Names of the dense (groups=1) plain ``nn.Conv2d`` layers inside the modules ``prefixes``.

    ``kernel_sizes`` keeps only square kernels of those sizes (e.g. ``(3,)``: not the 1x1 projections).
    """
    prefixes = tuple(prefixes)
    sizes = None if kernel_sizes is None else set(kernel_sizes)
    names = []
    for name, module in model.named_modules():
        inside = any(name.startswith(p + ".") for p in prefixes)
        if inside and type(module) is nn.Conv2d and module.groups == 1 and (
                sizes is None or module.kernel_size[0] in sizes):
            names.append(name)
    return names


def replace_convs(model: nn.Module, names: Iterable[str], factory: Callable[[nn.Conv2d], nn.Module]) -> nn.Module:
    """Swap each named ``nn.Conv2d`` for ``factory(conv)`` (in place; returns the model)."""
    for name in names:
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"no layer named {name!r} in the model; pick names from model.named_modules()") from None
        if type(conv) is not nn.Conv2d:
            raise UsageError(f"layer {name!r} is a {type(conv).__name__}, not a plain nn.Conv2d; it cannot be replaced")
        set_submodule(model, name, factory(conv))
    return model


def condconv_from(conv: nn.Conv2d, num_experts: int = 4, expertwise: bool = False) -> CondConv:
    return CondConv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                    conv.groups, conv.bias is not None, num_experts, expertwise)


def odconv_from(conv: nn.Conv2d, kernel_num: int = 1, reduction: float = 0.0625) -> ODConv2d:
    if conv.bias is not None:
        raise UsageError("ODConv has no bias; the conv being replaced has one")
    return ODConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                    conv.groups, reduction=reduction, kernel_num=kernel_num)


def dynamic_variant(model: nn.Module, kind: str, stages: Iterable[str], kernel_sizes: Iterable[int] | None = None,
                    **kwargs: object) -> nn.Module:
    """Replace the dense convs under ``stages`` by CondConv (``kind='condconv'``) or ODConv (``'odconv'``)."""
    factories = {"condconv": condconv_from, "odconv": odconv_from}
    if kind not in factories:
        raise UsageError(f"unknown dynamic conv {kind!r}; use one of {sorted(factories)}")
    stages = list(stages)
    names = convs_under(model, stages, kernel_sizes)
    if not names:
        raise UsageError(f"no dense nn.Conv2d under {list(stages)}; nothing to replace")
    return replace_convs(model, names, lambda conv: factories[kind](conv, **kwargs))
