"""The DPConv workflow's file: the per-layer split a DPConv search learnt, saved as JSON and read back as the
``layer_n_div`` of a PATConv model (fixed splits) that is then retrained.

1. search: ``partialnet train --model partialnet_t2 --set model_kwargs.dynamic_split=true`` trains every mixer as a
   DPConv under the budget term and writes ``<out>/splits.json`` (rank 0) next to ``last.pt``;
2. retrain: ``partialnet train --model partialnet_t2 --set splits=<out>/splits.json`` builds the PATConv model with
   each block's learnt split (``layer_n_div``, stored in the new run's config so ``eval`` rebuilds it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from torch import nn

from partialnet.models import dpconv_layers

KIND = "partialnet-dpconv-splits"


def splits_document(model: nn.Module, model_name: str) -> dict[str, Any]:
    """Per DPConv layer (block order): width, convolved channels and split divisor ``n_div = dim / dim_conv``."""
    layers = dpconv_layers(model)
    if not layers:
        raise UsageError(f"{model_name} has no DPConv layers: search with --set model_kwargs.dynamic_split=true")
    rows = [{"block": i, "dim": m.dim, "dim_conv": m.dim_conv, "n_div": m.split_divisor} for i, m in enumerate(layers)]
    return {"kind": KIND, "model": model_name, "layers": rows}


def save_splits(model: nn.Module, model_name: str, path: str | Path) -> Path:
    from effrepro.report import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(splits_document(model, model_name), indent=2) + "\n")
    return path


def load_splits(path: str | Path, model_name: str | None = None) -> list[int]:
    """``layer_n_div`` from a splits file; a missing or malformed file, or one searched on another model, is an
    error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"splits file {path} not found (a DPConv search writes <out>/splits.json)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"splits file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("layers"), list):
        raise UsageError(f"{path} is not a DPConv splits file (kind {KIND!r} with a 'layers' list)")
    if model_name is not None and doc.get("model") != model_name:
        raise UsageError(f"splits file {path} was searched on {doc.get('model')}, not {model_name}")
    divs = []
    for row in doc["layers"]:
        dim, n_div = (row.get(k) if isinstance(row, dict) else None for k in ("dim", "n_div"))
        if not (isinstance(dim, int) and isinstance(n_div, int) and 1 <= n_div <= dim and dim % n_div == 0):
            raise UsageError(f"splits file {path}: layer {row!r} needs integers dim and n_div with n_div dividing dim")
        divs.append(n_div)
    return divs
