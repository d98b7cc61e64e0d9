"""``double_rounding reproduce --scale full``: the paper's pipeline on your data, one process.

FP32 model (trained, or ``--init`` weights such as torchvision's) -> each arm in ``plan.full_arms`` trained from
that one FP32 start (the random streams re-seeded before each) -> every precision evaluated from the arm's
exported file. Arms (trained by :mod:`double_rounding.train`'s functions, with the arm settings of the miniature,
:mod:`double_rounding.miniature`):

* ``ours``: joint multi-precision training, double rounding from one shared ``s_h`` (the int8 file);
* ``ours_unshared``: the paper's "Ours*", one learnable weight step per precision (one code set per precision);
* ``separate``: one LSQ model per precision in ``plan.sep_bits`` (those in the config's bits), ALRS off, with as
  many optimizer steps as the joint run takes in all, as in the miniature: the joint run steps once per
  precision per batch, so each separate model trains ``multi.epochs`` x the number of precisions epochs;
* ``no_alrs``: the joint model with ALRS off (the paper's Table 4 ablation);
* ``kd``: the joint model with ``multi.kd=recursive`` (each lower precision on soft CE against the next higher
  one, Any-Precision's scheme: the paper never specifies its KD, this is our choice).

Claims, paired over the test images (t-interval of the per-image differences): each precision of ``ours``
minus the FP32 model, Ours* minus ours at w2 / w4, ours minus the separate model at each separate precision
(within the paper's ResNet-18 margin), the ALRS gain at w2 and KD minus no KD at w2. Each stage resumes from its
``last.pt`` under ``runs/``; for several GPUs run the same stages with ``torchrun ... double_rounding train`` (see
the README).
"""

from __future__ import annotations

import copy
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
from double_rounding.data import build_loaders, calibration_batch, data_root
from double_rounding.eval import model_from_artefact
from double_rounding.models import build_float_model
from double_rounding.reproduce_report import PAPER_UNSHARED, half_gain
from double_rounding.train import (
    export_model,
    optimizer_steps,
    quant_model_from_fp32,
    train_fp32,
    train_quantized,
)

DEFAULT_FULL_ARMS = ("ours", "ours_unshared")
FULL_ARMS = ("ours", "ours_unshared", "separate", "no_alrs", "kd")
KD_MODE = "recursive"  # the paper's "KD" rows (its KD is unspecified)
RUN_DIR = {"ours": "multi", "ours_unshared": "multi_unshared", "no_alrs": "multi_noalrs", "kd": "multi_kd"}
# ResNet-18 on ImageNet, {8,6,4,2}: Ours (Table 1), Ours with KD (Table 1), Ours w/o ALRS (Table 4), separate LSQ
# models (Table 6)
PAPER_OURS = {8: 70.74, 6: 70.71, 4: 70.43, 2: 66.35}
PAPER_OURS_KD = {2: 66.84}
PAPER_NOALRS = {2: 65.83}
PAPER_LSQ = {8: 71.10, 4: 71.10, 2: 67.60}
FULL_CLAIMS = [
    # every precision of the trained int8 file against the FP32 model, paired over test images
    *[ClaimSpec(id=f"full_w{b}_minus_fp32", description=f"top-1 at w{b}a{b} from the int8 file minus the FP32 "
                "model, paired over test images", paper=round(p - 69.76, 2), unit="top-1 points",
                baseline="FP32 model", expect=">= -1.0" if b > 2 else ">= -4.0")
      for b, p in PAPER_OURS.items()],
    *[ClaimSpec(id=f"full_unshared_minus_shared_w{b}", description=f"top-1 at w{b}a{b}: Ours* (unshared weight steps) "
                "minus the shared-scale joint model, each from its own file, paired over test images; also fails "
                f"below half the paper's gain ({half_gain(PAPER_UNSHARED[b])} points; ResNet-50 {{4,3,2}}, Table 2)",
                paper=round(PAPER_UNSHARED[b], 2), unit="top-1 points", baseline="shared-scale joint model",
                expect=f"> 0, fails below {half_gain(PAPER_UNSHARED[b])}") for b in (2, 4)],
    *[ClaimSpec(id=f"full_joint_minus_separate_w{b}", description=f"top-1 at w{b}a{b}: the one int8 file switched to "
                f"{b} bits minus a separate {b}-bit LSQ model with as many optimizer steps, same FP32 start, paired "
                "over test images; holds within the paper's margin (its ResNet-18 joint minus separate LSQ)",
                paper=round(PAPER_OURS[b] - PAPER_LSQ[b], 2), unit="top-1 points", baseline=f"separate LSQ w{b}a{b}",
                expect=f">= {PAPER_OURS[b] - PAPER_LSQ[b]:.2f}") for b in PAPER_LSQ],
    ClaimSpec(id="full_alrs_gain_w2", description="top-1 at w2a2: the joint model with ALRS minus the same without "
              "ALRS, same FP32 start, paired over test images", paper=round(PAPER_OURS[2] - PAPER_NOALRS[2], 2),
              unit="top-1 points", baseline="joint training without ALRS", expect="> 0"),
    ClaimSpec(id="full_kd_gain_w2", description="top-1 at w2a2: the joint model with recursive KD (each precision "
              "on soft labels of the next higher one; the paper does not specify its KD) minus the same without KD, "
              "paired over test images", paper=round(PAPER_OURS_KD[2] - PAPER_OURS[2], 2), unit="top-1 points",
              baseline="joint training without KD", expect="> 0"),
]
_ARM_FACTS = {"": "the int8 file", "unshared_": "Ours* (unshared weight steps), from its file",
              "noalrs_": "the joint model without ALRS, from its file", "kd_": "the joint model with recursive KD, "
              "from its file"}
