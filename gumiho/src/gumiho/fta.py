"""Full Tree Attention (FTA) exactly as the official code does it (``complete_mask == 1``), and why it is lossy.

``retrieve_indices`` ``R [leaves, D]`` lists one root-to-leaf path of tree node ids per row, ``-1`` padded. For
each of the last ``c`` columns (``c`` = the most ``-1`` any row has, i.e. those of the shortest path), the
official code takes the most frequent node id among the column's real entries (``torch.unique`` + ``argmax``:
ties go to the smaller id) and writes it into every ``-1`` of that column. It also sets
``tree_mask[last real node of each short row, that node] = True``.

What that does (tested in ``test_gumiho_fta.py``):

* The mask edit is a no-op: the target's mask is ``causal AND tree_mask`` and the padded node is deeper, so
  its index is larger than the short row's last node and the causal part already hides it. We therefore only
  pad ``retrieve_indices``.
* Columns are padded independently, so a padded row ``[root, a, b, c*, d*]`` need not be a parent-child chain.
  Verifying ``c*`` against ``argmax(logits at b)`` is exact, but ``d*``, the bonus token after it, the KV
  entries copied for ``c*``/``d*`` and the features handed back to the draft come from nodes computed under
  *their own* ancestors, not under ``a, b``. Greedy output can therefore differ from plain greedy decoding:
  FTA-on decoding is approximate, and ``fta="off"`` is our default.
"""

from __future__ import annotations

import torch

FTA_MODES = ("off", "official")


def fta_pad(retrieve_indices: torch.Tensor) -> torch.Tensor:
    """The official FTA padding of ``retrieve_indices`` (a new tensor; the input is left unchanged)."""
    padded = retrieve_indices.clone()
    missing = padded < 0
    width = int(missing.sum(dim=1).max().item()) if padded.numel() else 0
    columns = padded.shape[1]
    for col in range(columns - width, columns):
        real = padded[:, col][~missing[:, col]]
        if real.numel() == 0:
            continue
        values, counts = torch.unique(real, return_counts=True)  # sorted ids: argmax's first max = smaller id
        padded[:, col] = torch.where(missing[:, col], values[counts.argmax()], padded[:, col])
    return padded


def official_mask_edit(tree_mask: torch.Tensor, retrieve_indices: torch.Tensor) -> torch.Tensor:
    """The official mask edit (kept only to show it is a no-op under the causal mask): a new ``[N, N]`` bool mask."""
    edited = tree_mask.clone().bool()
    padded = fta_pad(retrieve_indices)
    for row, filled in zip(retrieve_indices, padded, strict=True):
        real = row[row >= 0]
        for node in filled[len(real):]:
            edited[real[-1], node] = True
    return edited
