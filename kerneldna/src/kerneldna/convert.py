"""``convert(model)``: turn chosen convolutions of any torchvision/timm CNN into KernelDNA parent/child groups.

A group is one parent conv (keeps its kernel) and child convs (drop theirs, borrow the parent's through a
:class:`~kerneldna.kerneldna.ChildConv2d`). Children must have the parent's exact kernel shape and groups; they
keep their own stride, padding and bias. Without explicit groups, :func:`auto_share_groups` applies the
official rule stage by stage: among the stride-1 convs of one stage, those of identical shape form a group
whose parent is the *last* one (the official code always shares the kernel of the stage's last block).

Unlike the official ResNet-18 build this is a 1:1 replacement (same depth, same MACs, fewer parameters).
:func:`from_resnet` (``kerneldna convert``) builds the official structure instead -- deeper ``layer3`` / ``layer4``
whose extra blocks share kernels -- from a pretrained torchvision / timm ResNet's weights, to fine-tune;
:func:`from_mobilenetv2` does the same for torchvision's MobileNetV2 (the official clusters, which keep its depth).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from effrepro.errors import UsageError
from torch import nn

from kerneldna.dynamic import set_submodule
from kerneldna.kerneldna import ChildConv2d, FoldableChildren


def _conv(model: nn.Module, name: str, role: str) -> nn.Conv2d:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"{role} layer {name!r} not found in the model; "
                         "use names from model.named_modules()") from None
    if type(module) is not nn.Conv2d:
        raise UsageError(
            f"{role} layer {name!r} is a {type(module).__name__}, which cannot be shared; KernelDNA shares only "
            "plain nn.Conv2d kernels (no ConvTranspose, Linear, weight-standardised or same-padding convs)"
        )
    if module.padding_mode != "zeros":
        raise UsageError(f"{role} layer {name!r} uses padding_mode={module.padding_mode!r}; only zero padding "
                         "keeps the gate-the-input identity exact")
    return module


def auto_share_groups(model: nn.Module, stages: Iterable[str]) -> dict[str, list[str]]:
    """Official rule per stage: stride-1 convs of one shape form a group; the last of them is the parent."""
    groups: dict[str, list[str]] = {}
    for stage in stages:
        try:
            stage_module = model.get_submodule(stage)
        except AttributeError:
            raise UsageError(f"stage {stage!r} not found in the model; use names from model.named_children()") from None
        by_shape: dict[tuple, list[str]] = {}
        for name, module in stage_module.named_modules():
            if type(module) is nn.Conv2d and module.stride == (1, 1) and module.padding_mode == "zeros":
                key = (tuple(module.weight.shape), module.groups, module.dilation)
                by_shape.setdefault(key, []).append(f"{stage}.{name}")
        for names in by_shape.values():
            if len(names) > 1:
                groups[names[-1]] = names[:-1]
    if not groups:
        raise UsageError(f"no two stride-1 convs of the same shape in {list(stages)}; nothing to share")
    return groups


def convert(
    model: nn.Module,
    groups: Mapping[str, Sequence[str]] | None = None,
    stages: Iterable[str] | None = None,
    gate_reduction: int = 4,
    static: bool = True,
    dynamic: bool = True,
) -> nn.Module:
    """Make the children in ``groups`` (``{parent_name: [child_name, ...]}``) borrow their parent's kernel.

    Either ``groups`` or ``stages`` (then :func:`auto_share_groups`) must be given. In place; returns the
    model. Raises :class:`UsageError` naming the layer for unknown names, non-shareable layer types, shape or
    groups mismatches, and a conv used twice.
    """
    if groups is None:
        if stages is None:
            raise UsageError("convert needs groups={parent: [children]} or stages=[...] (e.g. ['layer3', 'layer4'])")
        groups = auto_share_groups(model, stages)
    seen: dict[str, str] = {}
    plan = []
    for parent_name, child_names in groups.items():
        parent = _conv(model, parent_name, "parent")
        if not child_names:
            raise UsageError(f"parent {parent_name!r} has no children; give at least one conv to share it with")
        for name in (parent_name, *child_names):
            if name in seen:
                raise UsageError(f"layer {name!r} appears twice (in the groups of {seen[name]!r} and {parent_name!r})")
            seen[name] = parent_name
        for child_name in child_names:
            child = _conv(model, child_name, "child")
            if child.weight.shape != parent.weight.shape or child.groups != parent.groups:
                raise UsageError(
                    f"cannot share parent {parent_name!r} (kernel {tuple(parent.weight.shape)}, groups "
                    f"{parent.groups}) with {child_name!r} (kernel {tuple(child.weight.shape)}, groups "
                    f"{child.groups}); children need the parent's exact kernel shape"
                )
            plan.append((child_name, child, parent, parent_name))
    for child_name, child, parent, parent_name in plan:
        set_submodule(model, child_name, ChildConv2d(
            parent, stride=child.stride, padding=child.padding, dilation=child.dilation, bias=child.bias,
            gate_reduction=gate_reduction, static=static, dynamic=dynamic, parent_name=parent_name,
        ).to(device=parent.weight.device, dtype=parent.weight.dtype))
    return model


def sharing_groups(model: nn.Module) -> dict[str, list[str]]:
    """The parent → children map of a model: ``convert``-made children and the official sharing stages.

    Stored with every checkpoint, so loading into a model with different groups fails with a clear error.
    """
    names = {id(m): n for n, m in model.named_modules()}
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ChildConv2d):
            groups.setdefault(names.get(id(module.parent), module.parent_name), []).append(name)
        elif isinstance(module, FoldableChildren):
            groups[f"{name} ({type(module).__name__})"] = [f"{len(module.compute_child_kernels())} child kernels"]
    return groups


def check_sharing(expected: Mapping[str, Sequence[str]], model: nn.Module, source: str = "checkpoint") -> None:
    """Raise :class:`UsageError` naming the first layer whose sharing differs between ``expected`` and ``model``."""
    actual = sharing_groups(model)
    for parent in sorted(set(expected) | set(actual)):
        want, have = list(expected.get(parent, [])), actual.get(parent, [])
        if want != have:
            raise UsageError(
                f"{source} was trained with different sharing groups at layer {parent!r}: it has children "
                f"{want or 'none'}, the model {have or 'none'}; build the model with the same convert()/arch settings"
            )


# ----------------------------------------------------------------------------------------------------------
# A pretrained ResNet -> KernelDNA ResNet with the official added-depth structure
# ----------------------------------------------------------------------------------------------------------
_CONV_BN = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def _basic_stage_map(stage: str) -> dict[str, str]:
    """ResNet-18 ``layerN`` (2 blocks) -> ``SharedBasicStage`` (3 blocks): W1 = block 0's conv1, P2 = block 0's conv2
    (its first child replaces block 0's second conv), P3 = block 1's conv2 (its child replaces block 1's conv1, whose
    kernel is dropped: that is the sharing). The middle block (child of P2, then P2 again) is the added depth."""
    return {f"{stage}.conv1": f"{stage}.0.conv1", f"{stage}.bn1": f"{stage}.0.bn1",
            f"{stage}.downsample.0": f"{stage}.0.downsample.0", f"{stage}.downsample.1": f"{stage}.0.downsample.1",
            f"{stage}.bns.0": f"{stage}.0.bn2", f"{stage}.conv2": f"{stage}.0.conv2",
            f"{stage}.bns.2": f"{stage}.1.bn1", f"{stage}.conv3": f"{stage}.1.conv2", f"{stage}.bn3": f"{stage}.1.bn2"}


def _plain(ours: str, theirs: str) -> dict[str, str]:
    out = {f"{ours}.layers.{n}": f"{theirs}.{n}" for n in _CONV_BN}
    out.update({f"{ours}.downsample.conv": f"{theirs}.downsample.0", f"{ours}.downsample.bn": f"{theirs}.downsample.1"})
    return out


def _child(ours: str, theirs: str) -> dict[str, str]:
    """A child bottleneck keeps its own 1x1 convs and BNs; its 3x3 is the parent's (the source's is dropped)."""
    return {f"{ours}.half1.conv1": f"{theirs}.conv1", f"{ours}.half1.bn1": f"{theirs}.bn1",
            f"{ours}.half2.bn2": f"{theirs}.bn2", f"{ours}.half2.conv3": f"{theirs}.conv3",
            f"{ours}.half2.bn3": f"{theirs}.bn3"}


def resnet_module_map(depth: int) -> dict[str, str]:
    """Our module -> the torchvision / timm ResNet module whose weights it takes (stem, layer1-2 and fc keep names).

    ResNet-50: ``layer3``'s 6 blocks become block0, (child 0, parent 0), (child 1, parent 1), (child 2, parent 2) in
    order; the 7th block (parent 2) is the added depth. ``layer4``'s 3 blocks become block0, child, last block."""
    if depth == 18:
        return {**_basic_stage_map("layer3"), **_basic_stage_map("layer4")}
    out = {**_plain("layer3.block0", "layer3.0"), **_plain("layer4.block0", "layer4.0"),
           **_child("layer4.blocks.0", "layer4.1"), **_plain("layer4.last_block", "layer4.2")}
    for i in range(3):
        out.update(_child(f"layer3.kids.{i}", f"layer3.{2 * i + 1}"))
        if 2 * i + 2 < 6:
            out.update(_plain(f"layer3.parents.{i}", f"layer3.{2 * i + 2}"))
    return out