FULL_FACTS = [
    *[FactSpec(id=f"full_{k}top1_w{b}", description=f"{what}: top-1 at w{b}a{b} (full scale)", unit="%", exact=False)
      for k, what in _ARM_FACTS.items() for b in (8, 6, 4, 2)],
    FactSpec(id="full_fp32_top1", description="FP32 model top-1 (full scale)", unit="%", exact=False),
    *[FactSpec(id=f"full_separate_top1_w{b}", description=f"separate {b}-bit LSQ model: top-1 (full scale)", unit="%",
               exact=False) for b in PAPER_LSQ],
    FactSpec(id="full_optimizer_steps_joint", description="optimizer steps of one joint run (one per precision per "
             "batch, full scale)", unit="steps"),
    FactSpec(id="full_optimizer_steps_separate", description="optimizer steps of each separate LSQ run (full scale)",
             unit="steps"),
]
_FACT_PREFIX = {"ours": "", "ours_unshared": "unshared_", "no_alrs": "noalrs_", "kd": "kd_"}


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


def arm_config(cfg: Config, arm: str) -> Config:
    """A copy of ``cfg`` with the arm's settings (``sep{b}``: ALRS off, len(bits) x the joint run's epochs)."""
    precisions = len(train_bits(cfg))
    cfg = copy.deepcopy(cfg)
    cfg.quant.weight_scales = "unshared" if arm == "ours_unshared" else "shared"
    if arm == "no_alrs":
        cfg.multi.alrs = "off"
    elif arm == "kd":
        cfg.multi.kd = KD_MODE
    elif arm.startswith("sep"):
        cfg.multi.alrs, cfg.multi.train_bits = "off", None
        cfg.multi.epochs *= precisions
    return cfg


def train_bits(cfg: Config) -> list[int]:
    return list(cfg.multi.train_bits or cfg.quant.bits)


def arm_bits(cfg: Config, arm: str) -> list[int]:
    """The precisions an arm trains and exports: ``sep{b}`` its one, the joint arms the config's."""
    return [int(arm[3:])] if arm.startswith("sep") else train_bits(cfg)


def _train_arm(cfg: Config, arm: str, state: dict[str, torch.Tensor], calib: torch.Tensor, train_loader: Any,
               ctx: Context, dist: Any) -> tuple[Path, int]:
    """Train one arm (``sep{b}``: a separate b-bit model) from the FP32 ``state``: its exported file and its
    optimizer steps."""
    arm_cfg = arm_config(cfg, arm)
    bits = arm_bits(cfg, arm)
    out = ctx.runs / RUN_DIR.get(arm, arm)
    model = quant_model_from_fp32(arm_cfg, state, bits if arm.startswith("sep") else cfg.quant.bits,
                                  arm_cfg.quant.tie_mode, calib, device=dist.device)
    train_quantized(arm_cfg, model, arm_cfg.multi, train_loader, out, dist, "multi", progress=True)
    steps = optimizer_steps(arm_cfg.multi, len(train_loader), len(bits))
    return export_model(model, arm_cfg, out / "model.int8.pt", bits), steps


def _hits_per_bit(path: Path, cfg: Config, bits: list[int], test_loader: Any, device: torch.device
                  ) -> dict[int, list[float]]:
    artefact = load_int8(path)
    switched = model_from_artefact(artefact, cfg.model)
    per_bit = {}
    for index, b in enumerate(bits):
        (load_dequantized if index == 0 else apply_codes)(switched, artefact, b)
        per_bit[b] = correct_per_image(switched.to(device), test_loader, device)
    return per_bit


