"""``double_rounding reproduce --scale full``: the paper's pipeline on your data.

FP32 model (trained, or ``--init`` weights such as torchvision's) -> each arm in ``plan.full_arms`` trained from
that one FP32 start -> every precision evaluated from the arm's exported file. Each training stage is
:func:`double_rounding.stages.run_stage`, the ``double_rounding train`` command's own code: in this process
(``nproc=1``) or, with ``--set nproc=N``, as a ``torchrun --nproc_per_node=N`` job of that command (DDP, one GPU
per process; ``data.batch_size`` is per process). The driver itself is one process: it launches the jobs,
evaluates every file on one device and alone writes the results. Arms (the miniature's settings,
:mod:`double_rounding.miniature`):

* ``ours``: joint multi-precision training, double rounding from one shared ``s_h`` (the int8 file);
* ``ours_unshared``: the paper's "Ours*", one learnable weight step per precision (one code set per precision);
* ``separate``: one LSQ model per precision in ``plan.sep_bits`` (those in the config's bits), ALRS off, with as
  many optimizer steps as the joint run takes in all, as in the miniature: the joint run steps once per
  precision per batch, so each separate model trains ``multi.epochs`` x the number of precisions epochs;
* ``no_alrs``: the joint model with ALRS off (the paper's Table 4 ablation);
* ``kd``: the joint model with ``multi.kd=recursive`` (each lower precision on soft CE against the next higher
  one, Any-Precision's scheme: the paper never specifies its KD, this is our choice);
* ``mixed``: the paper's Table 3 pipeline on ``plan.mixed_bits`` ({4,3,2}): a joint model on those bits, Hessian
  traces of the FP32 model, the SuperNet (``supernet`` settings, HASB sampler, sandwich), then from its one int8
  file the ILP sub-net at an average of 3 bits, ``plan.mixed_random`` random sub-nets at 3 bits and the uniform
  configurations.

Claims, paired over the test images (t-interval of the per-image differences): each precision of ``ours``
minus the FP32 model, Ours* minus ours at w2 / w4, ours minus the separate model at each separate precision
(within the paper's ResNet-18 margin), the ALRS gain at w2, KD minus no KD at w2, the 3-bit mixed sub-net minus
uniform w3 and minus the random sub-nets. Each stage resumes from its ``last.pt`` under ``runs/<arm>/<stage>/``.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from effrepro import stats
from effrepro.config import load_config, save_config
from effrepro.errors import UsageError
from effrepro.quant import apply_codes, load_dequantized, load_int8
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Results
from effrepro.train import DistInfo, dist_setup, load_checkpoint, run_torchrun
from torch import nn

from double_rounding.config import Config
from double_rounding.data import build_loaders, data_root
from double_rounding.eval import model_from_artefact
from double_rounding.mixed import searched_and_random
from double_rounding.models import build_float_model
from double_rounding.reproduce_mixed import PAPER_3MP_GAIN
from double_rounding.reproduce_report import PAPER_UNSHARED, half_gain
from double_rounding.stages import hessian_stage, read_state_dict, read_traces, run_stage
from double_rounding.train import optimizer_steps

DEFAULT_FULL_ARMS = ("ours", "ours_unshared")
FULL_ARMS = ("ours", "ours_unshared", "separate", "no_alrs", "kd", "mixed")
KD_MODE = "recursive"  # the paper's "KD" rows (its KD is unspecified)
MIXED_BUDGET = 3.0  # Table 3's 3MP against w3a3
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
    ClaimSpec(id="full_mixed_minus_uniform_3bit", description="top-1 of the ILP sub-net at an average of 3 bits "
              "minus uniform w3a3, both from the {4,3,2} SuperNet's one int8 file, paired over test images; also "
              f"fails below half the paper's gain ({PAPER_3MP_GAIN / 2:g} points: ResNet-18, 3MP 68.85 vs w3a3 "
              "68.63)", paper=PAPER_3MP_GAIN, unit="top-1 points", baseline="uniform w3a3",
              expect=f"> 0, fails below {PAPER_3MP_GAIN / 2:g}"),
    ClaimSpec(id="full_searched_minus_random_3bit", description="top-1 of the ILP sub-net at 3 bits minus the mean "
              "of the random sub-nets at 3 bits (drawn uniformly among the configurations averaging 3 bits), from "
              "the same int8 file, paired over test images", paper=None, unit="top-1 points",
              baseline="random sub-nets at 3 bits", expect="> 0"),
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
    *[FactSpec(id=f"full_mixed_top1_{name}", description=f"{{4,3,2}} SuperNet: top-1 of {what} (full scale)",
               unit="%", exact=False) for name, what in (("uniform_w4", "uniform w4a4"), ("uniform_w3", "uniform w3a3"),
                                                        ("uniform_w2", "uniform w2a2"),
                                                        ("searched_3bit", "the ILP sub-net at 3 bits"),
                                                        ("random_3bit", "the random sub-nets at 3 bits (mean)"))],
    FactSpec(id="full_optimizer_steps_joint", description="optimizer steps of one joint run (one per precision per "
             "batch, full scale)", unit="steps"),
    FactSpec(id="full_optimizer_steps_separate", description="optimizer steps of each separate LSQ run (full scale)",
             unit="steps"),
]
_MIXED_FACTS = {f.id for f in FULL_FACTS if f.id.startswith("full_mixed_")}
_FACT_PREFIX = {"ours": "", "ours_unshared": "unshared_", "no_alrs": "noalrs_", "kd": "kd_"}


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: Any, device: torch.device) -> list[float]:
    """1.0 / 0.0 per test image: whether the top-1 prediction is right (the unit of the paired intervals)."""
    model.eval()
    hits: list[float] = []
    for x, y in loader:
        hits += (model(x.to(device)).argmax(1) == y.to(device)).float().tolist()
    return hits


def arm_config(cfg: Config, arm: str, mixed_bits: Sequence[int] = (4, 3, 2)) -> Config:
    """A copy of ``cfg`` with the arm's settings (``sep{b}``: the one precision b, ALRS off, len(bits) x the joint
    run's epochs; ``mixed``: the precisions ``mixed_bits``)."""
    precisions = len(train_bits(cfg))
    cfg = copy.deepcopy(cfg)
    cfg.quant.weight_scales = "unshared" if arm == "ours_unshared" else "shared"
    if arm == "no_alrs":
        cfg.multi.alrs = "off"
    elif arm == "kd":
        cfg.multi.kd = KD_MODE
    elif arm.startswith("sep"):
        cfg.quant.bits, cfg.multi.alrs, cfg.multi.train_bits = [int(arm[3:])], "off", None
        cfg.multi.epochs *= precisions
    elif arm == "mixed":
        cfg.quant.bits, cfg.multi.train_bits, cfg.supernet.train_bits = list(mixed_bits), None, None
    return cfg


