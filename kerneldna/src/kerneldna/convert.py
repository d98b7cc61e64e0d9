"""``convert(model)``: turn chosen convolutions of any torchvision/timm CNN into KernelDNA parent/child groups.

A group is one parent conv (keeps its kernel) and child convs (drop theirs, borrow the parent's through a
:class:`~kerneldna.kerneldna.ChildConv2d`). Children must have the parent's exact kernel shape and groups; they
keep their own stride, padding and bias. Without explicit groups, :func:`auto_share_groups` applies the
official rule stage by stage: among the stride-1 convs of one stage, those of identical shape form a group
whose parent is the *last* one (the official code always shares the kernel of the stage's last block).

Unlike the official ResNet-18 build this is a 1:1 replacement (same depth, same MACs, fewer parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
