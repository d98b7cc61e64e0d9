"""``double_rounding reproduce --scale full``: the paper's pipeline on your data, one process.

FP32 model (trained, or ``--init`` weights such as torchvision's) -> joint multi-precision training of each arm
in ``plan.full_arms`` from that one FP32 start -> every precision evaluated from the arm's exported file.
Arms: ``ours`` (double rounding from one shared ``s_h``, the int8 file) and ``ours_unshared`` (the paper's
"Ours*": one learnable weight step per precision; its file holds one code set per precision). Claims: each
precision of ``ours`` minus the FP32 model, and Ours* minus ours at w2 / w4, paired over the test images
(t-interval of the per-image differences). Each stage resumes from its ``last.pt`` under ``runs/``; for several
GPUs run the same stages with ``torchrun ... double_rounding train`` (``--set quant.weight_scales=unshared`` for
Ours*, see the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from effrepro import stats
from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.quant import apply_codes, load_dequantized, load_int8
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Results
from effrepro.train import dist_setup, load_checkpoint, seed_everything
from torch import nn

from double_rounding.config import Config
from double_rounding.data import build_loaders, calibration_batch
from double_rounding.eval import model_from_artefact
from double_rounding.models import build_float_model
from double_rounding.reproduce_report import PAPER_UNSHARED, half_gain
from double_rounding.train import export_model, quant_model_from_fp32, train_fp32, train_quantized

FULL_ARMS = ("ours", "ours_unshared")
RUN_DIR = {"ours": "multi", "ours_unshared": "multi_unshared"}
FULL_CLAIMS = [
    # every precision of the trained int8 file against the FP32 model, paired over test images
    *[ClaimSpec(id=f"full_w{b}_minus_fp32", description=f"top-1 at w{b}a{b} from the int8 file minus the FP32 "
                "model, paired over test images", paper=round(p - 69.76, 2), unit="top-1 points",
                baseline="FP32 model", expect=">= -1.0" if b > 2 else ">= -4.0")
      for b, p in ((8, 70.74), (6, 70.71), (4, 70.43), (2, 66.35))],
    *[ClaimSpec(id=f"full_unshared_minus_shared_w{b}", description=f"top-1 at w{b}a{b}: Ours* (unshared weight steps) "
                "minus the shared-scale joint model, each from its own file, paired over test images; also fails "
                f"below half the paper's gain ({half_gain(PAPER_UNSHARED[b])} points; ResNet-50 {{4,3,2}}, Table 2)",
                paper=round(PAPER_UNSHARED[b], 2), unit="top-1 points", baseline="shared-scale joint model",
                expect=f"> 0, fails below {half_gain(PAPER_UNSHARED[b])}") for b in (2, 4)],
]
FULL_FACTS = [
    *[FactSpec(id=f"full_top1_w{b}", description=f"top-1 at w{b}a{b} from the int8 file (full scale)", unit="%",
               exact=False) for b in (8, 6, 4, 2)],
    FactSpec(id="full_fp32_top1", description="FP32 model top-1 (full scale)", unit="%", exact=False),
    *[FactSpec(id=f"full_unshared_top1_w{b}", description=f"Ours* (unshared weight steps) top-1 at w{b}a{b} from its "
               "file (full scale)", unit="%", exact=False) for b in (8, 6, 4, 2)],
]


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


def _train_arm(cfg: Config, arm: str, state: dict[str, torch.Tensor], calib: torch.Tensor, train_loader: Any,
               ctx: Context, dist: Any) -> Path:
    """Joint multi-precision training of one arm from the FP32 ``state``; the path of its exported file."""
    cfg.quant.weight_scales = "unshared" if arm == "ours_unshared" else "shared"
    out = ctx.runs / RUN_DIR[arm]
    model = quant_model_from_fp32(cfg, state, cfg.quant.bits, cfg.quant.tie_mode, calib, device=dist.device)
    train_quantized(cfg, model, cfg.multi, train_loader, out, dist, "multi", progress=True)
    return export_model(model, cfg, out / "model.int8.pt", list(cfg.multi.train_bits or cfg.quant.bits))


def _hits_per_bit(path: Path, cfg: Config, bits: list[int], test_loader: Any, device: torch.device
                  ) -> dict[int, list[float]]:
    artefact = load_int8(path)
    switched = model_from_artefact(artefact, cfg.model)
    per_bit = {}
    for index, b in enumerate(bits):
        (load_dequantized if index == 0 else apply_codes)(switched, artefact, b)
        per_bit[b] = correct_per_image(switched.to(device), test_loader, device)
    return per_bit


def run_full(plan: Any, ctx: Context) -> Results:
    unknown = sorted(set(plan.full_arms) - set(FULL_ARMS))
    if unknown or "ours" not in plan.full_arms:
        raise UsageError(f"full_arms {list(plan.full_arms)}: give 'ours' and optionally 'ours_unshared' (unknown: "
                         f"{unknown})")
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
    calib = calibration_batch(train_loader, cfg.quant.calib_images)
    paths = {}
    for arm in (a for a in FULL_ARMS if a in plan.full_arms):
        with ctx.stage(RUN_DIR[arm]):
            seed_everything(cfg.seed)  # both arms start from the same state of the random streams
            paths[arm] = _train_arm(cfg, arm, state, calib, train_loader, ctx, dist)
    with ctx.stage("eval"):
        fp32 = build_float_model(cfg.model)
        fp32.load_state_dict(state)
        reference = correct_per_image(fp32.to(dist.device), test_loader, dist.device)
        hits = {arm: _hits_per_bit(path, cfg, bits, test_loader, dist.device) for arm, path in paths.items()}
    per_bit = hits["ours"]
    estimates = {f"full_w{b}_minus_fp32": _scaled(stats.paired_diff(h, reference, bits=b))
                 for b, h in per_bit.items() if b in (8, 6, 4, 2)}
    facts: dict[str, Any] = {f"full_top1_w{b}": 100 * sum(h) / len(h) for b, h in per_bit.items() if b in (8, 6, 4, 2)}
    facts["full_fp32_top1"] = 100 * sum(reference) / len(reference)
    if "ours_unshared" in hits:
        unshared = hits["ours_unshared"]
        estimates |= {f"full_unshared_minus_shared_w{b}": _scaled(stats.paired_diff(unshared[b], per_bit[b], bits=b))
                      for b in (2, 4) if b in per_bit}
        facts |= {f"full_unshared_top1_w{b}": 100 * sum(h) / len(h) for b, h in unshared.items() if b in (8, 6, 4, 2)}
    files = ", ".join(f"{arm}: {path}" for arm, path in paths.items())
    return Results(estimates=estimates, facts=facts, notes_md=f"Config {plan.config} with overrides "
                   f"{list(plan.config_overrides)}; FP32 start {init}; arms from the same FP32 start, files {files}.")


def _scaled(estimate: stats.Estimate) -> stats.Estimate:
    """A difference of proportions in top-1 points (x 100)."""
    return stats.Estimate(100 * estimate.value, estimate.n, (100 * estimate.ci[0], 100 * estimate.ci[1]),
                          estimate.method, estimate.details)
