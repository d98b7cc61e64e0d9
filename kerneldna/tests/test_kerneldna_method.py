"""The child convolution: gate-the-input == per-sample kernel == grouped conv, fold, zero-init, shared grads."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from kerneldna.kerneldna import (
    FILTER_FIRST,
    SPATIAL_FIRST,
    ChildConv2d,
    SEGate,
    fold_model,
    grouped_batch_conv,
    modulate_kernel,
    per_sample_kernel_conv,
)
from kerneldna.models import build_model
from kerneldna.models.resnet import SharedBasicStage
from torch import nn


def _randomise_static(model: nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "static_" in name:
                p.normal_(0, scale)


def test_gated_input_equals_per_sample_kernel_and_grouped_conv_float64():
    torch.manual_seed(0)
    parent = nn.Conv2d(6, 5, 3, padding=1, bias=False).double()
    child = ChildConv2d(parent).double()
    _randomise_static(child)
    x = torch.randn(4, 6, 9, 7, dtype=torch.float64) + 3 * torch.randn(4, 6, 1, 1, dtype=torch.float64)
    child.eval()
    gate = child.gate.gate(x)
    kernel = child.compute_child_kernels()[0]
    ours = child(x)
    loop = per_sample_kernel_conv(x, kernel, gate, padding=1)
    grouped = grouped_batch_conv(x, kernel, gate, padding=1)
    assert (ours - loop).abs().max() < 1e-12
    assert (ours - grouped).abs().max() < 1e-12
    # and the gate really varies per sample (otherwise the identity would be trivial)
    assert (gate[0] - gate[1]).abs().max() > 1e-3


def test_modulate_kernel_is_the_factored_product_and_orders_agree():
    torch.manual_seed(1)
    p = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    f, s = torch.randn(4, 1, 1, 1, dtype=torch.float64), torch.randn(1, 1, 3, 3, dtype=torch.float64)
    expected = torch.einsum("oiuv,o,uv->oiuv", p, 1 + f.flatten(), 1 + s[0, 0])
    for order in (FILTER_FIRST, SPATIAL_FIRST):
        assert torch.allclose(modulate_kernel(p, f, s, order), expected, atol=1e-14)
    with pytest.raises(ValueError):
        modulate_kernel(p, f, s, "sideways")


def test_zero_init_child_kernel_is_the_parent_bit_for_bit_and_gate_one_gives_parent_output():
    parent = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    child = ChildConv2d(parent, dynamic=False)
    assert torch.equal(child.compute_child_kernels()[0], parent.weight)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(child(x), parent(x))
    stage = SharedBasicStage(4, 8, stride=2, downsample=nn.Conv2d(4, 8, 1, 2, bias=False))
    k0, k1, k2 = stage.compute_child_kernels()
    assert torch.equal(k0, stage.conv2.weight) and torch.equal(k1, stage.conv2.weight)
    assert torch.equal(k2, stage.conv3.weight)


def _randomise_bn_stats(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)


@pytest.mark.parametrize("arch", ["mini", "resnet18", "resnet50", "mobilenetv2_050"])
def test_fold_equivalence_and_constant_kernels(arch):
    torch.manual_seed(2)
    kw = {"widths": (8, 16, 16), "in_chans": 3, "num_classes": 5} if arch == "mini" else {"num_classes": 7}
    model = build_model(arch, "kerneldna", **kw).double()
    _randomise_static(model)
    _randomise_bn_stats(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32) if arch == "mini" else torch.randn(2, 3, 64, 64)
    x = x.double()
    with torch.no_grad():
        reference = model(x)
        fold_model(model)
        folded = model(x)
    # the folded kernels are the same tensors; the fused gate differs only by float rounding
    assert (reference - folded).abs().max() <= 1e-10 * reference.abs().max()
    folded_bufs = [n for n, _ in model.named_buffers() if "folded_kernel" in n]
    assert folded_bufs and not any("folded" in k for k in model.state_dict())
    # the folded kernels are constants: changing a static attention no longer changes the output
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "static_" in n).add_(1.0)
        assert torch.equal(model(x), folded)
    model.train()  # back to training: stale constants are dropped
    assert not any("folded" in n for n, _ in model.named_buffers())


def test_fold_of_static_children_is_bit_exact():
    torch.manual_seed(5)
    model = build_model("resnet18", "static_only", num_classes=3)
    _randomise_static(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(fold_model(model)(x), reference)


def test_fused_se_gate_equals_the_training_form_in_eval():
    torch.manual_seed(6)
    gate = SEGate(24, reduction=4).double()
    _randomise_bn_stats(gate)
    gate.eval()
    x = torch.randn(3, 24, 5, 5, dtype=torch.float64) + torch.randn(3, 24, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        reference = gate(x)
        gate.fold()
        assert (gate(x) - reference).abs().max() < 1e-12
    gate.train()
    assert not gate.is_folded


def test_folded_child_traces_with_constant_weights():
    parent = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    model = nn.Sequential(parent, ChildConv2d(parent, parent_name="0"))
    fold_model(model)
    graph = str(torch.fx.symbolic_trace(model).graph)
    assert "folded_kernel0" in graph and "static_filter_attn" not in graph


def test_shared_parent_gradient_is_the_sum_over_its_uses():
    torch.manual_seed(3)
    model = build_model("mini", "kerneldna", widths=(4, 8, 8), in_chans=1, num_classes=3).double()
    _randomise_static(model)
    x, y = torch.randn(4, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    stage = model.layer2
    shared_grad = stage.conv2.weight.grad.clone()

    # the same network where every use of P2 reads its own detached leaf copy
    clone = copy.deepcopy(model)
    clone.zero_grad()
    stage2 = clone.layer2
    copies = [stage2.conv2.weight.detach().clone().requires_grad_(True) for _ in range(3)]
    original_compute = stage2.compute_child_kernels

    def kernels_from_copies():
        k = original_compute()
        return [copies[0] * (1 + stage2.static_spatial_attn[0]) * (1 + stage2.static_filter_attn[0]),
                copies[1] * (1 + stage2.static_spatial_attn[1]) * (1 + stage2.static_filter_attn[1]), k[2]]

    stage2.compute_child_kernels = kernels_from_copies
    F.cross_entropy(clone(x), y).backward()
    manual = stage2.conv2.weight.grad + copies[0].grad + copies[1].grad
    assert torch.allclose(shared_grad, manual, atol=1e-12)
    assert copies[0].grad.abs().sum() > 0


def test_unique_parameter_count_counts_shared_kernels_once():
    parent = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    model = nn.Sequential(parent, ChildConv2d(parent, gate_reduction=4), ChildConv2d(parent, dynamic=False))
    se = 8 * 2 + 2 * 2 + 2 * 8 + 8  # fc1, bn, fc2 (+bias)
    static = 8 + 9
    expected = 8 * 8 * 9 + (static + se) + static
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len(model.state_dict()) == len(list(model.parameters())) + 3  # + SE BN running stats


def test_batch_independence_in_eval():
    torch.manual_seed(4)
    model = build_model("mini", "kerneldna", widths=(8, 16, 16), in_chans=3, num_classes=4)
    model.train()
    model(torch.randn(8, 3, 16, 16))  # move BN statistics away from their init
    model.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_se_gate_shapes_and_range():
    gate = SEGate(16, reduction=4).eval()
    g = gate.gate(torch.randn(3, 16, 5, 5))
    assert g.shape == (3, 16, 1, 1) and bool(((g > 0) & (g < 1)).all())
    with pytest.raises(ValueError):
        SEGate(2, reduction=4)


def test_child_requires_a_plain_conv_parent():
    with pytest.raises(TypeError):
        ChildConv2d(nn.ConvTranspose2d(4, 4, 3))
