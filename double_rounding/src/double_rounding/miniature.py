"""One seed of Double Rounding's CPU miniature: the FP32 start and every quantised arm trained from it, each
evaluated from its exported int8 file. ``double_rounding.reproduce`` holds the experiment that combines them.

Arms (``name: what``):

* ``fp32``: the FP32 model every quantised arm starts from;
* ``ours``: joint {8,6,4,2} double rounding, per-bit activation scales and BN, one optimizer step per precision
  (Algorithm A.2), ALRS ``simple``; ``ours_noalrs``: ALRS off; ``ours_accum``: gradients of the four precisions
  summed into one step (Algorithm A.1); ``ours_unshared``: the paper's "Ours*", the same joint training (ALRS,
  one step per precision) with one learnable weight step per precision instead of the shared ``s_h``, each
  precision's weight quantised directly from the FP32 master weight (its file holds one code set per precision);
* ``sep{b}``: a separate LSQ model at b bits with as many optimizer steps as the joint run takes in all
  (its epochs x the number of precisions: the joint run steps once per precision per batch);
* ``floor``: joint training with a floor shift; ``posthoc``: an 8-bit-only model (same step count as ``sep8``)
  switched down by double rounding after training, activation scales and BN statistics re-estimated;
* ``mixed``: the mixed-precision pipeline on ``plan.mixed_bits``: a joint model (ALRS) from the FP32 start,
  Hessian traces of the FP32 model, the SuperNet (transitional BN, HASB with the sigma ramp, sandwich: the
  highest and lowest precisions uniform every step) trained from the joint model, then from its one int8 file the
  uniform configurations, the ILP sub-net at each average-bit budget and random sub-nets at the same averages.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from effrepro.config import load_config
from effrepro.quant import graph_of, load_int8, payload_bytes, to_transitional
from effrepro.reproduce import Context, run_jobs
from effrepro.train import dist_setup, load_state_dict_checked, seed_everything

from double_rounding.config import Config
from double_rounding.data import build_loaders
from double_rounding.double_rounding import BitSampler
from double_rounding.eval import evaluate_int8
from double_rounding.mixed import compute_traces, searched_and_random
from double_rounding.models import build_float_model
from double_rounding.train import (
    calib_inputs,
    evaluate,
    export_model,
    first_batches,
    optimizer_steps,
    posthoc_switch,
    quant_model_from_fp32,
    train_fp32,
    train_quantized,
)

JOINT = {  # name: (ALRS mode, tie rule of the shift, update mode)
    "ours": ("simple", "half_up", "per_precision"),
    "ours_noalrs": ("off", "half_up", "per_precision"),
    "ours_accum": ("simple", "half_up", "accumulate"),
    "floor": ("simple", "floor", "per_precision"),
}


def task_config(plan: Any, seed: int) -> Config:
    model = {"arch": "tiny_cnn", "width": plan.width, "num_classes": 10, "input_size": [28, 28], "pool": [1, 1]}
    if plan.dataset == "mnist100":
        model.update(num_classes=100, input_size=[28, 56], pool=[1, 2])
    return load_config({
        "model": model, "seed": seed,
        "data": {"dataset": plan.dataset, "train_size": plan.train_size, "test_size": plan.test_size,
                 "batch_size": plan.batch_size, "eval_batch_size": 500},
        "quant": {"bits": list(plan.bits), "calib_images": 256},
        "fp32": {"epochs": plan.fp_epochs, "lr": plan.fp_lr, "alrs": "off", "log_every": 10**6},
        "multi": {"epochs": plan.q_epochs, "lr": plan.q_lr, "log_every": 10**6},
    }, Config)


def _losses(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch training loss at each bit-width (``train_loss_w<b>``), for the plateau plot."""
    keys = sorted({k for row in history for k in row if k.startswith("train_loss")})
    return {k[len("train_"):]: [row[k] for row in history if k in row] for k in keys}


