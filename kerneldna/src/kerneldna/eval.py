"""Evaluation: top-1 / top-5 / loss, exact under DDP (loading a trained checkpoint: ``train.load_trained``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over every sample of ``loader``.

    Under DDP each rank sees a disjoint shard; the sums are all-reduced, so each sample counts exactly once.
    BatchNorm statistics are first broadcast from rank 0 (DDP only syncs them at the start of a training
    forward, so after the last step each rank holds slightly different ones): the result then equals a
    single-process evaluation of the checkpoint rank 0 writes.
    """
    distributed = torch_dist.is_available() and torch_dist.is_initialized()
    if distributed:
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=0)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        sums += torch.stack([hits[:, 0].sum(), hits.any(1).sum(),
                             F.cross_entropy(logits, labels, reduction="sum"),
                             torch.tensor(len(labels), device=device)]).double()
    if distributed:
        torch_dist.all_reduce(sums)
    model.train(was_training)
    count = max(sums[3].item(), 1.0)
    return {"top1": 100.0 * sums[0].item() / count, "top5": 100.0 * sums[1].item() / count,
            "loss": sums[2].item() / count, "count": int(sums[3].item())}