def train_bits(cfg: Config) -> list[int]:
    return list(cfg.multi.train_bits or cfg.quant.bits)


def arm_bits(cfg: Config, arm: str) -> list[int]:
    """The precisions an arm trains and exports: ``sep{b}`` its one, the joint arms the config's."""
    return [int(arm[3:])] if arm.startswith("sep") else train_bits(cfg)


def _stage(cfg: Config, stage: str, out: Path, plan: Any, dist: DistInfo, init: Path | None = None) -> None:
    """One training stage into ``out/<stage>``: in this process, or as a torchrun job of ``double_rounding train``
    with ``cfg`` written beside it."""
    if plan.nproc == 1:
        run_stage(cfg, stage, out, dist, init)
        return
    config = save_config(cfg, out / f"{stage}.yaml")
    args = ["train", "--config", str(config), "--stage", stage, "--out", str(out), "--quiet",
            *(["--init", str(init)] if init else [])]
    run_torchrun(plan.nproc, "double_rounding.cli", args, out / stage / "last.pt")


def _steps(cfg: Config, out: Path) -> int:
    """Optimizer steps of the finished ``multi`` stage in ``out`` (per process), from its checkpoint."""
    batches = load_checkpoint(out / "multi" / "last.pt")["global_step"] // cfg.multi.epochs
    return optimizer_steps(cfg.multi, batches, len(train_bits(cfg)))


def _hits(path: Path, cfg: Config, configs: Sequence[int | dict[str, int]], test_loader: Any, device: torch.device
          ) -> list[list[float]]:
    """Per-image hits of each bit configuration (a bit-width or ``{layer: bits}``), all from the one int8 file."""
    artefact = load_int8(path)
    switched = model_from_artefact(artefact, cfg.model)
    hits = []
    for index, config in enumerate(configs):
        (load_dequantized if index == 0 else apply_codes)(switched, artefact, config)
        hits.append(correct_per_image(switched.to(device), test_loader, device))
    return hits


def _mixed_hits(cfg: Config, out: Path, seed: int, random_count: int, test_loader: Any, device: torch.device
                ) -> dict[str, list[float]]:
    """Per-image hits of the SuperNet's sub-nets: ``uniform_w{b}``, ``searched_3bit`` and ``random_3bit`` (the
    mean over the random sub-nets of each image)."""
    path = out / "supernet" / "model.int8.pt"
    rows = searched_and_random(load_int8(path), read_traces(out / "hessian" / "traces.json"), [MIXED_BUDGET],
                               random_count, seed)
    bits = list(cfg.quant.bits)
    hits = _hits(path, cfg, [*bits, *(r["config"] for r in rows)], test_loader, device)
    per_config = dict(zip([f"uniform_w{b}" for b in bits], hits[:len(bits)]))
    per_config["searched_3bit"] = hits[len(bits)]
    per_config["random_3bit"] = [statistics.fmean(images) for images in zip(*hits[len(bits) + 1:])]
    return per_config