class SeedRun:
    """The arms of one seed, sharing its FP32 start, data order and calibration batch."""

    def __init__(self, plan: Any, seed: int, root: Path) -> None:
        self.plan, self.seed, self.root = plan, seed, root
        self.cfg = task_config(plan, seed)
        self.dist = dist_setup("cpu")
        self.train_loader, self.test_loader = build_loaders(self.cfg.data, self.dist, seed)
        self._calib: torch.Tensor | None = None

    def run(self, arm: str) -> dict[str, Any]:
        """Train ``arm`` from scratch in ``root/<arm>`` (the FP32 arm must have run first for the others)."""
        out = self.root / arm
        shutil.rmtree(out, ignore_errors=True)  # a half-trained run of other settings must not be resumed
        seed_everything(self.seed)
        if arm == "fp32":
            return self.fp32(out)
        if arm.startswith("sep"):
            b = int(arm[3:])
            return self.quantized(out, [b], "off", "half_up", "per_precision", len(self.plan.bits))
        if arm == "mixed":
            return self.mixed(out)
        if arm == "posthoc":
            return self.quantized(out, list(self.plan.bits), "simple", "half_up", "per_precision",
                                  len(self.plan.bits), train_bits=[max(self.plan.bits)])
        if arm == "ours_unshared":
            return self.quantized(out, list(self.plan.bits), "simple", "half_up", "per_precision", 1,
                                  weight_scales="unshared")
        alrs, tie, mode = JOINT[arm]
        return self.quantized(out, list(self.plan.bits), alrs, tie, mode, 1)

    @property
    def calib(self) -> torch.Tensor:
        if self._calib is None:
            self._calib = calib_inputs(self.cfg, self.train_loader)
        return self._calib

    def fp32(self, out: Path) -> dict[str, Any]:
        model, result = train_fp32(self.cfg, self.train_loader, out, self.dist, progress=False)
        torch.save(model.state_dict(), out / "fp32.pt")
        metrics = evaluate(model, self.test_loader)
        payload = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return {"acc": {"32": metrics["top1"]}, "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
                "fp32_payload": payload, "losses": _losses(result["history"])}

    def quantized(self, out: Path, bits: list[int], alrs: str, tie: str, mode: str, epoch_factor: int,
                  train_bits: list[int] | None = None, weight_scales: str = "shared") -> dict[str, Any]:
        cfg = self.cfg
        cfg.multi.alrs, cfg.multi.train_bits, cfg.multi.update_mode = alrs, train_bits, mode
        cfg.quant.weight_scales = weight_scales
        cfg.multi.epochs = self.plan.q_epochs * epoch_factor
        state = torch.load(self.root / "fp32" / "fp32.pt", weights_only=True)
        model = quant_model_from_fp32(cfg, state, bits, tie, self.calib)
        result = train_quantized(cfg, model, cfg.multi, self.train_loader, out, self.dist, "multi", progress=False)
        available = train_bits or bits
        if train_bits:
            available = posthoc_switch(model, cfg, self.calib, first_batches(self.train_loader, 8), train_bits[0])
        path = export_model(model, cfg, out / "model.int8.pt", available)
        rows = evaluate_int8(load_int8(path), self.test_loader, available)
        steps = optimizer_steps(cfg.multi, len(self.train_loader), len(train_bits or bits))
        return {"acc": {str(r["config"]): r["top1"] for r in rows}, "seconds": result["seconds"],
                "cpu_seconds": result["cpu_seconds"], "epochs": cfg.multi.epochs, "optimizer_steps": steps,
                "payload": payload_bytes(load_int8(path)), "clamped_scales": result["clamped_scales"],
                "losses": _losses(result["history"])}

    def mixed(self, out: Path) -> dict[str, Any]:
        plan, bits = self.plan, list(self.plan.mixed_bits)
        start, cpu_start = time.perf_counter(), time.process_time()
        self.train_loader.set_epoch(0)  # the Hessian and calibration batches, whatever arm ran before in this seed
        cfg = task_config(plan, self.seed)
        cfg.quant.bits = bits
        cfg.supernet.epochs, cfg.supernet.lr, cfg.supernet.log_every = plan.mixed_epochs, plan.q_lr, 10**6
        cfg.mixed.hessian_probes = plan.hessian_probes
        state = torch.load(self.root / "fp32" / "fp32.pt", weights_only=True)
        float_model = build_float_model(cfg.model)
        load_state_dict_checked(float_model, state, "the FP32 checkpoint")
        traces = compute_traces(cfg, float_model, first_batches(self.train_loader, plan.hessian_batches)).traces
        model = quant_model_from_fp32(cfg, state, bits, "half_up", self.calib)
        train_quantized(cfg, model, cfg.multi, self.train_loader, out / "multi", self.dist, "multi", progress=False)
        to_transitional(model)
        sampler = BitSampler(graph_of(model).layers, bits, traces, "hasb")
        supernet = train_quantized(cfg, model, cfg.supernet, self.train_loader, out / "supernet", self.dist,
                                   "supernet", sampler=sampler, progress=False)
        artefact = load_int8(export_model(model, cfg, out / "model.int8.pt", bits, {"sampler": "hasb"}))
        rows = [{"kind": "uniform", "budget": float(b), "config": b} for b in bits]
        rows += searched_and_random(artefact, traces, plan.mixed_budgets, plan.mixed_random, self.seed)
        metrics = evaluate_int8(artefact, self.test_loader, [r["config"] for r in rows])
        return {"rows": [{**r, "top1": m["top1"]} for r, m in zip(rows, metrics)], "traces": traces,
                "supernet_losses": _losses(supernet["history"]), "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu_start}


def run_arms(plan: Any, seed: int, arms: tuple[str, ...], root: str) -> dict[str, dict[str, Any]]:
    """The arms of one seed in order (a worker process's job); the FP32 model is rebuilt first when a quantised
    arm needs it and its checkpoint is missing."""
    runner = SeedRun(plan, seed, Path(root))
    results = {}
    for arm in arms:
        if arm != "fp32" and not (runner.root / "fp32" / "fp32.pt").is_file():
            runner.run("fp32")
        results[arm] = runner.run(arm)
        print(f"[double_rounding] seed {seed} {arm}: {results[arm]['cpu_seconds']:.0f} CPU s", flush=True)
    return results


def arm_key(plan: Any, seed: int, arm: str) -> dict[str, Any]:
    """The settings an arm's result depends on (the mixed-precision fields only for the ``mixed`` arm): the key of
    its cache entry."""
    skip = {"name", "stages", "threads", "seeds", "sep_seeds", "ablation_seeds", "mixed_pilot_seeds",
            "mixed_confirm_seeds", "unshared_seeds", "workers", "config", "init", "config_overrides", "full_arms",
            "nproc"}
    mixed = {f.name for f in dataclasses.fields(plan) if f.name.startswith(("mixed_", "hessian_"))}
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)
            if f.name not in skip and (arm == "mixed" or f.name not in mixed)} | {"seed": seed, "arm": arm}


