"""One seed of Double Rounding's CPU miniature: the FP32 start and every quantised arm trained from it, each
evaluated from its exported int8 file. ``double_rounding.reproduce`` holds the experiment that combines them.

Arms (``name: what``):

* ``fp32``: the FP32 model every quantised arm starts from;
* ``ours``: joint {8,6,4,2} double rounding, per-bit activation scales and BN, one optimizer step per precision
  (Algorithm A.2), ALRS ``simple``; ``ours_noalrs``: ALRS off; ``ours_accum``: gradients of the four precisions
  summed into one step (Algorithm A.1);
* ``sep{b}``: a separate LSQ model at b bits with as many optimizer steps as the joint run takes in all
  (its epochs x the number of precisions: the joint run steps once per precision per batch);
* ``floor``: joint training with a floor shift; ``posthoc``: an 8-bit-only model (same step count as ``sep8``)
  switched down by double rounding after training, activation scales and BN statistics re-estimated.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from effrepro.config import load_config
from effrepro.quant import load_int8, payload_bytes
from effrepro.train import dist_setup, seed_everything

from double_rounding.config import Config
from double_rounding.data import build_loaders
from double_rounding.eval import evaluate_int8
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
        if arm == "posthoc":
            return self.quantized(out, list(self.plan.bits), "simple", "half_up", "per_precision",
                                  len(self.plan.bits), train_bits=[max(self.plan.bits)])
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
                  train_bits: list[int] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        cfg.multi.alrs, cfg.multi.train_bits, cfg.multi.update_mode = alrs, train_bits, mode
        cfg.multi.epochs = self.plan.q_epochs * epoch_factor
        state = torch.load(self.root / "fp32" / "fp32.pt", weights_only=True)
        model = quant_model_from_fp32(cfg, state, bits, tie, self.calib)
        result = train_quantized(cfg, model, cfg.multi, self.train_loader, out, self.dist, "multi", progress=False)
        available = train_bits or bits
        if train_bits:
            available = posthoc_switch(model, cfg, self.calib, first_batches(self.train_loader, 8), train_bits[0])
        path = export_model(model, cfg, out / "model.int8.pt", available)
        rows = evaluate_int8(load_int8(path), self.test_loader, available)
        steps = cfg.multi.epochs * len(self.train_loader) * (len(train_bits or bits) if mode == "per_precision"
                                                               else 1)
        return {"acc": {str(r["config"]): r["top1"] for r in rows}, "seconds": result["seconds"],
                "cpu_seconds": result["cpu_seconds"], "epochs": cfg.multi.epochs, "optimizer_steps": steps,
                "payload": payload_bytes(load_int8(path)), "clamped_scales": result["clamped_scales"],
                "losses": _losses(result["history"])}
