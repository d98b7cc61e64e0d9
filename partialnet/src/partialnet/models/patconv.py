"""PATConv (partial attention convolution) and the three blocks it gives rise to.

* PAT_ch: ``PATConvChannel`` -- PConv on ``dim / n_div`` channels, enhanced Gaussian channel attention
  (per-channel mean and standard deviation -> gate) on the untouched channels, then a BatchNorm on them.
* PAT_sf: ``PATConvSelf`` -- PConv on ``dim / n_div`` channels, LayerNorm + multi-head self-attention with
  image relative position encoding (iRPE, Euclidean, bias mode, on keys) on the untouched channels.
* PAT_sp: ``PartialSpatialAttention`` -- the tail of the MLP: half the channels gated by a 1-channel
  spatial map (1x1 conv + hard-sigmoid) then BatchNorm, the other half BatchNorm + 1x1 conv.

Every module has a deploy form (``fuse()``) with the BatchNorms folded, tested equal in float64.
Module and parameter names are ours; ``partialnet.models.partialnet.checkpoint_filter_fn`` maps the official
checkpoint names (``cfc1``, ``rpe_k.lookup_table_bias``, ``conv_attn`` ...) onto them.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from partialnet.models.layers import PartialConv, add_identity_to_kernel, bn_affine, conv_from


# ----------------------------------------------------------------------------------------------------------
# PAT_ch: enhanced Gaussian channel attention
# ----------------------------------------------------------------------------------------------------------
def channel_mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel spatial mean and unbiased standard deviation of ``B, C, H, W`` (as ``Tensor.std`` in the
    official code). Two passes (mean, then centred sum of squares): same value as ``torch.std_mean`` to
    rounding, about 8x faster on CPU (``std_mean`` uses a slow Welford kernel there)."""
    count = x.shape[2] * x.shape[3]
    if count < 2:
        raise ValueError(f"channel attention needs at least 2 positions per map, got {tuple(x.shape[2:])}; "
                         "use a larger input image")
    mean = x.mean(dim=(2, 3))
    centred = x - mean[:, :, None, None]
    var = (centred * centred).sum(dim=(2, 3)) / (count - 1)
    return mean, var.sqrt()


