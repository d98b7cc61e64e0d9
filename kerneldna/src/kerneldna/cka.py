"""Linear CKA between layer representations: the cross-layer similarity that motivates kernel sharing.

``CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``X [n, p]``, ``Y [n, q]``,
computed through the n×n Gram matrices so that layers of different widths and resolutions compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` inputs (any trailing shape)."""
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    kx, ky = x @ x.T, y @ y.T
    hsic = (kx * ky).sum()
    return float(hsic / (kx.norm() * ky.norm()).clamp_min(1e-30))


def conv_names(model: nn.Module, prefixes: Sequence[str], kernel_size: int = 3) -> list[str]:
    """The ``kernel_size`` convs inside the modules ``prefixes``, in forward order."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] == kernel_size and n.startswith(tuple(prefixes))]


@torch.no_grad()
def layer_cka_matrix(model: nn.Module, images: Tensor, names: Sequence[str]) -> Tensor:
    """``[L, L]`` linear CKA between the outputs of the named layers on ``images`` (eval mode)."""
    outputs: dict[str, Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: outputs.__setitem__(n, out.detach())) for n in names]
    try:
        model.eval()
        model(images)
    finally:
        for h in hooks:
            h.remove()
    feats = [outputs[n] for n in names]
    size = len(names)
    matrix = torch.eye(size, dtype=torch.float64)
    for i in range(size):
        for j in range(i + 1, size):
            matrix[i, j] = matrix[j, i] = linear_cka(feats[i], feats[j])
    return matrix


def stage_summary(matrix: Tensor, stages: Sequence[str]) -> dict[str, float]:
    """Mean off-diagonal CKA inside stages and across stages (``stages[i]`` = stage of layer ``i``)."""
    within, across = [], []
    for i in range(len(stages)):
        for j in range(i + 1, len(stages)):
            (within if stages[i] == stages[j] else across).append(float(matrix[i, j]))
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {"within_stage": mean(within), "across_stage": mean(across)}


def plot_cka(matrix: Tensor, names: Sequence[str], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from effrepro.report import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="linear CKA")
    return save_figure(fig, path)