ADDED_BLOCK_NORMS = {18: ("layer3.bn2", "layer4.bn2"), 50: ("layer3.parents.2.layers.bn3",)}


def _load_mapped(model: nn.Module, source: Mapping[str, Any], mapping: Mapping[str, str], what: str,
                 head: str) -> set[str]:
    """Load every ``model`` entry from the source weight of the module ``mapping`` names (unmapped modules keep their
    names); returns the source keys used. The classifier ``head`` (a module name) keeps its initialisation when its
    size differs from the source's. Raises :class:`UsageError` on any other shape mismatch or when nothing
    matched."""
    target = model.state_dict()
    state, used = {}, set()
    for key in target:
        module, _, leaf = key.rpartition(".")
        src = f"{mapping[module]}.{leaf}" if module in mapping else key
        if src not in source:
            continue
        if tuple(source[src].shape) != tuple(target[key].shape):
            if module == head:  # another number of classes: the new classifier stays at its initialisation
                continue
            raise UsageError(f"source weight {src} has shape {tuple(source[src].shape)}, KernelDNA {what}"
                             f" needs {tuple(target[key].shape)} at {key}: is the source a {what}?")
        state[key] = source[src]
        used.add(src)
    if not used:
        raise UsageError(f"the source is not a torchvision {what} state dict (none of its weight names match)")
    model.load_state_dict(state, strict=False)
    return used