def _arms(plan: Any, cfg: Config) -> list[str]:
    """The runs of ``plan.full_arms`` in a fixed order (``separate`` expands to one ``sep{b}`` per precision)."""
    unknown = sorted(set(plan.full_arms) - set(FULL_ARMS))
    if unknown or "ours" not in plan.full_arms:
        raise UsageError(f"full_arms {list(plan.full_arms)}: give 'ours' and any of {', '.join(FULL_ARMS[1:])} "
                         f"(unknown: {unknown})")
    arms = [a for a in FULL_ARMS if a in plan.full_arms and a != "separate"]
    if "separate" in plan.full_arms:
        sep = [b for b in train_bits(cfg) if b in plan.sep_bits]
        if not sep:
            raise UsageError(f"full_arms separate: none of the trained bits {train_bits(cfg)} is in sep_bits "
                             f"{list(plan.sep_bits)}")
        arms += [f"sep{b}" for b in sep]
    return arms


def run_full(plan: Any, ctx: Context) -> Results:
    cfg = load_config(plan.config, Config, list(plan.config_overrides))
    arms = _arms(plan, cfg)
    data_root(cfg.data)  # a clear error before anything runs when the data is missing
    dist = dist_setup(None)
    seed_everything(cfg.seed)
    train_loader, test_loader = build_loaders(cfg.data, dist, cfg.seed)
    init = Path(plan.init) if plan.init else ctx.runs / "fp32" / "fp32.pt"
    if plan.init is None:
        with ctx.stage("fp32"):
            model, _ = train_fp32(cfg, train_loader, ctx.runs / "fp32", dist, progress=True)
            torch.save(model.state_dict(), init)
    state = _fp32_state(init)
    calib = calibration_batch(train_loader, cfg.quant.calib_images)
    paths, steps = {}, {}
    for arm in arms:
        with ctx.stage(RUN_DIR.get(arm, arm)):
            seed_everything(cfg.seed)  # every arm starts from the same state of the random streams
            paths[arm], steps[arm] = _train_arm(cfg, arm, state, calib, train_loader, ctx, dist)
    with ctx.stage("eval"):
        fp32 = build_float_model(cfg.model)
        fp32.load_state_dict(state)
        reference = correct_per_image(fp32.to(dist.device), test_loader, dist.device)
        hits = {arm: _hits_per_bit(path, cfg, arm_bits(cfg, arm), test_loader, dist.device)
                for arm, path in paths.items()}
    estimates, facts = _claims(hits, reference)
    facts["full_optimizer_steps_joint"] = steps["ours"]
    if any(a.startswith("sep") for a in steps):
        facts["full_optimizer_steps_separate"] = next(s for a, s in steps.items() if a.startswith("sep"))
    files = ", ".join(f"{arm}: {path}" for arm, path in paths.items())
    return Results(estimates=estimates, facts=facts, notes_md=f"Config {plan.config} with overrides "
                   f"{list(plan.config_overrides)}; FP32 start {init}; arms from the same FP32 start, files {files}.")


def _claims(hits: dict[str, dict[int, list[float]]], reference: list[float]
            ) -> tuple[dict[str, stats.Estimate], dict[str, Any]]:
    """The paired estimates and top-1 facts of the arms that ran (``hits``: arm -> bits -> per-image hits)."""
    ours = hits["ours"]

    def diff(a: list[float], b: list[float], bits: int) -> stats.Estimate:
        return _scaled(stats.paired_diff(a, b, bits=bits))

    estimates = {f"full_w{b}_minus_fp32": diff(h, reference, b) for b, h in ours.items() if b in PAPER_OURS}
    facts: dict[str, Any] = {"full_fp32_top1": 100 * sum(reference) / len(reference)}
    for arm, prefix in _FACT_PREFIX.items():
        facts |= {f"full_{prefix}top1_w{b}": 100 * sum(h) / len(h) for b, h in hits.get(arm, {}).items()
                  if b in PAPER_OURS}
    if "ours_unshared" in hits:
        estimates |= {f"full_unshared_minus_shared_w{b}": diff(hits["ours_unshared"][b], ours[b], b)
                      for b in (2, 4) if b in ours}
    for arm, per_bit in hits.items():
        if arm.startswith("sep"):
            b = int(arm[3:])
            facts[f"full_separate_top1_w{b}"] = 100 * sum(per_bit[b]) / len(per_bit[b])
            if b in PAPER_LSQ:
                estimates[f"full_joint_minus_separate_w{b}"] = diff(ours[b], per_bit[b], b)
    for arm, claim in (("no_alrs", "full_alrs_gain_w2"), ("kd", "full_kd_gain_w2")):
        if arm in hits and 2 in ours:
            a, b = (ours[2], hits[arm][2]) if arm == "no_alrs" else (hits[arm][2], ours[2])
            estimates[claim] = diff(a, b, 2)
    return estimates, facts


def _scaled(estimate: stats.Estimate) -> stats.Estimate:
    """A difference of proportions in top-1 points (x 100)."""
    return stats.Estimate(100 * estimate.value, estimate.n, (100 * estimate.ci[0], 100 * estimate.ci[1]),
                          estimate.method, estimate.details)
