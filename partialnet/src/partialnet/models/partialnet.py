"""The PartialNet family (T0, T1, T2, S, M, L), registered in timm as ``partialnet_t0`` ... ``partialnet_l``.

Architecture (official ``models/partialnet.py`` + ``cfg/PartialNet_*.yaml``, haiduo/PartialNet @ 679cfc0):
FasterNet's 4-stage hierarchy -- 4x4/4 patch embedding + BN, 2x2/2 patch merging + BN between stages,
stage widths ``embed_dim * 2**i`` -- whose blocks are

* stages 1-3, PAT_ch: ``x + DropPath(MLP(PATConvChannel(x)))``
* stage 4,    PAT_sf: ``y = x + PATConvSelf(x); y + DropPath(MLP(y))``

``MLP = 1x1 conv (dim -> 2 dim) -> BN -> act -> 1x1 conv (2 dim -> dim) [-> PartialSpatialAttention]``
(the PAT_sp tail, only in T1's config), head ``avgpool -> 1x1 conv (-> 1280) -> act -> linear``.
With ``dynamic_split=True`` every mixer is a DPConv instead (as the official ``auto_div``); in stage 4 its split
stops at ``dim / num_heads`` convolved channels, so the PAT_sf retrained from it has a width its heads divide.

Per-component switches (the ablation ladder ``ABLATION_LADDER``): ``use_channel_attn`` (PAT_ch in stages 1-3,
else PConv), ``use_self_attn`` (PAT_sf in stage 4, else PConv; by default follows ``use_channel_attn``, the
official single switch), ``use_spatial_attn`` (PAT_sp). The residual around the stage-4 mixer belongs to PAT_sf:
with PConv there (or DPConv) the block is FasterNet's, so every switch off *is* FasterNet. The official code keys
that residual on the stage index, so its "no attention" ablation computes ``x + cat(conv(x1), x2)`` in stage 4
(untouched channels doubled); ``official_mixer_residual=True`` keeps that behaviour.
``layer_n_div`` gives every block its own split divisor (in block order), e.g. the splits a DPConv search learnt.
Stage/merging modules follow timm's FasterNet layout (``stages.i.downsample`` / ``stages.i.blocks``), so
``features_only`` / ``forward_intermediates`` work as for any timm model and ``stages.i`` is stage ``i``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.fasternet import PatchEmbed, PatchMerging
from torch import Tensor, nn

from partialnet.models.dpconv import DPConv
from partialnet.models.layers import PartialConv, fold_input_affine, fuse_conv_bn, fuse_sequential_conv_bn
from partialnet.models.patconv import PartialSpatialAttention, PATConvChannel, PATConvSelf

ACTIVATIONS = {"gelu": nn.GELU, "relu": partial(nn.ReLU, inplace=True)}


@dataclass(frozen=True)
class PartialNetConfig:
    """One variant. Defaults are the values every official config shares."""

    embed_dim: int
    depths: tuple[int, ...]
    drop_path_rate: float
    act_layer: str
    use_spatial_attn: bool = False
    use_channel_attn: bool = True
    mlp_ratio: float = 2.0
    n_div: int = 4
    feature_dim: int = 1280
    patch_size: int = 4
    merge_size: int = 2
    num_heads: int = 4  # official ``patnet_t0: True`` in every config -> 4 heads
    attn_drop: float = 0.1
    proj_drop: float = 0.1
    rpe_ratio: float = 20.0
    layer_scale_init_value: float = 0.0
    dynamic_split: bool = False
    use_self_attn: bool | None = None  # None: same as use_channel_attn (the official single switch)
    official_mixer_residual: bool = False
    layer_n_div: tuple[int, ...] | None = None

    def model_kwargs(self) -> dict[str, Any]:
        return asdict(self)


# cfg/PartialNet_{t0,t1,t2,s,m,l}.yaml (T0: the official yaml says ``model_name: convnext_tiny`` -- a bug
# that trains a 43.8 M-parameter ConvNeXt; these are its PartialNet fields).
VARIANTS: dict[str, PartialNetConfig] = {
    "t0": PartialNetConfig(embed_dim=32, depths=(1, 2, 8, 2), drop_path_rate=0.0, act_layer="gelu"),
    "t1": PartialNetConfig(embed_dim=48, depths=(1, 2, 8, 2), drop_path_rate=0.02, act_layer="gelu",
                           use_spatial_attn=True),
    "t2": PartialNetConfig(embed_dim=64, depths=(2, 2, 6, 4), drop_path_rate=0.05, act_layer="relu"),
    "s": PartialNetConfig(embed_dim=96, depths=(2, 2, 9, 4), drop_path_rate=0.1, act_layer="relu"),
    "m": PartialNetConfig(embed_dim=128, depths=(2, 3, 16, 4), drop_path_rate=0.2, act_layer="relu"),
    "l": PartialNetConfig(embed_dim=160, depths=(2, 3, 20, 4), drop_path_rate=0.3, act_layer="relu"),
}


# Cumulative per-component settings, PConv (= FasterNet) first; pass one as ``**kwargs`` to a variant. The third
# rung is the T2 (and T0, S, M, L) default; the fourth adds PAT_sp, which the official configs enable in T1 only.
ABLATION_LADDER: dict[str, dict[str, bool]] = {
    "pconv": dict(use_channel_attn=False, use_spatial_attn=False, use_self_attn=False),
    "pat_ch": dict(use_channel_attn=True, use_spatial_attn=False, use_self_attn=False),
    "pat_ch_sf": dict(use_channel_attn=True, use_spatial_attn=False, use_self_attn=True),
    "pat_ch_sf_sp": dict(use_channel_attn=True, use_spatial_attn=True, use_self_attn=True),
}


def _act(name: str | type[nn.Module]) -> Any:
    if not isinstance(name, str):
        return name
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown act_layer {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name.lower()]


class PartialNetBlock(nn.Module):
    """One PartialNet block; ``mixer`` is ``"pconv"``, ``"channel"`` (PAT_ch), ``"self"`` (PAT_sf) or
    ``"dynamic"`` (DPConv). ``mixer_residual`` puts a residual around the mixer too (official ``split_shortcut``,
    PAT_sf's own residual); without it the block is FasterNet's ``x + DropPath(MLP(mixer(x)))``."""

    def __init__(self, dim: int, mixer: str, mixer_residual: bool, n_div: int = 4, mlp_ratio: float = 2.0,
                 drop_path: float = 0.0, act_layer: Any = nn.GELU, use_spatial_attn: bool = False,
                 num_heads: int = 4, attn_drop: float = 0.1, proj_drop: float = 0.1, rpe_ratio: float = 20.0,
                 layer_scale_init_value: float = 0.0, dpconv_max_div: int | None = None) -> None:
        super().__init__()
        if mixer == "channel":
            self.spatial_mixing: nn.Module = PATConvChannel(dim, n_div)
        elif mixer == "self":
            self.spatial_mixing = PATConvSelf(dim, n_div, num_heads, attn_drop, proj_drop, rpe_ratio)
        elif mixer == "dynamic":
            self.spatial_mixing = DPConv(dim, init_div=n_div, max_div=dpconv_max_div)
        elif mixer == "pconv":
            self.spatial_mixing = PartialConv(dim, n_div)
        else:
            raise ValueError(f"unknown mixer {mixer!r}")
        hidden = int(dim * mlp_ratio)
        layers: list[nn.Module] = [nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act_layer(),
                                   nn.Conv2d(hidden, dim, 1, bias=False)]
        if use_spatial_attn:
            layers.append(PartialSpatialAttention(dim))
        self.mlp = nn.Sequential(*layers)
        self.shortcut_after_mixing = mixer_residual
        self.mixer_residual = mixer_residual  # folded into the mixer by fuse()
        self.layer_scale = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                            if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.deployed = False

    def forward(self, x: Tensor) -> Tensor:
        if self.shortcut_after_mixing:
            mixed = self.spatial_mixing(x)
            x = x + mixed if self.mixer_residual else mixed
            shortcut = x
        else:
            shortcut = x
            x = self.spatial_mixing(x)
        y = self.mlp(x)
        if self.layer_scale is not None:
            y = self.layer_scale[:, None, None] * y
        return shortcut + self.drop_path(y)

    @torch.no_grad()
    def fuse(self) -> None:
        """Switch to the deploy form in place (eval-mode BN statistics; the result is eval-only)."""
        if self.deployed:
            return
        mixer = self.spatial_mixing
        input_affine = None
        if isinstance(mixer, PATConvChannel):
            fused, scale, shift = mixer.fuse()
            input_affine = (mixer.dim_conv, scale, shift)
        elif isinstance(mixer, PATConvSelf):
            if not self.mixer_residual:
                raise RuntimeError("a PAT_sf mixer is only defined with its residual")
            fused = mixer.fuse()
        elif isinstance(mixer, DPConv):
            fused = mixer.to_partial_conv()
        elif isinstance(mixer, PartialConv):
            fused = copy.deepcopy(mixer)
        else:
            raise TypeError(f"cannot fuse a {type(mixer).__name__} mixer")
        if self.mixer_residual and isinstance(fused, PartialConv):
            fused.fuse_residual()
        self.spatial_mixing, self.mixer_residual = fused, False

        conv1, bn, act, conv2, *tail = self.mlp
        if input_affine is not None:
            conv1 = fold_input_affine(conv1, *input_affine)
        conv1 = fuse_conv_bn(conv1, bn)
        ls = self.layer_scale.detach() if self.layer_scale is not None else None
        if tail:
            projection: nn.Module = tail[0].fuse_after(conv2, ls)
        else:
            weight = conv2.weight.detach() * (ls.reshape(-1, 1, 1, 1) if ls is not None else 1.0)
            projection = nn.Conv2d(conv2.in_channels, conv2.out_channels, 1, bias=False).to(weight)
            projection.weight.copy_(weight)
        self.mlp = nn.Sequential(conv1, act, projection)
        self.layer_scale, self.drop_path, self.deployed = None, nn.Identity(), True


class PartialNetStage(nn.Module):
    """Optional 2x2 patch merging (timm's FasterNet ``PatchMerging``), then the stage's blocks."""

    def __init__(self, dim: int, blocks: list[PartialNetBlock], downsample: bool, merge_size: int = 2) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim // 2, merge_size, nn.BatchNorm2d) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PartialNet(nn.Module):
    """PartialNet / PATNet classifier (timm-compatible). Build variants with ``timm.create_model``."""

    def __init__(self, embed_dim: int = 64, depths: tuple[int, ...] = (2, 2, 6, 4), drop_path_rate: float = 0.0,
                 act_layer: str | type[nn.Module] = "relu", use_spatial_attn: bool = False,
                 use_channel_attn: bool = True, mlp_ratio: float = 2.0, n_div: int = 4, feature_dim: int = 1280,
                 patch_size: int = 4, merge_size: int = 2, num_heads: int = 4, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, rpe_ratio: float = 20.0, layer_scale_init_value: float = 0.0,
                 dynamic_split: bool = False, use_self_attn: bool | None = None,
                 official_mixer_residual: bool = False, layer_n_div: tuple[int, ...] | None = None,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        act = _act(act_layer)
        if layer_n_div is not None and len(layer_n_div) != sum(depths):
            raise ValueError(f"layer_n_div has {len(layer_n_div)} entries for {sum(depths)} blocks")
        divs = list(layer_n_div) if layer_n_div is not None else [n_div] * sum(depths)
        self_attn = use_channel_attn if use_self_attn is None else use_self_attn
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_stages = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, nn.BatchNorm2d)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # official: over all blocks
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            last = i == self.num_stages - 1
            mixer = _mixer(last, dynamic_split, use_channel_attn, self_attn)
            mixer_residual = mixer == "self" or (last and official_mixer_residual)
            blocks = [
                PartialNetBlock(dim, mixer, mixer_residual, int(divs[sum(depths[:i]) + j]), mlp_ratio,
                                rates[sum(depths[:i]) + j], act, use_spatial_attn, num_heads, attn_drop, proj_drop,
                                rpe_ratio, layer_scale_init_value,
                                dpconv_max_div=dim // num_heads if last else None)
                for j in range(depth)
            ]
            stages.append(PartialNetStage(dim, blocks, downsample=i > 0, merge_size=merge_size))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * merge_size ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (self.num_stages - 1)
        self.head_hidden_size = feature_dim
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(self.num_features, feature_dim, 1, bias=False)
        self.act = act()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # -- timm model API ------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+).downsample", (0,)),
                                                   (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                   (r"^conv_head", (99999,))]
        return dict(stem=r"^patch_embed", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        device = self.conv_head.weight.device if isinstance(self.conv_head, nn.Conv2d) else None
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=device) if num_classes else nn.Identity()

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """timm's multi-scale API: the outputs of the stages in ``indices`` (all four by default)."""
        if output_fmt != "NCHW":
            raise ValueError("PartialNet features are NCHW")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.patch_embed(x)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head or max_index < self.num_stages - 1:
            self.num_features = self.feature_info[max_index]["num_chs"]
            self.conv_head, self.act = nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.act(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # -- deploy ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> PartialNet:
        """In-place deploy form: every BN folded, residuals re-parameterised, DPConv -> fixed PConv.
        Call on an ``eval()`` model (running statistics); see ``partialnet.deploy.deploy_copy``."""
        _fuse_trunk(self.patch_embed, self.stages)
        return self.eval()


def _mixer(last: bool, dynamic: bool, channel_attn: bool, self_attn: bool) -> str:
    if dynamic:
        return "dynamic"
    if last:
        return "self" if self_attn else "pconv"
    return "channel" if channel_attn else "pconv"


def _fuse_trunk(patch_embed: nn.Module, stages: nn.Sequential) -> None:
    fuse_sequential_conv_bn(patch_embed)
    for stage in stages:
        fuse_sequential_conv_bn(stage.downsample)
        for block in stage.blocks:
            block.fuse()


def _init_weights(module: nn.Module) -> None:
    """Official ``cls_init_weights``: truncated normal (std 0.02) for linear/conv weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PartialNetFeatures(nn.Module):
    """Multi-scale backbone (the official detection ``fork_feat`` mode): stem + stages, with a BatchNorm on
    every returned map. ``out_channels`` lists the widths; detection necks take them as ``in_channels``.

    The official detection backbones were built with FasterNet's S/M/L widths and depths (128/144/192,
    e.g. ``(1, 2, 13, 2)``) while the ImageNet checkpoints they load are PartialNet's (96/128/160,
    ``(2, 2, 9, 4)`` ...), and their FPN configs list FasterNet's widths: here the backbone is always built
    from the same ``VARIANTS`` entry as the classifier, so ImageNet weights load and widths agree.
    """

    def __init__(self, variant: str = "s", out_indices: tuple[int, ...] = (0, 1, 2, 3),
                 norm_outputs: bool = True, **overrides: Any) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown PartialNet variant {variant!r}; use one of {', '.join(VARIANTS)}")
        kwargs = {**VARIANTS[variant].model_kwargs(), **overrides, "num_classes": 0}
        body = PartialNet(**kwargs)
        self.patch_embed, self.stages = body.patch_embed, body.stages[: max(out_indices) + 1]
        self.out_indices = tuple(out_indices)
        self.out_channels = [body.feature_info[i]["num_chs"] for i in self.out_indices]
        self.strides = [body.feature_info[i]["reduction"] for i in self.out_indices]
        self.out_norms = nn.ModuleList(nn.BatchNorm2d(c) if norm_outputs else nn.Identity() for c in self.out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        outs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.out_indices:
                outs.append(self.out_norms[self.out_indices.index(index)](x))
        return outs

    def load_classifier_state(self, state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Load ImageNet weights (ours or official, through ``checkpoint_filter_fn``); head keys are ignored."""
        state = checkpoint_filter_fn(state_dict)
        state = {k: v for k, v in state.items() if k.startswith(("patch_embed.", "stages."))}
        result = self.load_state_dict(state, strict=False)
        return list(result.missing_keys), list(result.unexpected_keys)

    @torch.no_grad()
    def fuse(self) -> PartialNetFeatures:
        _fuse_trunk(self.patch_embed, self.stages)
        return self.eval()


# -- official checkpoints --------------------------------------------------------------------------------------
_RENAMES = (
    (".spatial_mixing.partial_conv3.", ".spatial_mixing.conv."),
    (".attn.cfc1.", ".attn.gate_conv."),
    (".attn.bn.", ".attn.gate_norm."),
    (".attn.rpe_k.lookup_table_bias", ".attn.rpe_bias"),
    (".mlp.4.conv.", ".mlp.4.value_conv."),
    (".mlp.4.conv_attn.", ".mlp.4.gate_conv."),
    (".mlp.4.norm.", ".mlp.4.gate_norm."),
    (".mlp.4.norm2.", ".mlp.4.value_norm."),
)
_DGCONV_BUFFERS = re.compile(r"\.spatial_mixing\.(I|one|c_div|one_channel)$")


def _official_key(key: str) -> str | None:
    key = key.removeprefix("model.")
    if _DGCONV_BUFFERS.search(key) or key.startswith(("teacher", "criterion")):
        return None
    if key.startswith("avgpool_pre_head.1."):
        return "conv_head." + key.removeprefix("avgpool_pre_head.1.")
    if key.startswith("head."):
        return "classifier." + key.removeprefix("head.")
    match = re.match(r"^stages\.(\d+)\.(.*)$", key)
    if match:
        index, rest = int(match[1]), match[2]
        key = f"stages.{index // 2}.{rest}" if index % 2 == 0 else f"stages.{(index + 1) // 2}.downsample.{rest}"
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Accept our state dicts or the official ones (Lightning ``state_dict`` with a ``model.`` prefix, the
    7-entry ``stages`` list, ``avgpool_pre_head`` / ``head``) and return ours."""
    for wrapper in ("state_dict", "model", "ema"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    official = any(k.removeprefix("model.").startswith("avgpool_pre_head") for k in state_dict)
    if not official:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        new = _official_key(key)
        if new is not None:
            out[new] = value
    return out


# -- timm registration -------------------------------------------------------------------------------------------
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "classifier", "paper_ids": "arXiv:2502.01303",
        "paper_name": "Partial Channel Network: Compute Fewer, Perform Better",
        "origin_url": "https://github.com/haiduo/PartialNet", **kwargs,
    }


default_cfgs = generate_default_cfgs({f"partialnet_{name}": _cfg() for name in VARIANTS})


def create_partialnet(variant: str, pretrained: bool = False, **kwargs: Any) -> PartialNet:
    """Build ``partialnet_<variant>``; ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)``
    (no official weights are published) and accepts official or our checkpoints."""
    name = variant.removeprefix("partialnet_")
    if name not in VARIANTS:
        raise ValueError(f"unknown PartialNet variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        raise ValueError("no official PartialNet weights are published; pass "
                         "pretrained_cfg_overlay=dict(file='checkpoint.pth') to load a local checkpoint")
    model_args = {**VARIANTS[name].model_kwargs(), **kwargs}
    return build_model_with_cfg(PartialNet, f"partialnet_{name}", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **model_args)


@register_model
def partialnet_t0(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("t0", pretrained, **kwargs)


@register_model
def partialnet_t1(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("t1", pretrained, **kwargs)


@register_model
def partialnet_t2(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("t2", pretrained, **kwargs)


@register_model
def partialnet_s(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("s", pretrained, **kwargs)


@register_model
def partialnet_m(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("m", pretrained, **kwargs)


@register_model
def partialnet_l(pretrained: bool = False, **kwargs: Any) -> PartialNet:
    return create_partialnet("l", pretrained, **kwargs)
