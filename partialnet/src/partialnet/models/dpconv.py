"""DPConv: dynamic partial convolution, which learns per layer how many channels the partial convolution
convolves (the split ratio), under a global complexity budget.

Mechanism (official ``models/dgconv.py``, after DGConv / GroupNet, Zhang et al. 2019): ``K`` binary gates
``s_i = (sign(g_i) + 1) / 2`` with a straight-through gradient (passed where ``|g_i| < 1``) form a Kronecker
product of ``2 x 2`` factors that masks a dense ``C x C`` convolution; ``G = 2 ** #(s_i = 0)`` is the split
divisor, ``C / G`` channels are convolved. A budget term multiplies the task loss by
``(complexity / budget) ** 0.01`` while the summed complexity exceeds the budget.

Reconstruction (README "DPConv"): the official forward is a block-diagonal *grouped* convolution over all
channels during training but a *partial* convolution (first group convolved, the rest identity) at
evaluation, so its trained and evaluated networks differ, and its mask is the wrong size (crash) for widths
that are not powers of two (T1: 48, S: 96, L: 160). Here the factors are ``v_i v_i^T`` with ``v_i = [1, s_i]``
and the gates are sorted (closed gates first), so the mask is exactly ``m m^T`` with ``m`` the indicator of
the first ``C / G`` channels: the training forward *is* the partial convolution it deploys to, the order
loss the official code needs to repair illegal gate orders is unnecessary, and widths ``2^K * r`` use ``K``
gates and an always-dense innermost block of ``r``. Complexity is the convolved weight count ``(C / G)^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partialnet.models.layers import PartialConv


class _BinaryGate(torch.autograd.Function):
    """``1[g >= 0]`` forward; straight-through ``0.5 * 1[|g| < 1]`` backward (official ``DcSign2`` then
    ``(sign + 1) / 2``)."""

    @staticmethod
    def forward(ctx, gate: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate)
        return (gate >= 0).to(gate.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (gate,) = ctx.saved_tensors
        return grad * 0.5 * (gate.abs() < 1).to(grad.dtype)


def power_of_two_factor(dim: int) -> int:
    """Exponent of the largest power of two dividing ``dim``."""
    return (dim & -dim).bit_length() - 1


class DPConv(nn.Module):
    """Dynamic partial ``k x k`` convolution on ``dim`` channels; starts at ``dim / init_div`` convolved and never
    goes below ``dim / max_div`` (a power of two; default: as far as the gates allow)."""

    def __init__(self, dim: int, init_div: int = 4, kernel_size: int = 3, gate_init: float = 1e-3,
                 max_div: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.num_gates = power_of_two_factor(dim)
        self.max_closed = self.num_gates if max_div is None else min(self.num_gates, max(0, max_div.bit_length() - 1))
        self.block = dim >> self.num_gates
        closed = int(math.log2(init_div)) if init_div > 0 and init_div & (init_div - 1) == 0 else -1
        if not 0 <= closed <= self.max_closed:
            raise ValueError(f"init_div must be a power of two dividing {dim}, at most 2**{self.max_closed}; "
                             f"got {init_div} (max_div {max_div})")
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, bias=False)
        init = torch.full((self.num_gates,), abs(gate_init))
        init[:closed] = -abs(gate_init)
        self.gate = nn.Parameter(init)
        self.gates_frozen = False  # the search's warm-up: the split stays at init_div while the weights train

    def channel_mask(self) -> Tensor:
        """``m`` (length ``dim``): 1 on the convolved channels, differentiable in the gates (STE) unless frozen."""
        gate = self.gate.detach() + 0 * self.gate if self.gates_frozen else self.gate  # zero gradient, same graph
        open_gates = torch.sort(_BinaryGate.apply(gate)).values  # closed (0) first: leading channels
        if self.max_closed < self.num_gates:  # gates closed beyond max_div do not act
            open_gates = torch.cat((open_gates[:self.max_closed], torch.ones_like(open_gates[self.max_closed:])))
        mask = torch.ones(1, dtype=self.gate.dtype, device=self.gate.device)
        for value in open_gates:
            mask = torch.kron(mask, torch.stack((torch.ones_like(value), value)))
        return torch.kron(mask, torch.ones(self.block, dtype=mask.dtype, device=mask.device))

    @property
    def dim_conv(self) -> int:
        """Channels convolved now: ``dim / 2 ** #closed gates``."""
        return self.dim >> min(int((self.gate.detach() < 0).sum()), self.max_closed)

    @property
    def split_divisor(self) -> int:
        return self.dim // self.dim_conv

    def complexity(self) -> Tensor:
        """Convolved weights per kernel tap, ``(C / G)^2``, differentiable in the gates."""
        return self.channel_mask().sum().square()

    def forward(self, x: Tensor) -> Tensor:
        mask = self.channel_mask().reshape(1, -1, 1, 1)
        out = F.conv2d(x * mask, self.conv.weight, None, 1, self.conv.padding)
        return mask * out + (1 - mask) * x

    def to_partial_conv(self) -> PartialConv:
        """The equivalent fixed ``PartialConv`` with the learnt split (the deploy form)."""
        n = self.dim_conv
        pconv = PartialConv(self.dim, dim_conv=n, kernel_size=self.conv.kernel_size[0])
        pconv.conv.weight.data.copy_(self.conv.weight.detach()[:n, :n])
        return pconv.to(self.conv.weight.device, self.conv.weight.dtype)


def dpconv_layers(model: nn.Module) -> list[DPConv]:
    return [m for m in model.modules() if isinstance(m, DPConv)]


def budget_multiplier(layers: Iterable[DPConv], budget_div: float = 4.0, alpha: float = 0.01) -> Tensor | None:
    """Official ``u_regular`` term, with complexity = convolved weights: ``(sum (C/G)^2 / budget) ** alpha`` when
    the sum exceeds ``budget = sum (C / budget_div)^2``, else 1 (no pressure under budget). Multiply the task
    loss by it. ``None`` without DPConv layers."""
    layers = list(layers)
    if not layers:
        return None
    complexity = torch.stack([layer.complexity() for layer in layers]).sum()
    budget = sum((layer.dim / budget_div) ** 2 for layer in layers)
    if float(complexity.detach()) <= budget:
        return torch.ones((), dtype=complexity.dtype, device=complexity.device)
    return (complexity / budget) ** alpha


def freeze_gates(model: nn.Module, frozen: bool) -> None:
    """Hold every DPConv's split (its gates get a zero gradient) or release it. The official search keeps a fixed
    mask for its first ``pre_epoch`` epochs: with random weights the task loss favours convolving nothing, and
    gates released at step 0 close within a few dozen steps."""
    for layer in dpconv_layers(model):
        layer.gates_frozen = frozen


def split_summary(model: nn.Module) -> list[dict[str, int]]:
    """Per DPConv layer: width, convolved channels and split divisor (what the training learnt)."""
    return [{"dim": m.dim, "dim_conv": m.dim_conv, "divisor": m.split_divisor} for m in dpconv_layers(model)]