def run_seeds(plan: Any, ctx: Context, jobs: dict[int, tuple[str, ...]],
              results: dict[str, list[dict[str, Any]]]) -> None:
    """Each arm of each seed cached in ``runs/seed<k>_<arm>.json`` as soon as its seed finishes (an interrupted run
    resumes by arm); the seeds with arms left to compute run in ``plan.workers`` processes (one thread each), a
    seed's arms in order in one of them (its FP32 model first when a checkpoint is missing)."""
    missing = {seed: tuple(a for a in arms if not ctx.is_cached(f"seed{seed}_{a}", arm_key(plan, seed, a)))
               for seed, arms in jobs.items()}
    todo = {seed: (plan, seed, arms, str(ctx.runs / f"seed{seed}")) for seed, arms in missing.items() if arms}
    computed: dict[tuple[int, str], Any] = {}
    for seed, values, _ in run_jobs(run_arms, todo, plan.workers):
        for arm, value in values.items():
            computed[seed, arm] = ctx.cached(f"seed{seed}_{arm}", lambda v=value: v, key=arm_key(plan, seed, arm),
                                             seconds=value.get("seconds"))
    for seed, arms in jobs.items():
        for arm in arms:
            value = computed.get((seed, arm))
            if value is None:  # cached before this run (recomputed here only if the entry vanished meanwhile)
                value = ctx.cached(f"seed{seed}_{arm}", lambda s=seed, a=arm: run_arms(
                    plan, s, (a,), str(ctx.runs / f"seed{s}"))[a], key=arm_key(plan, seed, arm))
            results.setdefault(arm, []).append({"seed": seed, **value})
