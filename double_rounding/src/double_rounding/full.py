"""``double_rounding reproduce --scale full``: the paper's pipeline on your data, one process.

FP32 model (trained, or ``--init`` weights such as torchvision's) -> joint {8,6,4,2} multi-precision training
-> every precision evaluated from the exported int8 file. Claims: each precision minus the FP32 model, paired
over the test images (t-interval of the per-image differences). Each stage resumes from its ``last.pt`` under
``runs/``; for several GPUs run the same stages with ``torchrun ... double_rounding train`` (see the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from effrepro import stats
from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.quant import apply_codes, load_dequantized, load_int8
from effrepro.reproduce import Context, Results
from effrepro.train import dist_setup, load_checkpoint, seed_everything
from torch import nn

from double_rounding.config import Config
from double_rounding.data import build_loaders, calibration_batch
from double_rounding.eval import model_from_artefact
from double_rounding.models import build_float_model
from double_rounding.train import export_model, quant_model_from_fp32, train_fp32, train_quantized


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: Any, device: torch.device) -> list[float]:
    """1.0 / 0.0 per test image: whether the top-1 prediction is right (the unit of the paired intervals)."""
    model.eval()
    hits: list[float] = []
    for x, y in loader:
        hits += (model(x.to(device)).argmax(1) == y.to(device)).float().tolist()
    return hits


def _fp32_state(path: Path) -> dict[str, torch.Tensor]:
    obj = load_checkpoint(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no FP32 state dict")
    return state


def run_full(plan: Any, ctx: Context) -> Results:
    cfg = load_config(plan.config, Config, list(plan.config_overrides))
    if cfg.data.dataset == "imagenet":
        from double_rounding.data import imagenet_root

        imagenet_root(cfg.data)  # a clear error before anything runs when the data is missing
    dist = dist_setup(None)
    seed_everything(cfg.seed)
    train_loader, test_loader = build_loaders(cfg.data, dist, cfg.seed)
    init = Path(plan.init) if plan.init else ctx.runs / "fp32" / "fp32.pt"
    if plan.init is None:
        with ctx.stage("fp32"):
            model, _ = train_fp32(cfg, train_loader, ctx.runs / "fp32", dist, progress=True)
            torch.save(model.state_dict(), init)
    state = _fp32_state(init)
    bits = list(cfg.multi.train_bits or cfg.quant.bits)
    with ctx.stage("multi"):
        calib = calibration_batch(train_loader, cfg.quant.calib_images)
        model = quant_model_from_fp32(cfg, state, cfg.quant.bits, cfg.quant.tie_mode, calib, device=dist.device)
        train_quantized(cfg, model, cfg.multi, train_loader, ctx.runs / "multi", dist, "multi", progress=True)
        path = export_model(model, cfg, ctx.runs / "multi" / "model.int8.pt", bits)
    with ctx.stage("eval"):
        fp32 = build_float_model(cfg.model)
        fp32.load_state_dict(state)
        reference = correct_per_image(fp32.to(dist.device), test_loader, dist.device)
        artefact = load_int8(path)
        switched = model_from_artefact(artefact, cfg.model)
        per_bit = {}
        for index, b in enumerate(bits):
            (load_dequantized if index == 0 else apply_codes)(switched, artefact, b)
            per_bit[b] = correct_per_image(switched.to(dist.device), test_loader, dist.device)
    estimates = {f"full_w{b}_minus_fp32": _scaled(stats.paired_diff(hits, reference, bits=b))
                 for b, hits in per_bit.items() if b in (8, 6, 4, 2)}
    facts: dict[str, Any] = {f"full_top1_w{b}": 100 * sum(h) / len(h) for b, h in per_bit.items() if b in (8, 6, 4, 2)}
    facts["full_fp32_top1"] = 100 * sum(reference) / len(reference)
    return Results(estimates=estimates, facts=facts, notes_md=f"Config {plan.config} with overrides "
                   f"{list(plan.config_overrides)}; FP32 start {init}; int8 file {path}.")


def _scaled(estimate: stats.Estimate) -> stats.Estimate:
    """A difference of proportions in top-1 points (x 100)."""
    return stats.Estimate(100 * estimate.value, estimate.n, (100 * estimate.ci[0], 100 * estimate.ci[1]),
                          estimate.method, estimate.details)
