"""CondConv and ODConv peers: their grouped-conv execution equals an explicit per-sample loop (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kerneldna.dynamic import CondConv, ODConv2d


def test_condconv_grouped_equals_per_sample_mixture():
    torch.manual_seed(0)
    layer = CondConv(6, 5, 3, stride=2, num_experts=3).double().eval()
    x = torch.randn(4, 6, 9, 9, dtype=torch.float64)
    routing = torch.sigmoid(layer.routing_fn(x.mean((2, 3))))
    experts = layer.conv.weight.view(3, 5, 6, 3, 3)
    loop = torch.cat([F.conv2d(x[b:b + 1], torch.einsum("e,eoikl->oikl", routing[b], experts), stride=2, padding=1)
                      for b in range(4)])
    assert (layer(x) - loop).abs().max() < 1e-12


@pytest.mark.parametrize("kernel_size,kernel_num", [(3, 1), (3, 4), (1, 1), (1, 2)])
def test_odconv_equals_explicit_per_sample_kernel(kernel_size, kernel_num):
    torch.manual_seed(1)
    layer = ODConv2d(8, 6, kernel_size, stride=1, kernel_num=kernel_num, min_channel=4).double().eval()
    x = torch.randn(3, 8, 7, 7, dtype=torch.float64) + torch.randn(3, 8, 1, 1, dtype=torch.float64)
    channel, filt, spatial, kernel = layer.attentions(x)
    outs = []
    for b in range(3):
        w = layer.weight  # [N, O, I, k, k]
        if spatial is not None:
            w = w * spatial[b, 0]
        w = (w * kernel[b]).sum(0) if kernel is not None else w[0]
        w = w * channel[b].reshape(1, -1, 1, 1) * filt[b].reshape(-1, 1, 1, 1)
        outs.append(F.conv2d(x[b:b + 1], w, padding=kernel_size // 2))
    assert (layer(x) - torch.cat(outs)).abs().max() < 1e-12


@pytest.mark.parametrize("layer", [CondConv(4, 4, 3), ODConv2d(4, 4, 3, kernel_num=2, min_channel=4)])
def test_dynamic_layers_are_batch_independent_in_eval(layer):
    layer.eval()
    x = torch.randn(5, 4, 6, 6)
    with torch.no_grad():
        batch = layer(x)
        single = torch.cat([layer(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_condconv_expertwise_form_is_the_same_function_and_gradient():
    torch.manual_seed(2)
    grouped = CondConv(6, 5, 3, stride=2, bias=True, num_experts=3).double()
    expertwise = CondConv(6, 5, 3, stride=2, bias=True, num_experts=3, expertwise=True).double()
    expertwise.load_state_dict(grouped.state_dict())
    x = torch.randn(4, 6, 9, 9, dtype=torch.float64)
    a, b = grouped(x), expertwise(x)
    assert (a - b).abs().max() < 1e-12
    a.square().sum().backward()
    b.square().sum().backward()
    assert (grouped.conv.weight.grad - expertwise.conv.weight.grad).abs().max() < 1e-10
    expertwise.eval()  # evaluation runs the per-sample kernels (the deployment form): same outputs
    assert (expertwise(x) - grouped(x)).abs().max() < 1e-12
    with pytest.raises(ValueError, match="groups=1"):
        CondConv(4, 4, 3, groups=2, expertwise=True)