def _arms(plan: Any, cfg: Config) -> list[str]:
    """The runs of ``plan.full_arms`` in a fixed order (``separate`` expands to one ``sep{b}`` per precision)."""
    unknown = sorted(set(plan.full_arms) - set(FULL_ARMS))
    if unknown or "ours" not in plan.full_arms:
        raise UsageError(f"full_arms {list(plan.full_arms)}: give 'ours' and any of {', '.join(FULL_ARMS[1:])} "
                         f"(unknown: {unknown})")
    if plan.nproc < 1:
        raise UsageError(f"nproc={plan.nproc}: give the number of processes (GPUs) per training job, at least 1")
    if "mixed" in plan.full_arms and (3 not in plan.mixed_bits or plan.mixed_random < 1):
        raise UsageError(f"full_arms mixed compares sub-nets at an average of 3 bits: mixed_bits "
                         f"{list(plan.mixed_bits)} must include 3 and mixed_random must be at least 1")
    arms = [a for a in FULL_ARMS if a in plan.full_arms and a != "separate"]
    if "separate" in plan.full_arms:
        sep = [b for b in train_bits(cfg) if b in plan.sep_bits]
        if not sep:
            raise UsageError(f"full_arms separate: none of the trained bits {train_bits(cfg)} is in sep_bits "
                             f"{list(plan.sep_bits)}")
        arms += [f"sep{b}" for b in sep]
    return arms


def _train_arm(cfg: Config, arm: str, init: Path, out: Path, plan: Any, dist: DistInfo) -> None:
    """An arm's stages from the FP32 weights ``init`` into ``out`` (``mixed``: joint model, traces, SuperNet)."""
    _stage(cfg, "multi", out, plan, dist, init)
    if arm == "mixed":
        if not (out / "hessian" / "traces.json").is_file():
            hessian_stage(cfg, out, dist, init)
        _stage(cfg, "supernet", out, plan, dist)


def run_full(plan: Any, ctx: Context) -> Results:
    cfg = load_config(plan.config, Config, list(plan.config_overrides))
    arms = _arms(plan, cfg)
    data_root(cfg.data)  # a clear error before anything runs when the data is missing
    dist = dist_setup(None)
    init = Path(plan.init) if plan.init else ctx.runs / "fp32" / "fp32.pt"
    if plan.init is None:
        with ctx.stage("fp32"):
            _stage(cfg, "fp32", ctx.runs, plan, dist)
    state = read_state_dict(init, "FP32")
    configs = {arm: arm_config(cfg, arm, plan.mixed_bits) for arm in arms}
    for arm in arms:
        with ctx.stage(arm):
            _train_arm(configs[arm], arm, init, ctx.runs / arm, plan, dist)
    with ctx.stage("eval"):
        _, test_loader = build_loaders(cfg.data, dist, cfg.seed)
        fp32 = build_float_model(cfg.model)
        fp32.load_state_dict(state)
        reference = correct_per_image(fp32.to(dist.device), test_loader, dist.device)
        hits = {}
        for arm in (a for a in arms if a != "mixed"):
            bits = arm_bits(cfg, arm)
            per_bit = _hits(ctx.runs / arm / "multi" / "model.int8.pt", configs[arm], bits, test_loader, dist.device)
            hits[arm] = dict(zip(bits, per_bit))
        mixed = (_mixed_hits(configs["mixed"], ctx.runs / "mixed", cfg.seed, plan.mixed_random, test_loader,
                             dist.device) if "mixed" in arms else {})
    estimates, facts = _claims(hits, reference, mixed)
    facts["full_optimizer_steps_joint"] = _steps(configs["ours"], ctx.runs / "ours")
    separate = [a for a in arms if a.startswith("sep")]
    if separate:
        facts["full_optimizer_steps_separate"] = _steps(configs[separate[0]], ctx.runs / separate[0])
    files = ", ".join(f"{arm}: {ctx.runs / arm}" for arm in arms)
    return Results(estimates=estimates, facts=facts, notes_md=f"Config {plan.config} with overrides "
                   f"{list(plan.config_overrides)}; FP32 start {init}; arms from the same FP32 start, "
                   f"{plan.nproc} process(es) per training job; arm folders {files}.")


def _claims(hits: dict[str, dict[int, list[float]]], reference: list[float], mixed: dict[str, list[float]]
            ) -> tuple[dict[str, stats.Estimate], dict[str, Any]]:
    """The paired estimates and top-1 facts of the arms that ran (``hits``: arm -> bits -> per-image hits;
    ``mixed``: the SuperNet's sub-net -> per-image hits, empty without the mixed arm)."""
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
    if mixed:
        facts |= {f"full_mixed_top1_{name}": 100 * statistics.fmean(h) for name, h in mixed.items()
                  if f"full_mixed_top1_{name}" in _MIXED_FACTS}
        estimates["full_mixed_minus_uniform_3bit"] = diff(mixed["searched_3bit"], mixed["uniform_w3"], 3)
        estimates["full_searched_minus_random_3bit"] = diff(mixed["searched_3bit"], mixed["random_3bit"], 3)
    return estimates, facts


def _scaled(estimate: stats.Estimate) -> stats.Estimate:
    """A difference of proportions in top-1 points (x 100)."""
    return stats.Estimate(100 * estimate.value, estimate.n, (100 * estimate.ci[0], 100 * estimate.ci[1]),
                          estimate.method, estimate.details)
