"""``double_rounding reproduce``: the paper's headline claims in miniature (smoke) or its recipe (full).

Smoke (CPU, real images): on MNIST and on MNIST-100 (two digits side by side, 100 classes: the harder task),
for each seed, with the same FP32 start and the same data order for every arm:

* ``fp32``: the FP32 model (also the initialisation of every quantised arm);
* ``sep{b}``: a separate LSQ model per bit-width (h = b, so plain LSQ), the "stores 4 models" reference;
* ``ours``: joint {8,6,4,2} double rounding, per-bit activation scales and BN, per-precision steps, ALRS
  ``simple``; every accuracy is measured from the exported int8 file;
* ``ours_noalrs`` (ALRS off), ``ours_literal`` (eq. 6 as printed, bracket clamped at 0), ``floor`` (joint
  training with a floor shift), ``posthoc`` (an 8-bit-only model switched down by double rounding, with
  activation scales and BN statistics re-estimated but no training);
* mixed precision (``mixed`` tasks): per-layer Hessian traces of the FP32 model, a SuperNet trained from
  ``ours`` with HASB and one with uniform bit sampling, ILP sub-nets for each average-bit budget, all
  evaluated from each SuperNet's int8 file; the area under the best-accuracy-vs-budget curve is compared.

Every arm's result is cached in ``runs/<task>/seed<k>/<arm>/result.json`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.quant import export_int8, load_int8, payload_bytes, save_int8, to_transitional
from effrepro.report import Claim, results_dir, save_figure, write_claims, write_report
from effrepro.train import MetricsLogger, dist_setup, load_checkpoint, save_checkpoint, seed_everything

from double_rounding.config import Config
from double_rounding.data import build_loaders
from double_rounding.eval import evaluate_int8
from double_rounding.hasb import BitSampler
from double_rounding.mixed import area_under_curve, compute_traces, evaluate_subnets, pareto_by_budget, search_configs
from double_rounding.models import ModelConfig, build_float_model, build_quant_model
from double_rounding.train import (
    calib_inputs,
    evaluate,
    export_model,
    first_batches,
    posthoc_switch,
    quant_model_from_fp32,
    train_fp32,
    train_quantized,
)

BITS = [8, 6, 4, 2]
JOINT_ARMS = {  # name: (alrs, tie_mode)
    "ours": ("simple", "half_up"),
    "ours_noalrs": ("off", "half_up"),
    "ours_literal": ("literal", "half_up"),
    "floor": ("simple", "floor"),
}


@dataclass
class TaskPlan:
    """One miniature task: data sizes, model width, epochs, which arms run, and the mixed-precision part."""

    dataset: str
    train_size: int
    test_size: int
    width: int
    fp_epochs: int
    q_epochs: int
    supernet_epochs: int
    arms: list[str]
    mixed: bool
    hessian_images: int = 512
    hessian_probes: int = 32
    budgets: list[float] = field(default_factory=lambda: [2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    enumerate: bool = True
    batch_size: int = 128
    fp_lr: float = 5e-3
    q_lr: float = 5e-4  # the paper's LR; with Adam a scale below the LR can be pushed through zero in one step


ALL_ARMS = ["fp32", "sep8", "sep6", "sep4", "sep2", "ours", "ours_noalrs", "ours_literal", "floor", "posthoc"]
SMOKE = {
    "seeds": [0, 1, 2],
    "tasks": {
        "mnist": TaskPlan("mnist", 4096, 2000, 8, 3, 2, 1, ALL_ARMS, mixed=True),
        "mnist100": TaskPlan("mnist100", 6144, 2000, 8, 3, 2, 1,
                             ["fp32", "sep8", "sep6", "sep4", "sep2", "ours", "ours_noalrs", "floor", "posthoc"],
                             mixed=False),
    },
}
TINY = {
    "seeds": [0],
    "tasks": {
        "mnist": TaskPlan("mnist", 512, 300, 4, 2, 1, 1, ALL_ARMS, mixed=True, hessian_images=64,
                          hessian_probes=4, budgets=[3.0, 4.0], enumerate=False, batch_size=32),
        "mnist100": TaskPlan("mnist100", 384, 300, 4, 1, 1, 1, ["fp32", "sep8", "sep2", "ours", "ours_noalrs"],
                             mixed=False, batch_size=64),
    },
}


def task_config(plan: TaskPlan, seed: int) -> Config:
    model = {"arch": "tiny_cnn", "width": plan.width, "num_classes": 10, "input_size": [28, 28], "pool": [1, 1]}
    if plan.dataset == "mnist100":
        model.update(num_classes=100, input_size=[28, 56], pool=[1, 2])
    return load_config({
        "model": model, "seed": seed,
        "data": {"dataset": plan.dataset, "train_size": plan.train_size, "test_size": plan.test_size,
                 "batch_size": plan.batch_size, "eval_batch_size": 500},
        "quant": {"bits": BITS, "calib_images": 256},
        "fp32": {"epochs": plan.fp_epochs, "lr": plan.fp_lr, "alrs": "off", "log_every": 10**6},
        "multi": {"epochs": plan.q_epochs, "lr": plan.q_lr, "log_every": 10**6},
        "supernet": {"epochs": plan.supernet_epochs, "lr": plan.q_lr, "alrs": "off", "log_every": 10**6},
        "mixed": {"hessian_images": plan.hessian_images, "hessian_probes": plan.hessian_probes,
                  "budgets": plan.budgets, "enumerate": plan.enumerate},
    }, Config)


def _accuracies(rows: list[dict]) -> dict[str, float]:
    return {str(r["config"]): r["top1"] for r in rows}


class SeedRun:
    """All arms of one task and seed; each arm's result is cached as JSON next to its checkpoints."""

    def __init__(self, plan: TaskPlan, seed: int, root: Path, log: MetricsLogger, task: str) -> None:
        self.plan, self.seed, self.root, self.log, self.task = plan, seed, root, log, task
        self.cfg = task_config(plan, seed)
        self.dist = dist_setup("cpu")
        self.train_loader, self.test_loader = build_loaders(self.cfg.data, self.dist, seed)
        self.fp32_state: dict | None = None
        self._calib: torch.Tensor | None = None

    def cached(self, arm: str, fn: Any) -> dict:
        path = self.root / arm / "result.json"
        if path.is_file():
            return json.loads(path.read_text())
        seed_everything(self.seed)
        result = fn(self.root / arm)
        result = json.loads(json.dumps({"task": self.task, "seed": self.seed, "arm": arm, **result}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        self.log.log(**{k: v for k, v in result.items() if not isinstance(v, (dict, list))},
                     acc=result.get("acc"))
        print(f"[{self.task} seed {self.seed}] {arm}: acc {result.get('acc')} ({result.get('seconds', 0):.0f} s)",
              flush=True)
        return result

    @property
    def calib(self) -> torch.Tensor:
        if self._calib is None:
            self._calib = calib_inputs(self.cfg, self.train_loader)
        return self._calib

    def fp32(self, out: Path) -> dict:
        model, result = train_fp32(self.cfg, self.train_loader, out, self.dist, progress=False)
        torch.save(model.state_dict(), out / "fp32.pt")
        metrics = evaluate(model, self.test_loader)
        payload = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return {"acc": {"32": metrics["top1"]}, "nll": metrics["nll"], "seconds": result["seconds"],
                "fp32_bytes": (out / "fp32.pt").stat().st_size, "fp32_payload": payload,
                "cpu_seconds": result["cpu_seconds"]}

    def fp32_weights(self) -> dict:
        if self.fp32_state is None:
            self.cached("fp32", self.fp32)
            self.fp32_state = torch.load(self.root / "fp32" / "fp32.pt", weights_only=True)
        return self.fp32_state

    def quantized(self, out: Path, bits: list[int], alrs: str, tie: str, train_bits: list[int] | None = None,
                  posthoc: bool = False) -> dict:
        cfg = self.cfg
        cfg.multi.alrs, cfg.multi.train_bits = alrs, train_bits
        model = quant_model_from_fp32(cfg, self.fp32_weights(), bits, tie, self.calib)
        result = train_quantized(cfg, model, cfg.multi, self.train_loader, out, self.dist, "multi", progress=False)
        available = train_bits or bits
        if posthoc:
            available = posthoc_switch(model, cfg, self.calib, first_batches(self.train_loader, 8), train_bits[0])
        path = export_model(model, cfg, out / "model.int8.pt", available)
        rows = evaluate_int8(load_int8(path), self.test_loader, available)
        cfg.multi.train_bits = None
        return {"acc": _accuracies(rows), "nll": {str(r["config"]): r["nll"] for r in rows},
                "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"], "int8_bytes": path.stat().st_size,
                "payload": payload_bytes(load_int8(path)), "alrs_clamp_rate": result["alrs_clamp_rate"],
                "clamped_scales": result["clamped_scales"]}

    def arm(self, name: str) -> dict:
        if name == "fp32":
            return self.cached("fp32", self.fp32)
        if name.startswith("sep"):
            b = int(name[3:])
            return self.cached(name, lambda out: self.quantized(out, [b], "off", "half_up"))
        if name == "posthoc":
            return self.cached(name, lambda out: self.quantized(out, BITS, "simple", "half_up", [8], posthoc=True))
        alrs, tie = JOINT_ARMS[name]
        return self.cached(name, lambda out: self.quantized(out, BITS, alrs, tie))

    # ---- mixed precision ------------------------------------------------------------------------------
    def traces(self, out: Path) -> dict:
        model = build_float_model(self.cfg.model)
        model.load_state_dict(self.fp32_weights())
        batches = first_batches(self.train_loader, max(1, self.plan.hessian_images // self.plan.batch_size))
        start = time.perf_counter()
        result = compute_traces(self.cfg, model, batches)
        return {**result.as_dict(), "seconds": time.perf_counter() - start}

    def supernet(self, out: Path, sampler_mode: str, traces: Mapping[str, float]) -> dict:
        cfg = self.cfg
        self.arm("ours")
        state = load_checkpoint(self.root / "ours" / "last.pt", required=("model",))["model"]
        model = build_quant_model(cfg.model, BITS, "half_up", float_model=build_float_model(cfg.model))
        model.load_state_dict(state)
        to_transitional(model)
        sampler = BitSampler(model.quant_graph.layers, BITS, traces, sampler_mode)
        result = train_quantized(cfg, model, cfg.supernet, self.train_loader, out, self.dist, "supernet",
                                 sampler=sampler, progress=False)
        artefact = load_int8(export_model(model, cfg, out / "model.int8.pt", BITS, {"sampler": sampler_mode}))
        rows = evaluate_subnets(artefact, search_configs(artefact, traces, cfg.mixed), self.test_loader)
        uniform = evaluate_int8(artefact, self.test_loader, BITS)
        return {"subnets": rows, "acc": _accuracies(uniform), "pareto": pareto_by_budget(rows),
                "auc": area_under_curve(pareto_by_budget(rows)), "seconds": result["seconds"],
                "cpu_seconds": result["cpu_seconds"],
                "sensitive": sampler.sensitive}

    def mixed(self) -> tuple[dict, dict, dict]:
        traces = self.cached("hessian", self.traces)
        hasb = self.cached("supernet_hasb", lambda out: self.supernet(out, "hasb", traces["traces"]))
        uniform = self.cached("supernet_uniform", lambda out: self.supernet(out, "uniform", traces["traces"]))
        return traces, hasb, uniform


# ---- aggregation into claims ----------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _acc(results: Mapping[str, list[dict]], arm: str, bits: int | str) -> list[float]:
    return [r["acc"][str(bits)] for r in results[arm]]


def _paired(results: Mapping[str, list[dict]], fn: Any) -> list[float]:
    n = min(len(v) for v in results.values())
    return [fn(i) for i in range(n)]


def task_claims(task: str, results: Mapping[str, list[dict]]) -> list[Claim]:
    claims: list[Claim] = []
    seeds = [r["seed"] for r in results["ours"]]

    def per_bit(bits: int) -> dict:
        return {arm: _fmt(_acc(results, arm, bits)) for arm in results if arm in ALL_ARMS[1:]
                and str(bits) in results[arm][0]["acc"]}

    fp = _acc(results, "fp32", 32)
    paper_ratio = {8: 70.74 / 71.10, 4: 70.43 / 71.10, 2: 66.35 / 67.60}  # R18, Table 6 (ours / LSQ)
    paper_drop = {8: 70.74 - 69.76, 6: 70.71 - 69.76, 4: 70.43 - 69.76, 2: 66.35 - 69.76}  # R18, Table 1
    for b in BITS:
        ours = _acc(results, "ours", b)
        if f"sep{b}" in results:
            sep = _acc(results, f"sep{b}", b)
            ratios = [o / s for o, s in zip(ours, sep)]
            claims.append(Claim(
                f"{task}_ratio_vs_separate_w{b}",
                f"{task}: accuracy of the one int8 model switched to w{b}a{b} / a separately trained {b}-bit LSQ "
                "model (paired by seed)", paper_ratio.get(b), _mean_std(ratios)[0], "ratio",
                f"separate LSQ w{b}a{b}", ">= 0.98",
                {"per_seed": ratios, "ours": _fmt(ours), "separate": _fmt(sep), "seeds": seeds}))
        drops = [o - f for o, f in zip(ours, fp)]
        claims.append(Claim(
            f"{task}_drop_vs_fp32_w{b}", f"{task}: accuracy at w{b}a{b} (from the int8 file) minus FP32, in points",
            paper_drop[b], _mean_std(drops)[0], "points", "FP32 model", ">= -1.0" if b > 2 else ">= -4.0",
            {"per_seed": drops, "ours": _fmt(ours), "fp32": _fmt(fp), "all_arms": per_bit(b)}))
    if "ours_noalrs" in results:
        for b in (2, 4):
            diff = [o - n for o, n in zip(_acc(results, "ours", b), _acc(results, "ours_noalrs", b))]
            claims.append(Claim(
                f"{task}_alrs_gain_w{b}", f"{task}: ALRS (simple) minus no ALRS at w{b}a{b}, points (paired)",
                {2: 66.35 - 65.83, 4: 70.43 - 69.32}[b], _mean_std(diff)[0], "points", "joint training without ALRS",
                ">= 0", {"per_seed": diff, "ours": _fmt(_acc(results, "ours", b)),
                         "no_alrs": _fmt(_acc(results, "ours_noalrs", b))}))
    if "ours_literal" in results:
        diff = [o - n for o, n in zip(_acc(results, "ours", 2), _acc(results, "ours_literal", 2))]
        clamp = [r["alrs_clamp_rate"].get("2", 0.0) for r in results["ours_literal"]]
        claims.append(Claim(
            f"{task}_alrs_simple_minus_literal_w2", f"{task}: ALRS simple minus ALRS literal (eq. 6, bracket "
            "clamped at 0) at w2a2, points", None, _mean_std(diff)[0], "points", "ALRS literal", ">= 0",
            {"per_seed": diff, "literal_clamp_rate_w2": clamp, "literal": _fmt(_acc(results, "ours_literal", 2))}))
    for arm, label in (("floor", "joint training with a floor shift"), ("posthoc", "post-hoc switching of an "
                                                                                   "8-bit-only model")):
        if arm not in results:
            continue
        for b in (4, 2):
            diff = [o - x for o, x in zip(_acc(results, "ours", b), _acc(results, arm, b))]
            claims.append(Claim(
                f"{task}_ours_minus_{arm}_w{b}", f"{task}: double rounding (joint, rounding shift) minus {label} at "
                f"w{b}a{b}, points", None, _mean_std(diff)[0], "points", label, "> 0",
                {"per_seed": diff, "ours": _fmt(_acc(results, "ours", b)), arm: _fmt(_acc(results, arm, b))}))
    if all(f"sep{b}" in results for b in BITS):
        def time_ratio(key: str) -> list[float]:
            return [o[key] / sum(results[f"sep{b}"][i][key] for b in BITS) for i, o in enumerate(results["ours"])]

        cpu, wall = time_ratio("cpu_seconds"), time_ratio("seconds")
        claims.append(Claim(
            f"{task}_traintime_joint_over_separate", f"{task}: training CPU time of the joint {BITS} model / sum of "
            "the four separate models (same epochs; process CPU time, as the 2-core machine was shared)",
            16.3 / 19.0, _mean_std(cpu)[0], "ratio", "sum of separate trainings", "< 1.0",
            {"per_seed_cpu": cpu, "per_seed_wall": wall, "wall_mean": _mean_std(wall)[0]}))
    ours, fp_run = results["ours"][0], results["fp32"][0]
    single = ours["payload"]["total"] / fp_run["fp32_payload"]
    claims.append(Claim(
        f"{task}_storage_int8_over_four_fp32", f"{task}: tensor bytes of the one int8 artefact (codes + scales + 4 "
        "BN sets + FP32 first conv / FC) / four FP32 models (what separate per-bit models store; Table 6 'stored')",
        13.4 / (4 * 46.8), single / 4, "ratio", "four FP32 models", "<= 0.25",
        {"vs_one_fp32_model": single, "payload": ours["payload"], "fp32_payload": fp_run["fp32_payload"],
         "int8_file_bytes": ours["int8_bytes"], "fp32_file_bytes": fp_run["fp32_bytes"],
         "note": "the FP32 first conv / FC and the 4 BN copies weigh much more in a 20k-parameter model than in "
                 "ResNet-18; see resnet18_storage_int8_over_fp32 for the architecture the paper uses"}))
    return claims


def mixed_claims(task: str, mixed: Mapping[str, list[dict]]) -> list[Claim]:
    hasb, uniform = mixed["supernet_hasb"], mixed["supernet_uniform"]
    ratios = [h["auc"] / u["auc"] for h, u in zip(hasb, uniform)]
    budgets = sorted({float(b) for r in hasb for b in r["pareto"]})
    claims = [Claim(
        f"{task}_mixed_auc_hasb_over_uniform", f"{task}: area under best-accuracy-vs-average-bits (ILP sub-nets over "
        f"budgets {budgets}) of the HASB SuperNet / the uniform-sampling SuperNet", None, _mean_std(ratios)[0],
        "ratio", "SuperNet trained with uniform bit sampling", ">= 1.0",
        {"per_seed": ratios, "hasb_auc": _fmt([h["auc"] for h in hasb]),
         "uniform_auc": _fmt([u["auc"] for u in uniform])})]
    matched = [b for b in (4, 6) if b in budgets]  # budgets equal to a uniform bit-width
    if matched:
        gains = []
        for run in hasb:
            pareto = {float(k): v for k, v in run["pareto"].items()}
            gains.append(statistics.fmean(pareto[float(b)] - run["acc"][str(b)] for b in matched))
        claims.append(Claim(
            f"{task}_mixed_minus_uniform_bits", f"{task}: best ILP sub-net at average-bit budget {matched} minus the "
            "uniform configuration of that bit-width, same HASB SuperNet, points (paper: 3MP vs w3a3)",
            68.85 - 68.63, _mean_std(gains)[0], "points", "uniform bit-width, same SuperNet", ">= 0",
            {"per_seed": gains, "budgets": matched}))
    return claims


def storage_claim_resnet18(out: Path) -> Claim:
    """The paper's storage statement on the real architecture: one int8 ResNet-18 file vs one FP32 file."""
    cfg = ModelConfig(arch="resnet18", num_classes=1000, in_channels=3, input_size=[64, 64])
    fp = build_float_model(cfg)
    fp_path = out / "runs" / "resnet18_fp32.pt"
    save_checkpoint(fp_path, fp.state_dict())
    model = build_quant_model(cfg, BITS, float_model=fp)
    int8_path = save_int8(out / "runs" / "resnet18.int8.pt", export_int8(model, {"model": cfg.__dict__}, BITS))
    ratio = int8_path.stat().st_size / fp_path.stat().st_size
    details = {"int8_bytes": int8_path.stat().st_size, "fp32_bytes": fp_path.stat().st_size,
               "vs_four_fp32_models": ratio / 4}
    fp_path.unlink()
    int8_path.unlink()
    return Claim("resnet18_storage_int8_over_fp32", "ResNet-18 (ImageNet head): int8 file with 4 BN sets / FP32 "
                 "file (architecture only, no training needed)", 13.4 / 46.8, ratio, "ratio", "one FP32 model",
                 "<= 0.3", details)


# ---- report ------------------------------------------------------------------------------------------------
PAPER_TABLE = """Top-1 (%) on ImageNet-1K, {8,6,4,2} multi-precision, one model stored in INT8 (Tables 1, 4, 5, 6).

| model | method | stored | w8a8 | w6a6 | w4a4 | w2a2 | FP |
|---|---|---|---|---|---|---|---|
| ResNet-18 | LSQ, separate per bit (Table 6) | 4 models | 71.10 | – | 71.10 | 67.60 | 70.50 |
| ResNet-18 | Ours w/o ALRS (Table 4) | 8b | 70.05 | 69.80 | 69.32 | 65.83 | 69.76 |
| ResNet-18 | **Ours** (Table 1) | 8b | 70.74 | 70.71 | 70.43 | 66.35 | 69.76 |
| ResNet-50 | Ours w/o ALRS | 8b | 76.18 | 76.08 | 75.64 | 70.28 | 76.13 |
| ResNet-50 | **Ours** | 8b | 76.51 | 76.28 | 75.74 | 72.31 | 76.13 |
| MobileNetV2 | **Ours** | 8b | 70.98 | 70.70 | 68.77 | 50.43 | 71.14 |

Mixed precision {4,3,2} (Table 3, ResNet-18, HASB + ILP, no fine-tuning): w3a3 68.63, 3MP 68.85.
Training cost (Table 5, ResNet-18 {8,6,4,2}): 16.3 h vs 19.0 h for the separate models (ratio 0.86)."""


def _arm_table(task: str, results: Mapping[str, list[dict]]) -> str:
    lines = [f"**{task}** (top-1 %, mean ± std over {len(results['ours'])} seeds, every quantised number read "
             "from the exported int8 file)", "", "| arm | w8a8 | w6a6 | w4a4 | w2a2 | FP32 | train CPU s |",
             "|---|---|---|---|---|---|---|"]
    for arm in ALL_ARMS + ["supernet_hasb", "supernet_uniform"]:
        if arm not in results:
            continue
        cells = []
        for b in BITS:
            cells.append(_fmt(_acc(results, arm, b)) if str(b) in results[arm][0]["acc"] else "–")
        fp = _fmt(_acc(results, arm, 32)) if "32" in results[arm][0]["acc"] else "–"
        seconds = statistics.fmean(r.get("cpu_seconds", r["seconds"]) for r in results[arm])
        lines.append(f"| {arm} | {' | '.join(cells)} | {fp} | {seconds:.0f} |")
    return "\n".join(lines)


def _mixed_table(task: str, results: Mapping[str, list[dict]]) -> str:
    if "supernet_hasb" not in results:
        return ""
    budgets = sorted({float(b) for r in results["supernet_hasb"] for b in r["pareto"]})
    lines = [f"**{task} mixed precision**: best ILP sub-net top-1 (%) per average-bit budget, mean ± std over seeds",
             "", "| SuperNet | " + " | ".join(f"ω={b:g}" for b in budgets) + " | AUC |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for arm in ("supernet_hasb", "supernet_uniform"):
        runs = results[arm]
        cells = [_fmt([{float(k): v for k, v in r["pareto"].items()}[b] for r in runs]) for b in budgets]
        lines.append(f"| {arm} | {' | '.join(cells)} | {_fmt([r['auc'] for r in runs])} |")
    sensitive = [sorted(k for k, v in r["sensitive"].items() if v) for r in results["supernet_hasb"]]
    lines += ["", f"Sensitive layers (Hessian trace >= mean), per seed: {sensitive}"]
    return "\n".join(lines)


def _plots(out: Path, all_results: Mapping[str, Mapping[str, list[dict]]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4), squeeze=False)
    for ax, (task, results) in zip(axes[0], all_results.items()):
        for arm in ("ours", "ours_noalrs", "floor", "posthoc"):
            if arm in results:
                means = [_mean_std(_acc(results, arm, b))[0] for b in BITS]
                ax.plot(BITS, means, marker="o", label=arm)
        sep = [_mean_std(_acc(results, f"sep{b}", b))[0] for b in BITS if f"sep{b}" in results]
        if len(sep) == len(BITS):
            ax.plot(BITS, sep, marker="s", linestyle="--", label="separate LSQ")
        ax.set_xlabel("bit-width (w = a)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(task)
        ax.legend()
    paths.append(save_figure(fig, out / "accuracy_per_bit.png"))
    for task, results in all_results.items():
        if "supernet_hasb" not in results:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for arm, marker in (("supernet_hasb", "o"), ("supernet_uniform", "x")):
            xs = [row["avg_bits"] for run in results[arm] for row in run["subnets"]]
            ys = [row["top1"] for run in results[arm] for row in run["subnets"]]
            ax.scatter(xs, ys, marker=marker, label=arm, alpha=0.6)
        ax.set_xlabel("average bit-width (ILP sub-nets)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{task}: mixed precision")
        ax.legend()
        paths.append(save_figure(fig, out / f"mixed_{task}.png"))
    return paths


def run_smoke(out: Path, tiny: bool) -> int:
    # two threads only on a quiet machine: with other processes on the two cores, OpenMP spinning makes
    # a 2-thread run several times slower than a 1-thread one (measured here)
    quiet = os.getloadavg()[0] < 1.0 and (os.cpu_count() or 1) >= 2
    torch.set_num_threads(int(os.environ.get("DOUBLE_ROUNDING_THREADS", "2" if quiet and not tiny else "1")))
    scale = TINY if tiny else SMOKE
    log = MetricsLogger(out / "metrics.jsonl")
    start, cpu_start = time.perf_counter(), time.process_time()
    all_results: dict[str, dict[str, list[dict]]] = {}
    claims: list[Claim] = []
    for task, plan in scale["tasks"].items():
        results: dict[str, list[dict]] = {}
        for seed in scale["seeds"]:
            run = SeedRun(plan, seed, out / "runs" / task / f"seed{seed}", log, task)
            for arm in plan.arms:
                results.setdefault(arm, []).append(run.arm(arm))
            if plan.mixed:
                _, hasb, uniform = run.mixed()
                results.setdefault("supernet_hasb", []).append(hasb)
                results.setdefault("supernet_uniform", []).append(uniform)
        all_results[task] = results
        claims += task_claims(task, results)
        if plan.mixed:
            claims += mixed_claims(task, results)
    claims.append(storage_claim_resnet18(out))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    write_claims(out, claims)
    plans = "\n".join(f"- {task}: {plan}" for task, plan in scale["tasks"].items())
    tables = [_arm_table(task, res) + "\n\n" + _mixed_table(task, res) for task, res in all_results.items()]
    notes = "\n\n".join(tables + [
        f"Scale: {'tiny' if tiny else 'smoke'}, seeds {scale['seeds']}, wall-clock {seconds:.0f} s, process CPU "
        f"time {cpu_seconds:.0f} s, {torch.get_num_threads()} thread(s), load average at the end "
        f"{os.getloadavg()[0]:.1f} (other jobs shared the machine; results cached per arm are not re-timed)."
        f"\n\n{plans}",
        "ALRS modes: `simple` = eta(D) * lr, `literal` = eq. (6) with the bracket clamped at 0, `off` = lr. "
        "Post-hoc: activation scales and BN statistics re-estimated, no gradient step. SuperNets: 1 "
        "transitional-BN SuperNet per sampler, initialised from `ours`; ILP objective `hawq_perturbation`."])
    write_report(out, "Double Rounding — miniature reproduction", PAPER_TABLE, claims, notes,
                 _plots(out, all_results))
    print(f"wrote {out / 'claims.json'} and {out / 'report.md'} after {seconds:.0f} s")
    return 0


def run_full(out: Path, config: str | None, overrides: list[str], init: str | None = None) -> int:
    """The paper's pipeline on the user's data: FP32 (or ``init``, e.g. torchvision's weights) -> multi-precision
    -> accuracy per bit-width from the int8 file."""
    from double_rounding.cli import run as cli_main

    if not config:
        raise UsageError("--scale full needs --config (e.g. double_rounding/configs/resnet18_imagenet.yaml) and "
                         "data.root=/path/to/imagenet (or DOUBLE_ROUNDING_DATA)")
    cfg = load_config(config, Config, overrides)
    if cfg.data.dataset == "imagenet":
        from double_rounding.data import imagenet_root

        imagenet_root(cfg.data)
    base = ["--config", config, "--out", str(out / "runs"), *[f"--set={o}" for o in overrides]]
    if init is None:
        cli_main(["train", "--stage", "fp32", *base])
    cli_main(["train", "--stage", "multi", *base, *(["--init", init] if init else [])])
    return cli_main(["eval", "--int8", str(out / "runs" / "multi" / "model.int8.pt"), "--bits", "all",
                     "--config", config, "--json", str(out / "eval.json"), *[f"--set={o}" for o in overrides]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="double_rounding reproduce")
    parser.add_argument("--scale", choices=["smoke", "full"], default="smoke")
    parser.add_argument("--tiny", action="store_true", help="the same code path with a tiny budget (CI)")
    parser.add_argument("--out", default=None, help="output folder (default results/double_rounding/<scale>)")
    parser.add_argument("--config", default=None, help="full scale: the run config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--init", default=None, help="full scale: FP32 weights to start from (skips FP32 training)")
    args = parser.parse_args(argv)
    out = results_dir("double_rounding", args.scale, args.out)
    if args.scale == "smoke":
        return run_smoke(out, args.tiny)
    return run_full(out, args.config, args.overrides, args.init)
