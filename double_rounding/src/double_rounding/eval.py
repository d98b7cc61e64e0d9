"""Evaluation from the one int8 file: any bit-width or any per-layer mixed configuration.

Nothing but the artefact is read: the architecture is rebuilt from its ``meta``, every tensor the forward
pass reads comes from the file (the quantised layers' weights are de-quantised from the int8 codes after the
integer shift), so the accuracy measured here is the accuracy of what is deployed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.quant import apply_codes, check_bits, load_dequantized, load_int8
from torch import nn

from double_rounding.models import ModelConfig, build_quant_model
from double_rounding.train import evaluate


def model_from_artefact(artefact: Mapping[str, Any], expect: ModelConfig | None = None) -> nn.Module:
    """A fresh switchable model with the file's architecture (no weights loaded yet)."""
    meta = artefact.get("meta", {})
    if "model" not in meta:
        raise UsageError("the int8 file has no architecture record (meta.model); export it with this project")
    cfg = ModelConfig(**meta["model"])
    if expect is not None and (expect.arch, expect.num_classes, expect.width) != (cfg.arch, cfg.num_classes,
                                                                                  cfg.width):
        raise UsageError(f"the int8 file holds a {cfg.arch} (width {cfg.width}, {cfg.num_classes} classes), not the "
                         f"{expect.arch} (width {expect.width}, {expect.num_classes} classes) of the config")
    graph = artefact["graph"]
    return build_quant_model(cfg, graph["bits"], graph["tie_mode"], graph["bn_mode"],
                             weight_scales=graph.get("weight_scales", "shared"))


def parse_config(text: str, layers: list[str]) -> int | dict[str, int]:
    """``"4"`` (uniform), a JSON object ``{"layer": bits}``, a JSON list of bits in layer order, or a path to
    a JSON file holding either."""
    text = text.strip()
    if text.isdigit():
        return check_bits(int(text))
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"cannot read bit configuration {text[:60]!r}; give a bit-width (e.g. 4), a JSON "
                         "object {layer: bits} or a JSON list of one bit-width per quantised layer") from None
    if isinstance(value, int):
        return check_bits(value)
    if isinstance(value, list):
        if len(value) != len(layers):
            raise UsageError(f"the bit list has {len(value)} entries; the model has {len(layers)} quantised layers")
        value = dict(zip(layers, value))
    if not isinstance(value, dict):
        raise UsageError("a bit configuration must be an int, a list or an object")
    return {str(k): int(v) for k, v in value.items()}


def evaluate_int8(artefact: Mapping[str, Any], loader: Iterable, configs: Iterable[int | Mapping[str, int]],
                  device: torch.device | str = "cpu", expect: ModelConfig | None = None) -> list[dict[str, Any]]:
    """Accuracy of each configuration, every one derived from the same int8 codes."""
    model = model_from_artefact(artefact, expect)
    rows = []
    loaded = False
    for config in configs:
        if not loaded:
            load_dequantized(model, artefact, config)
            model.to(device)
            loaded = True
        else:
            apply_codes(model, artefact, config)
        metrics = evaluate(model, loader, device=torch.device(device))
        rows.append({"config": config if isinstance(config, int) else dict(config), **metrics})
    return rows


def load_artefact(path: str | Path) -> dict[str, Any]:
    return load_int8(path)
