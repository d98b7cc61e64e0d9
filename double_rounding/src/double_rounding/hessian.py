"""Per-layer Hessian traces by Hutchinson's estimator (HAWQ-V2), the sensitivity signal of HASB and the ILP.

``Tr(H_l) = E_v[v_l^T (H v)_l]`` with Rademacher ``v`` drawn jointly over all layers: one Hessian-vector
product (double back-propagation) per probe gives every layer's estimate at once; the cross-layer terms have
zero mean. The loss is the mean cross-entropy over the calibration images (the paper: ~1000 training
images of the FP32 model); batches are processed one at a time and their Hessian-vector products averaged,
so the trace refers to the loss over all the images, however they are batched. Probe vectors are regenerated
from a per-probe seed, so memory does not grow with the number of probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, object], Tensor]


@dataclass
class TraceResult:
    traces: dict[str, float]  # mean over probes of v_l^T H_ll v_l (the per-layer trace estimate)
    stderr: dict[str, float]  # standard error of that mean
    probes: int
    images: int

    def as_dict(self) -> dict:
        return {"traces": self.traces, "stderr": self.stderr, "probes": self.probes, "images": self.images}


def _rademacher(shapes: list[torch.Size], seed: int, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 2, s, generator=gen) * 2 - 1).to(device=device, dtype=torch.float32) for s in shapes]


def hutchinson_traces(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Iterable[object],
    loss_fn: LossFn,
    probes: int = 100,
    seed: int = 0,
    batch_size_of: Callable[[object], int] = lambda b: len(b[0]),
) -> TraceResult:
    """Estimate ``Tr(d^2 L / d W_l^2)`` for every named parameter in ``params`` (e.g. each conv weight).

    ``loss_fn(model, batch)`` must return the *mean* loss over the batch; batches are weighted by size.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    device = tensors[0].device
    shapes = [p.shape for p in tensors]
    batches = list(batches)
    total = sum(batch_size_of(b) for b in batches)
    quad = torch.zeros(probes, len(names), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            weight = batch_size_of(batch) / total
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            for k in range(probes):
                vs = _rademacher(shapes, seed * 100003 + k, device)
                hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
                for j, (v, hv) in enumerate(zip(vs, hvs)):
                    quad[k, j] += weight * float((v * hv).sum())
            del grads, loss
    finally:
        model.train(was_training)
    mean = quad.mean(0)
    stderr = quad.std(0, unbiased=True) / probes**0.5 if probes > 1 else torch.zeros_like(mean)
    return TraceResult({n: float(mean[j]) for j, n in enumerate(names)},
                       {n: float(stderr[j]) for j, n in enumerate(names)}, probes, total)
