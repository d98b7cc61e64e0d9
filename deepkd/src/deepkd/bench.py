"""``deepkd bench``: step time of DKD (one buffer) vs DOT vs DeepKD (three reverse passes / one batched VJP).

Paired, interleaved repeats on the same model, batch and machine state (``effrepro.bench``); reported as
ratios against the single-buffer DKD step. Every arm runs the complete training step: student forward,
teacher forward (or cached teacher logits with ``teacher=None``), losses, gradients, optimizer update.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from effrepro.bench import cuda_sync, paired_benchmark, ratio

from deepkd.config import TrainConfig
from deepkd.deepkd import build_optimizer
from deepkd.distillers import build_distiller
from deepkd.engine import DistillStep, StepCounter
from deepkd.models import build_model

ARMS = {
    "dkd": {"method": "sgd"},
    "dot": {"method": "dot"},
    "deepkd_backward": {"method": "deepkd", "grad_method": "backward"},
    "deepkd_batched": {"method": "deepkd", "grad_method": "batched"},
}
INPUT_SHAPES = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224), "mnist": (1, 28, 56)}


def step_benchmark(student: str = "resnet8x4", teacher: str | None = "resnet32x4", family: str = "cifar",
                   batch_size: int = 64, num_classes: int = 100, device: str | None = None, repeats: int = 21,
                   warmup: int = 3, seed: int = 0) -> dict[str, Any]:
    """Median seconds per training step of each arm and the ratios to ``dkd``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    base_student = build_model(student, num_classes, family)
    teacher_model = build_model(teacher, num_classes, family).to(dev).eval() if teacher else None
    x = torch.rand(batch_size, *INPUT_SHAPES[family], device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    cached = None if teacher_model is not None else torch.randn(batch_size, num_classes, device=dev) * 3
    batch = (x, y) if cached is None else (x, y, cached)
    fns = {}
    for name, solver in ARMS.items():
        cfg = TrainConfig(student=student, teacher=teacher)
        for key, value in solver.items():
            setattr(cfg.solver, key, value)
        decoupled = solver["method"] == "deepkd"
        distiller = build_distiller("dkd", copy.deepcopy(base_student), teacher_model or torch.nn.Identity(),
                                    decoupled=decoupled, warmup=1).to(dev).train()
        optimizer = build_optimizer(distiller.learnable_parameters(), cfg.solver)
        step = DistillStep(cfg, StepCounter(10**9), lambda epoch: 0)
        fns[name] = (lambda s=step, d=distiller, o=optimizer: s(d, batch, o))
    sync = cuda_sync if dev.type == "cuda" else None
    stats = paired_benchmark(fns, warmup=warmup, repeats=repeats, sync=sync)
    return {
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "student": student, "teacher": teacher or "cached logits", "batch_size": batch_size,
        "median_s": {k: v.median for k, v in stats.items()},
        "ratio_to_dkd": {k: ratio(stats, k, "dkd") for k in stats},
        "threads": torch.get_num_threads(),
    }