def from_resnet(source: Mapping[str, Any], depth: int = 18, num_classes: int | None = None) -> nn.Module:
    """A KernelDNA ResNet-``depth`` (the official structure: deeper ``layer3`` / ``layer4`` sharing kernels)
    initialised from a torchvision or timm ResNet state dict, ready to fine-tune.

    Every source weight goes to the layer that plays its role (:func:`resnet_module_map`); the added blocks start as
    identities (their last BatchNorm's scale and shift are zero, so ``relu(0 + x) = x`` on the post-ReLU input);
    the static attentions and SE gates keep their initialisation, so the converted network is a starting point for
    fine-tuning, not the source function. Raises :class:`UsageError` when ``source`` is not a ResNet-``depth``."""
    import torch

    from kerneldna.models.resnet import KernelDNAResNet

    classes = num_classes or (source["fc.weight"].shape[0] if "fc.weight" in source else 1000)
    stem = source.get("conv1.weight")
    model = KernelDNAResNet(depth, num_classes=classes, in_chans=stem.shape[1] if stem is not None else 3)
    if not any(k.startswith(("conv1.", "bn1.", "layer")) for k in source):
        raise UsageError(f"the source is not a torchvision/timm ResNet-{depth} state dict (no conv1/layer* weights)")
    _load_mapped(model, source, resnet_module_map(depth), f"ResNet-{depth}", "fc")
    with torch.no_grad():
        for name in ADDED_BLOCK_NORMS[depth]:
            norm = model.get_submodule(name)
            norm.weight.zero_()
            norm.bias.zero_()
    return model


