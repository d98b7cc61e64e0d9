"""The pipeline's stages as ``double_rounding train`` and ``double_rounding hessian`` run them: FP32 training, the
multi-precision model, the mixed-precision SuperNet, and the Hessian traces the SuperNet's sampler and the ILP use.

One function per command, called by the CLI (one process or a ``torchrun`` job) and, in the same process, by
``reproduce --scale full`` (:mod:`double_rounding.full`), so that both run a stage the same way. Layout under
``out``: ``fp32/fp32.pt``, ``multi/model.int8.pt``, ``hessian/traces.json``, ``supernet/model.int8.pt``, each
stage resuming from its ``<stage>/last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.quant import to_transitional
from effrepro.report import atomic_write_text
from effrepro.train import DistInfo, load_checkpoint, load_state_dict_checked, seed_everything

from double_rounding.config import Config
from double_rounding.data import build_loaders, calibration_batch
from double_rounding.double_rounding import BitSampler
from double_rounding.mixed import compute_traces
from double_rounding.models import build_float_model, build_quant_model
from double_rounding.train import export_model, first_batches, quant_model_from_fp32, train_fp32, train_quantized

STAGES = ("fp32", "multi", "supernet")


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A model state dict from a plain state-dict file (e.g. torchvision's .pth) or a checkpoint with ``model``."""
    obj = load_checkpoint(path, expect=("train-state", "state-dict"))
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no {what} state dict")
    return state


def read_traces(path: Path) -> dict[str, float]:
    """Per-layer Hessian traces from a ``traces.json`` written by :func:`hessian_stage`."""
    if not path.is_file():
        raise UsageError(f"Hessian traces not found at {path}; run `double_rounding hessian` first or pass --traces")
    try:
        data = json.loads(path.read_text())
        traces = data.get("traces", data) if isinstance(data, dict) else None
        if not isinstance(traces, dict):
            raise ValueError("not an object of layer -> trace")
        return {str(k): float(v) for k, v in traces.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a Hessian traces file ({exc}); write one with `double_rounding hessian`"
                         ) from None


def run_stage(cfg: Config, stage: str, out: Path, dist: DistInfo, init: Path | None = None,
              traces_path: Path | None = None, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Train ``stage`` into ``out/<stage>`` (resuming from its ``last.pt``); rank 0 writes the stage's file.

    ``init``: the start weights (default: the previous stage in ``out``). The random streams are re-seeded with
    ``cfg.seed`` first, so every call starts from the same state whatever ran before in this process.
    """
    seed_everything(cfg.seed)
    train_loader, _ = build_loaders(cfg.data, dist, cfg.seed)
    stage_dir = out / stage
    if stage == "fp32":
        model, result = train_fp32(cfg, train_loader, stage_dir, dist, progress=progress, resume=resume)
        if dist.is_main:
            torch.save(model.state_dict(), stage_dir / "fp32.pt")
    elif stage == "multi":
        init = init or out / "fp32" / "fp32.pt"
        calib = calibration_batch(train_loader, cfg.quant.calib_images)
        model = quant_model_from_fp32(cfg, read_state_dict(init, "FP32"), cfg.quant.bits, cfg.quant.tie_mode, calib,
                                      device=dist.device)
        result = train_quantized(cfg, model, cfg.multi, train_loader, stage_dir, dist, "multi", progress=progress,
                                 resume=resume)
        if dist.is_main:
            export_model(model, cfg, stage_dir / "model.int8.pt", cfg.multi.train_bits or cfg.quant.bits)
    elif stage == "supernet":
        init = init or out / "multi" / "last.pt"
        traces = read_traces(traces_path or out / "hessian" / "traces.json") if cfg.mixed.sampler == "hasb" else None
        model = build_quant_model(cfg.model, cfg.quant.bits, cfg.quant.tie_mode,
                                  float_model=build_float_model(cfg.model))
        load_state_dict_checked(model, read_state_dict(init, "multi-precision"),
                                f"the multi-precision checkpoint {init}")
        to_transitional(model)
        sampler = BitSampler(model.quant_graph.layers, cfg.quant.bits, traces, cfg.mixed.sampler)
        result = train_quantized(cfg, model.to(dist.device), cfg.supernet, train_loader, stage_dir, dist, "supernet",
                                 sampler=sampler, progress=progress, resume=resume)
        if dist.is_main:
            export_model(model, cfg, stage_dir / "model.int8.pt", cfg.quant.bits, {"sampler": cfg.mixed.sampler})
    else:
        raise UsageError(f"stage {stage!r}: use one of {', '.join(STAGES)}")
    return result


def hessian_stage(cfg: Config, out: Path, dist: DistInfo, init: Path | None = None) -> dict[str, Any]:
    """Per-layer Hutchinson traces of the FP32 model (``init``, default ``out/fp32/fp32.pt``) over the first
    ``mixed.hessian_images`` training images; rank 0 writes ``out/hessian/traces.json``."""
    seed_everything(cfg.seed)
    init = init or out / "fp32" / "fp32.pt"
    model = build_float_model(cfg.model)
    load_state_dict_checked(model, read_state_dict(init, "FP32"), f"the FP32 checkpoint {init}")
    data = dataclasses.replace(cfg.data, batch_size=cfg.mixed.hessian_batch)
    train_loader, _ = build_loaders(data, dist, cfg.seed)
    batches = first_batches(train_loader, max(1, -(-cfg.mixed.hessian_images // cfg.mixed.hessian_batch)))
    result = compute_traces(cfg, model, batches, dist.device).as_dict()
    if dist.is_main:
        atomic_write_text(out / "hessian" / "traces.json", json.dumps(result, indent=1, default=str))
    return result