class GaussianChannelAttention(nn.Module):
    """Gate each channel from its spatial mean and (unbiased) standard deviation, the two statistics of a
    Gaussian fitted to the channel: ``x * hardsigmoid(BN(conv_{1x2}([mean, std])))``.

    The ``1 x 2`` convolution mixes all channels' statistics (official ``SRM.cfc1``: ``C x C x 1 x 2``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate_conv = nn.Conv2d(channels, channels, kernel_size=(1, 2), bias=False)
        self.gate_norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = channel_mean_std(x)
        stats = torch.stack((mean, std), dim=-1).unsqueeze(2)  # B, C, 1, 2
        gate = F.hardsigmoid(self.gate_norm(self.gate_conv(stats)))
        return x * gate

    def fuse(self) -> FusedGaussianGate:
        conv = conv_from(self.gate_conv.weight.detach(), None, self.gate_conv)
        scale, shift = bn_affine(self.gate_norm)
        weight = conv.weight.detach()[:, :, 0, :] * scale.reshape(-1, 1, 1)  # C_out, C_in, 2 (mean, std)
        return FusedGaussianGate(weight[:, :, 0], weight[:, :, 1], shift)


class FusedGaussianGate(nn.Module):
    """Deploy form: ``gate = hardsigmoid(W_mean @ mean + W_std @ std + b)`` as one matrix product."""

    def __init__(self, w_mean: Tensor, w_std: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.cat((w_mean, w_std), dim=1).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)

    def gate(self, x: Tensor) -> Tensor:
        mean, std = channel_mean_std(x)
        return F.hardsigmoid(F.linear(torch.cat((mean, std), dim=1), self.weight, self.bias))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]


class PATConvChannel(PartialConv):
    """PATConv of the PAT_ch block: ``cat(pconv(x1), BN(gauss_attn(x2)))``."""

    def __init__(self, dim: int, n_div: int = 4) -> None:
        super().__init__(dim, n_div)
        self.attn = GaussianChannelAttention(self.dim_untouched)
        self.norm = nn.BatchNorm2d(self.dim_untouched)

    def forward(self, x: Tensor) -> Tensor:
        if not self.dim_untouched:  # n_div 1 (a DPConv search can learn it): every channel convolved, none to gate
            return self.conv(x)
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.conv(x1), self.norm(self.attn(x2))), 1)

    def fuse(self) -> tuple[FusedPATConvChannel, Tensor, Tensor]:
        """The deploy mixer without the trailing BN, plus that BN's ``(scale, shift)`` for the caller to fold
        into the next 1x1 convolution (the MLP's first layer)."""
        scale, shift = bn_affine(self.norm)
        conv = conv_from(self.conv.weight.detach(), None, self.conv)
        return FusedPATConvChannel(conv, self.attn.fuse()), scale, shift


class FusedPATConvChannel(nn.Module):
    """Deploy form of ``PATConvChannel`` whose trailing BN was folded into the consumer."""

    def __init__(self, conv: nn.Conv2d, gate: FusedGaussianGate) -> None:
        super().__init__()
        self.dim_conv = conv.in_channels
        self.conv, self.attn = conv, gate

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == self.dim_conv:  # n_div 1
            return self.conv(x)
        x1, x2 = torch.split(x, [self.dim_conv, x.shape[1] - self.dim_conv], dim=1)
        return torch.cat((self.conv(x1), self.attn(x2)), 1)


# ----------------------------------------------------------------------------------------------------------
# PAT_sf: self-attention with image relative position encoding
# ----------------------------------------------------------------------------------------------------------
def rpe_num_buckets(ratio: float) -> int:
    """iRPE piecewise index with ``alpha = ratio, beta = 2 ratio``: buckets ``-beta..beta``."""
    return 2 * int(2 * ratio) + 1


def _piecewise_bucket(dist: Tensor, ratio: float) -> Tensor:
    """iRPE's piecewise index of rounded pixel distances, shifted by ``beta`` to a bucket number."""
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    far = dist > alpha
    compressed = alpha + torch.log(dist.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    index = torch.where(far, compressed.round().clamp(max=beta), dist)
    return index.long() + int(beta)


@torch.no_grad()
def rpe_bucket_ids(height: int, width: int, ratio: float, device: torch.device | None = None) -> Tensor:
    """Bucket of every (query, key) pair of a ``height x width`` map: ``[L, L]`` long, ``L = height * width``.

    iRPE's Euclidean method (Wu et al., 2021) as configured by the official code (``ratio=20``, bias mode):
    the pixel distance is rounded, kept exact up to ``alpha``, compressed logarithmically between ``alpha``
    and ``gamma = 8 ratio`` and clipped at ``beta``; ``+ beta`` makes it an index into ``2 beta + 1`` buckets.
    The direct definition; the attention reads the same ids from ``rpe_offset_buckets`` (bounded memory).
    """
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    diff_r = (rows[:, None] - rows[None, :]).double()
    diff_c = (cols[:, None] - cols[None, :]).double()
    return _piecewise_bucket((diff_r.square() + diff_c.square()).sqrt().round(), ratio)


@torch.no_grad()
def rpe_offset_buckets(max_height: int, max_width: int, ratio: float,
                       device: torch.device | None = None) -> Tensor:
    """Bucket of every relative offset ``(dr, dc)`` with ``|dr| < max_height``, ``|dc| < max_width``:
    ``[2 max_height - 1, 2 max_width - 1]`` long, offset ``(0, 0)`` at the centre.

    The bucket depends only on the offset, so one table of the largest map seen serves every smaller map by
    slicing (as the official iRPE's ``lookup_table`` does): memory grows with the largest shape, not with the
    number of shapes (detection inputs vary per image).
    """
    d_r = torch.arange(1 - max_height, max_height, device=device).double()
    d_c = torch.arange(1 - max_width, max_width, device=device).double()
    return _piecewise_bucket((d_r[:, None].square() + d_c[None, :].square()).sqrt().round(), ratio)


def ids_from_offset_table(table: Tensor, height: int, width: int) -> Tensor:
    """``[L, L]`` bucket ids of a ``height x width`` map read from an offset table at least that large."""
    centre_r, centre_c = (table.shape[0] - 1) // 2, (table.shape[1] - 1) // 2
    if height - 1 > centre_r or width - 1 > centre_c:
        raise ValueError(f"offset table {tuple(table.shape)} is smaller than a {height}x{width} map")
    rows = torch.arange(height, device=table.device).repeat_interleave(width)
    cols = torch.arange(width, device=table.device).repeat(height)
    return table[rows[:, None] - rows[None, :] + centre_r, cols[:, None] - cols[None, :] + centre_c]


SHAPE_CACHE_SIZE = 4  # per-shape position biases kept by a deployed PAT_sf mixer (least recently used dropped)


class ShapeLRU:
    """A dict of at most ``maxsize`` entries that drops the least recently used one."""

    def __init__(self, maxsize: int = SHAPE_CACHE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[Any, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any, compute: Callable[[], Tensor]) -> Tensor:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return compute()  # a traced value (fake or symbolic tensor) must not outlive the trace in the cache
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = compute()
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a ``B, C, H, W`` map, with a learnt per-head bias for
    each relative-distance bucket added to the logits (iRPE on keys, bias mode, heads not shared)."""

    def __init__(self, dim: int, num_heads: int = 4, attn_drop: float = 0.1, proj_drop: float = 0.1,
                 rpe_ratio: float = 20.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.rpe_ratio = num_heads, dim // num_heads, rpe_ratio
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe_bias = nn.Parameter(torch.zeros(num_heads, rpe_num_buckets(rpe_ratio)))
        self._offset_table: Tensor | None = None  # one table, grown to the largest map seen

    def offset_table(self, height: int, width: int, device: torch.device) -> Tensor:
        """The offset-bucket table, rebuilt only when a larger map (or another device) arrives."""
        table = self._offset_table
        if table is None or table.device != device or table.shape[0] < 2 * height - 1 \
                or table.shape[1] < 2 * width - 1:
            old_h, old_w = ((table.shape[0] + 1) // 2, (table.shape[1] + 1) // 2) if table is not None else (0, 0)
            table = rpe_offset_buckets(max(height, old_h), max(width, old_w), self.rpe_ratio, device)
            self._offset_table = table
        return table

    def buckets(self, height: int, width: int, device: torch.device) -> Tensor:
        """``[L, L]`` bucket ids, sliced from the offset table (not kept: memory stays bounded)."""
        return ids_from_offset_table(self.offset_table(height, width, device), height, width)

    def position_bias(self, height: int, width: int) -> Tensor:
        return self.rpe_bias[:, self.buckets(height, width, self.rpe_bias.device)]

    def attend(self, tokens: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, bias: Tensor) -> Tensor:
        batch, length, dim = tokens.shape
        qkv = F.linear(tokens, qkv_weight, qkv_bias).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))

    def forward(self, x: Tensor) -> Tensor:
        batch, dim, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out = self.attend(tokens, self.qkv.weight, None, self.position_bias(height, width))
        return out.transpose(1, 2).reshape(batch, dim, height, width)


class PATConvSelf(PartialConv):
    """PATConv of the PAT_sf block: ``cat(pconv(x1), attn(LN(x2)))``; the block adds its input around it."""

    def __init__(self, dim: int, n_div: int = 4, num_heads: int = 4, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, rpe_ratio: float = 20.0) -> None:
        super().__init__(dim, n_div)
        self.norm: nn.Module | None = None
        self.attn: RelPosSelfAttention | None = None
        if self.dim_untouched:  # n_div 1 (a DPConv search can learn it): every channel convolved, no attention
            self.norm = LayerNorm2d(self.dim_untouched)  # timm's, eps 1e-6, as the official code
            self.attn = RelPosSelfAttention(self.dim_untouched, num_heads, attn_drop, proj_drop, rpe_ratio)

    def forward(self, x: Tensor) -> Tensor:
        if self.attn is None or self.norm is None:
            return self.conv(x)
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.conv(x1), self.attn(self.norm(x2))), 1)

    def fuse(self) -> FusedPATConvSelf | PartialConv:
        """Deploy form of ``x + self(x)``: identity in the conv's centre tap, LayerNorm affine in ``qkv``. At n_div
        1 a plain ``PartialConv`` over every channel (the block folds the residual into it)."""
        if self.attn is None or self.norm is None:
            plain = PartialConv(self.conv.in_channels, dim_conv=self.conv.in_channels)
            plain.conv = conv_from(self.conv.weight.detach(), None, self.conv)
            return plain
        conv = conv_from(self.conv.weight.detach(), None, self.conv)
        add_identity_to_kernel(conv)
        gamma, beta = self.norm.weight.detach(), self.norm.bias.detach()
        qkv_w = self.attn.qkv.weight.detach()
        attn = copy.deepcopy(self.attn)
        attn.qkv = nn.Identity()  # replaced by the fused weights
        return FusedPATConvSelf(conv, attn, qkv_w * gamma, qkv_w @ beta, self.norm.eps)


class FusedPATConvSelf(nn.Module):
    """``x + PATConvSelf(x)`` at inference; the position bias of the last ``SHAPE_CACHE_SIZE`` feature-map
    sizes is kept (an LRU, so variable detection shapes do not grow memory)."""

    def __init__(self, conv: nn.Conv2d, attn: RelPosSelfAttention, qkv_weight: Tensor, qkv_bias: Tensor,
                 eps: float) -> None:
        super().__init__()
        self.dim_conv, self.eps = conv.in_channels, eps
        self.conv, self.attn = conv, attn
        self.qkv_weight = nn.Parameter(qkv_weight.clone(), requires_grad=False)
        self.qkv_bias = nn.Parameter(qkv_bias.clone(), requires_grad=False)
        self._bias_cache = ShapeLRU(SHAPE_CACHE_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        x1, x2 = torch.split(x, [self.dim_conv, x.shape[1] - self.dim_conv], dim=1)
        bias = self._bias_cache.get((height, width, x.dtype, x.device), lambda: self._position_bias(x, height, width))
        tokens = x2.flatten(2).transpose(1, 2)
        normed = F.layer_norm(tokens, (tokens.shape[-1],), eps=self.eps)
        out = self.attn.attend(normed, self.qkv_weight, self.qkv_bias, bias)
        x2 = x2 + out.transpose(1, 2).reshape(x2.shape)
        return torch.cat((self.conv(x1), x2), 1)

    @torch.no_grad()
    def _position_bias(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.attn.position_bias(height, width).to(x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------
# PAT_sp: partial spatial attention at the end of the MLP
# ----------------------------------------------------------------------------------------------------------
class PartialSpatialAttention(nn.Module):
    """Official ``partial_spatial_attn_layer_reverse(dim, n_head=1)``: the first ``dim - dim/2`` channels are
    multiplied by ``hardsigmoid(1x1conv(.))`` (one spatial map) and batch-normalised; the last ``dim/2``
    are batch-normalised and mixed by a 1x1 conv."""

    def __init__(self, dim: int, partial: float = 0.5) -> None:
        super().__init__()
        self.dim_conv = int(partial * dim)
        self.dim_untouched = dim - self.dim_conv
        self.value_conv = nn.Conv2d(self.dim_conv, self.dim_conv, 1, bias=False)
        self.gate_conv = nn.Conv2d(self.dim_untouched, 1, 1, bias=False)
        self.gate_norm = nn.BatchNorm2d(self.dim_untouched)
        self.value_norm = nn.BatchNorm2d(self.dim_conv)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = torch.split(x, [self.dim_untouched, self.dim_conv], dim=1)
        x1 = self.gate_norm(x1 * F.hardsigmoid(self.gate_conv(x1)))
        x2 = self.value_conv(self.value_norm(x2))
        return torch.cat((x1, x2), 1)

    def fuse_after(self, proj: nn.Conv2d, out_scale: Tensor | None = None) -> FusedGatedProjection:
        """Fold ``self(proj(h))`` (optionally times a per-channel layer scale) into one 1x1 conv on ``h``
        producing ``[s1 * y1, y2_final, gate_logit]``, then ``cat(z1 * hardsigmoid(logit) + t1, z2)``."""
        w = proj.weight.detach()[:, :, 0, 0]  # dim, hidden
        w1, w2 = w[: self.dim_untouched], w[self.dim_untouched:]
        s1, t1 = bn_affine(self.gate_norm)
        s2, t2 = bn_affine(self.value_norm)
        wv = self.value_conv.weight.detach()[:, :, 0, 0]
        rows_gated = w1 * s1[:, None]
        rows_value = wv @ (w2 * s2[:, None])
        bias_value = wv @ t2
        if out_scale is not None:
            ls1, ls2 = out_scale[: self.dim_untouched], out_scale[self.dim_untouched:]
            rows_gated, t1 = rows_gated * ls1[:, None], t1 * ls1
            rows_value, bias_value = rows_value * ls2[:, None], bias_value * ls2
        row_gate = self.gate_conv.weight.detach()[:, :, 0, 0] @ w1
        weight = torch.cat((rows_gated, rows_value, row_gate), 0)[:, :, None, None]
        bias = torch.cat((torch.zeros_like(t1), bias_value, torch.zeros(1, dtype=w.dtype, device=w.device)))
        return FusedGatedProjection(conv_from(weight, bias, proj), t1, self.dim_untouched)


class FusedGatedProjection(nn.Module):
    """Deploy form of ``PartialSpatialAttention(conv(h))``: one 1x1 conv, one gate, one fused multiply-add."""

    def __init__(self, conv: nn.Conv2d, gated_shift: Tensor, dim_gated: int) -> None:
        super().__init__()
        self.conv, self.dim_gated = conv, dim_gated
        self.register_buffer("gated_shift", gated_shift.reshape(1, -1, 1, 1).clone())

    def forward(self, h: Tensor) -> Tensor:
        z = self.conv(h)
        z1, z2, logit = torch.split(z, [self.dim_gated, z.shape[1] - self.dim_gated - 1, 1], dim=1)
        return torch.cat((torch.addcmul(self.gated_shift, z1, F.hardsigmoid(logit)), z2), 1)