# ----------------------------------------------------------------------------------------------------------
# A pretrained torchvision MobileNetV2 -> KernelDNA MobileNetV2 (the official sharing clusters, same depth)
# ----------------------------------------------------------------------------------------------------------
_IR_LAYERS = {"pw1": "conv.0.0", "bn1": "conv.0.1", "dw": "conv.1.0", "bn2": "conv.1.1", "pw2": "conv.2",
              "bn3": "conv.3"}
_CHILD_LAYERS = {"bn1": "conv.0.1", "dwconv": "conv.1.0", "bn2": "conv.1.1", "bn3": "conv.3"}


def mobilenetv2_module_map() -> dict[str, str]:
    """Our module -> the torchvision ``mobilenet_v2`` module whose weights it takes (unlisted modules keep names).

    Each shared stage (features 4-6, 7-10, 11-13, 14-16) becomes one cluster at its last index: the stage's first
    inverted residual is the transition, the last one the parent whose two pointwise kernels the children share,
    and each block in between a child that keeps its own depthwise conv and BatchNorms; the source child's two
    pointwise kernels are dropped (that is the sharing). The official MobileNetV2 adds no depth."""
    from kerneldna.models.mobilenetv2 import SHARED_STAGES

    out = {}
    for indices in SHARED_STAGES:
        first, last = indices[0], indices[-1]
        out.update({f"features.{last}.transition.layers.{o}": f"features.{first}.{t}" for o, t in _IR_LAYERS.items()})
        out.update({f"features.{last}.last_block.layers.{o}": f"features.{last}.{t}" for o, t in _IR_LAYERS.items()})
        for j, index in enumerate(indices[1:-1]):
            out.update({f"features.{last}.blocks.{j}.{o}": f"features.{index}.{t}" for o, t in _CHILD_LAYERS.items()})
    return out


def from_mobilenetv2(source: Mapping[str, Any], width_mult: float = 1.0, num_classes: int | None = None) -> nn.Module:
    """A KernelDNA MobileNetV2 (``width_mult`` 1.0 or 0.5, the official clusters) initialised from a torchvision
    ``mobilenet_v2`` state dict, ready to fine-tune (:func:`mobilenetv2_module_map` says which weight goes where).

    Every static weight of the KernelDNA model equals its source weight; the static attentions (zero: each child
    starts with its parent's pointwise kernels) and SE gates keep their initialisation, so as for the ResNets the
    result is a starting point for fine-tuning, not the source function."""
    from kerneldna.models.mobilenetv2 import KernelDNAMobileNetV2

    what = f"MobileNetV2 {width_mult:g}x"
    if not any(k.startswith("features.") for k in source):
        raise UsageError(f"the source is not a torchvision {what} state dict (no features.* weights; timm's "
                         "mobilenetv2 names its layers differently)")
    classes = num_classes or (source["classifier.1.weight"].shape[0] if "classifier.1.weight" in source else 1000)
    stem = source.get("features.0.0.weight")
    model = KernelDNAMobileNetV2(width_mult, num_classes=classes, in_chans=stem.shape[1] if stem is not None else 3)
    _load_mapped(model, source, mobilenetv2_module_map(), what, "classifier.1")
    return model


CONVERTIBLE = {"resnet18": 18, "resnet50": 50, "mobilenetv2_100": 1.0, "mobilenetv2_050": 0.5}


def from_pretrained(source: Mapping[str, Any], arch: str, num_classes: int | None = None) -> nn.Module:
    """``kerneldna convert``: a torchvision (or timm, ResNets) state dict of ``arch`` -> the KernelDNA ``arch``."""
    if arch not in CONVERTIBLE:
        raise UsageError(f"--arch must be one of {', '.join(CONVERTIBLE)}, not {arch!r}")
    if arch.startswith("resnet"):
        return from_resnet(source, int(CONVERTIBLE[arch]), num_classes)
    return from_mobilenetv2(source, float(CONVERTIBLE[arch]), num_classes)
