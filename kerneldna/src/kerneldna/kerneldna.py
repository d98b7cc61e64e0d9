"""The KernelDNA child convolution: a borrowed parent kernel, a static adapter and a dynamic input gate.

A child layer computes (the paper's decoupled adapter)

    K_j = P ⊙ (1 + f_j)[o] ⊙ (1 + s_j)[u, v]          static, batch-shared kernel (zero-init f, s)
    g   = sigmoid(fc2(relu(bn(fc1(GAP(x))))))          dynamic, per-sample, per-input-channel gate
    y   = conv2d(x ⊙ g, K_j)                            one ordinary dense convolution

which equals a convolution with the per-sample kernel ``K_j ⊙ g_b[None, :, None, None]`` (tested in float64
against an explicit per-sample loop and the CondConv-style grouped convolution over the batch). Because
``K_j`` depends only on parameters it can be folded into a constant tensor once training is over.

Everything that computes a child kernel goes through :func:`modulate_kernel`; everything that owns child
kernels implements :class:`FoldableChildren` so that :func:`fold_model` bakes all of them at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPATIAL_FIRST = "spatial_first"  # official ResNet18: P * (1 + s) * (1 + f)
FILTER_FIRST = "filter_first"  # official ResNet50 / MobileNetV2 / our generic child: P * (1 + f) * (1 + s)


def modulate_kernel(
    parent: Tensor, filter_attn: Tensor | None = None, spatial_attn: Tensor | None = None,
    order: str = FILTER_FIRST,
) -> Tensor:
    """The static child kernel ``P ⊙ (1 + f) ⊙ (1 + s)``.

    ``filter_attn`` broadcasts over output filters (``[O,1,1,1]``), ``spatial_attn`` over taps
    (``[1,1,k,k]``); either may be absent. The factors are unconstrained, exactly as in the official code.
    ``order`` only changes the last ulp; it exists so that parity with the official ResNet18 is bit-exact.
    """
    if order not in (FILTER_FIRST, SPATIAL_FIRST):
        raise ValueError(f"unknown multiplication order {order!r}")
    factors = (filter_attn, spatial_attn) if order == FILTER_FIRST else (spatial_attn, filter_attn)
    kernel = parent
    for attn in factors:
        if attn is not None:
            kernel = kernel * (1 + attn)
    return kernel


class SEGate(nn.Module):
    """The dynamic part: an SE channel gate ``x * sigmoid(fc2(relu(bn(fc1(GAP(x))))))`` (official ``SE``).

    Sub-module names follow the official code (``se.fc1``, ``se.bn``, ``se.fc2``) so state dicts line up.
    The BatchNorm acts on ``[B, C//r, 1, 1]``: in training mode it needs more than one sample per device.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SE gate on {channels} channels with reduction {reduction} has no hidden units")
        self.se = nn.Sequential(OrderedDict([
            ("gap", nn.AdaptiveAvgPool2d(1)),
            ("fc1", nn.Conv2d(channels, hidden, 1, bias=False)),
            ("bn", nn.BatchNorm2d(hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("fc2", nn.Conv2d(hidden, channels, 1)),
            ("sigmoid", nn.Sigmoid()),
        ]))

    @property
    def is_folded(self) -> bool:
        return getattr(self, "_folded", False)

    def gate(self, x: Tensor) -> Tensor:
        """Per-sample, per-input-channel factors ``[B, C, 1, 1]`` in (0, 1)."""
        if self.is_folded:
            hidden = torch.relu(F.linear(x.mean((2, 3)), self.folded_w1, self.folded_b1))
            return torch.sigmoid(F.linear(hidden, self.folded_w2, self.folded_b2))[:, :, None, None]
        return self.se(x)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)

    @torch.no_grad()
    def fold(self) -> None:
        """Deployment form: fc1 and the eval-mode BatchNorm merged into one affine map, 1x1 convs as matmuls.

        Same function as the training form in eval mode (up to float rounding), about 3.5x fewer CPU cycles on
        small maps, where the gate's op count rather than its arithmetic dominates.
        """
        fc1, bn, fc2 = self.se.fc1, self.se.bn, self.se.fc2
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        for name, value in (("folded_w1", fc1.weight.flatten(1) * scale[:, None]),
                            ("folded_b1", bn.bias - bn.running_mean * scale),
                            ("folded_w2", fc2.weight.flatten(1)), ("folded_b2", fc2.bias)):
            self.register_buffer(name, value.detach().clone(), persistent=False)
        self._folded = True

    def unfold(self) -> None:
        if self.is_folded:
            for name in ("folded_w1", "folded_b1", "folded_w2", "folded_b2"):
                delattr(self, name)
        self._folded = False

    def train(self, mode: bool = True) -> SEGate:
        if mode and self.is_folded:
            self.unfold()
        return super().train(mode)


def make_gate(channels: int, reduction: int, dynamic: bool) -> nn.Module:
    """An :class:`SEGate`, or ``nn.Identity`` for the static-only ablation."""
    return SEGate(channels, reduction) if dynamic else nn.Identity()


def make_static_attn(*shape: int, trainable: bool = True) -> nn.Parameter:
    """A zero-initialised static attention; frozen at zero for the dynamic-only ablation."""
    return nn.Parameter(torch.zeros(*shape), requires_grad=trainable)


class FoldableChildren(nn.Module):
    """Base for modules whose child kernels are computed from parent kernels by :func:`modulate_kernel`.

    Subclasses implement :meth:`compute_child_kernels`. After :meth:`fold` the kernels are constant buffers
    (non-persistent: the state dict keeps the training form, so checkpoints load into folded and unfolded
    models alike). Switching back to training mode discards them, because they would go stale.
    """

    def compute_child_kernels(self) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_folded(self) -> bool:
        return getattr(self, "_n_folded", 0) > 0

    def child_kernels(self) -> list[Tensor]:
        if self.is_folded:
            return [getattr(self, f"folded_kernel{i}") for i in range(self._n_folded)]
        return self.compute_child_kernels()

    @torch.no_grad()
    def fold(self) -> None:
        """Bake the static adapter into constant kernels (deployment form; call in eval mode)."""
        self.unfold()
        kernels = self.compute_child_kernels()
        for i, kernel in enumerate(kernels):
            self.register_buffer(f"folded_kernel{i}", kernel.detach().clone(), persistent=False)
        self._n_folded = len(kernels)

    def unfold(self) -> None:
        for i in range(getattr(self, "_n_folded", 0)):
            delattr(self, f"folded_kernel{i}")
        self._n_folded = 0

    def train(self, mode: bool = True) -> FoldableChildren:
        if mode and self.is_folded:
            self.unfold()
        return super().train(mode)


def fold_model(model: nn.Module) -> nn.Module:
    """Deployment form, in place: eval mode, every child kernel a constant, every SE gate in its fused form."""
    model.eval()
    for module in model.modules():
        if isinstance(module, (FoldableChildren, SEGate)):
            module.fold()
    return model


def unfold_model(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (FoldableChildren, SEGate)):
            module.unfold()
    return model


class ChildConv2d(FoldableChildren):
    """A convolution that owns no kernel: it borrows ``parent.weight`` by reference and adapts it.

    The parent conv is *not* registered as a sub-module (it lives, and is counted, where it was); the child
    owns only its static attentions, its SE gate and (if the replaced conv had one) its bias. Stride,
    padding and dilation are the child's own (those of the conv it replaces).

    ``static``: learn the filter-wise (and, for k > 1, spatial-wise) factors; ``dynamic``: learn the gate.
    """

    def __init__(
        self,
        parent: nn.Conv2d,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] | None = None,
        bias: Tensor | None = None,
        gate_reduction: int = 4,
        static: bool = True,
        dynamic: bool = True,
        spatial: bool | None = None,
        parent_name: str = "",
    ) -> None:
        super().__init__()
        if type(parent) is not nn.Conv2d:
            raise TypeError(f"a parent must be a plain nn.Conv2d, got {type(parent).__name__}")
        object.__setattr__(self, "parent", parent)  # a reference, never a copy or a registered sub-module
        self.parent_name = parent_name
        out_ch, in_per_group, kh, kw = parent.weight.shape
        self.in_channels, self.out_channels = in_per_group * parent.groups, out_ch
        self.kernel_size, self.groups = (kh, kw), parent.groups
        self.stride = tuple(stride) if isinstance(stride, Sequence) else (stride, stride)
        self.dilation = tuple(dilation) if dilation is not None else parent.dilation
        default_pad = ((kh - 1) * self.dilation[0] // 2, (kw - 1) * self.dilation[1] // 2)
        pad = default_pad if padding is None else padding
        self.padding = tuple(pad) if isinstance(pad, Sequence) else (pad, pad)
        use_spatial = (kh * kw > 1) if spatial is None else spatial
        self.static_filter_attn = make_static_attn(out_ch, 1, 1, 1, trainable=static)
        self.static_spatial_attn = make_static_attn(1, 1, kh, kw, trainable=static) if use_spatial else None
        self.gate = make_gate(self.in_channels, gate_reduction, dynamic)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def compute_child_kernels(self) -> list[Tensor]:
        return [modulate_kernel(self.parent.weight, self.static_filter_attn, self.static_spatial_attn)]

    def forward(self, x: Tensor) -> Tensor:
        (kernel,) = self.child_kernels()
        return F.conv2d(self.gate(x), kernel, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"parent={self.parent_name or '?'}, folded={self.is_folded}")


def per_sample_kernel_conv(x: Tensor, kernel: Tensor, gate: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """Reference: the same layer written as an explicit per-sample dynamic kernel ``K ⊙ g_b`` (a loop)."""
    outs = [F.conv2d(x[b:b + 1], kernel * gate[b].reshape(1, -1, 1, 1), stride=stride, padding=padding)
            for b in range(x.shape[0])]
    return torch.cat(outs)


def grouped_batch_conv(x: Tensor, kernel: Tensor, gate: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """Reference: the per-sample kernels run CondConv/ODConv-style as one grouped conv with ``groups=B``."""
    batch, channels, height, width = x.shape
    kernels = (kernel.unsqueeze(0) * gate.reshape(batch, 1, channels, 1, 1)).reshape(-1, *kernel.shape[1:])
    out = F.conv2d(x.reshape(1, batch * channels, height, width), kernels, stride=stride, padding=padding,
                   groups=batch)
    return out.reshape(batch, kernel.shape[0], out.shape[-2], out.shape[-1])
