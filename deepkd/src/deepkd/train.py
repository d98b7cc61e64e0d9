"""Full-scale training: ``deepkd train`` (a student with any distiller / method) and ``deepkd train-teacher``.

Single process or ``torchrun --nproc_per_node=N -m deepkd.cli train ...`` (DDP, one GPU per process).
Resumes from ``<out>/last.pt``; writes ``<out>/student.pt`` (``{"model", "arch", "num_classes", ...}``,
loadable as a teacher) and ``<out>/metrics.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from effrepro.config import config_to_dict
from effrepro.errors import UsageError
from effrepro.train import Trainer, dist_setup, load_checkpoint, load_state_dict_checked, save_checkpoint
from effrepro.train import seed_everything as seed_all
from torch import nn
from torch.utils.data import Dataset

from deepkd.config import TrainConfig, data_root, validate
from deepkd.data import build_dataset, test_loader, train_loader
from deepkd.deepkd import build_optimizer, topk_schedule
from deepkd.distillers import build_distiller
from deepkd.engine import DistillStep, StepCounter, build_scheduler, evaluate
from deepkd.models import build_model, family_of


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classifier_key(model: nn.Module) -> str:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return f"{last}.weight"


def load_teacher(path: str | Path, arch: str, num_classes: int, family: str) -> nn.Module:
    """Build ``arch`` and load a teacher checkpoint into it, with clear errors for a mismatch.

    Accepts ``{"model": state_dict}`` (mdistiller's CIFAR teachers, ``deepkd train-teacher`` output), a
    plain state dict (torchvision weight files), a ``module.``-prefixed state dict, or a ``last.pt`` of
    this project's trainer (the ``student.`` weights are taken).
    """
    obj = load_checkpoint(path, expect=("student", "train-state", "state-dict"))
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"teacher checkpoint {path} holds no state dict (expected {{'model': state_dict}})")
    if isinstance(obj, dict) and obj.get("arch") not in (None, arch):
        raise UsageError(f"teacher checkpoint {path} holds a {obj['arch']} model, but teacher={arch}; "
                         f"set teacher={obj['arch']} or pass the {arch} checkpoint")
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    state = _strip_prefix(state, "module.")
    model = build_model(arch, num_classes, family)
    key = _classifier_key(model)
    if key in state and state[key].shape[0] != num_classes:
        raise UsageError(f"teacher checkpoint {path} predicts {state[key].shape[0]} classes, but the run has "
                         f"{num_classes}; use a teacher trained on this dataset")
    try:
        load_state_dict_checked(model, state, source=f"teacher checkpoint {path}")
    except UsageError as exc:
        raise UsageError(f"{exc} (is it a {arch} checkpoint?)") from None
    return model


def _teacher(cfg: TrainConfig) -> nn.Module | None:
    if cfg.distiller.name.lower() == "none":
        return None
    if not cfg.teacher_ckpt:
        raise UsageError(f"distillation needs teacher_ckpt=<path to the trained {cfg.teacher}>; train one with "
                         "`deepkd train-teacher` (CIFAR) or place the torchvision weights file (ImageNet)")
    return load_teacher(cfg.teacher_ckpt, cfg.teacher, cfg.classes, family_of(cfg.data.dataset))


def build_run(cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Distiller, optimizer, scheduler and step function for ``cfg`` (no data yet)."""
    family = family_of(cfg.data.dataset)
    seed_all(cfg.seed)
    student = build_model(cfg.student, cfg.classes, family)
    options = cfg.distiller.options()
    if cfg.solver.method == "deepkd":
        options.setdefault("release_quirks", cfg.solver.momentum_mode == "code")
        if cfg.distiller.name.lower() != "none":
            options["decoupled"] = True
    distiller = build_distiller(cfg.distiller.name, student, _teacher(cfg), **options)
    optimizer = build_optimizer(distiller.learnable_parameters(), cfg.solver)
    return distiller, {"optimizer": optimizer, "scheduler": build_scheduler(optimizer, cfg.solver)}


def export_student(path: Path, student: nn.Module, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    return save_checkpoint(path, {"model": student.state_dict(), "arch": cfg.student, "num_classes": cfg.classes,
                                  "dataset": cfg.data.dataset, "metrics": metrics,
                                  "config": config_to_dict(cfg)})


EpochProbe = Callable[[Any, int], dict[str, float]]


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = True,
          datasets: tuple[Dataset, Dataset] | None = None, probe: EpochProbe | None = None) -> dict[str, Any]:
    """Train one student (or teacher, with ``distiller.name=none``) and evaluate it every epoch.

    ``datasets`` (train, test) replaces the configured ones (the miniature passes MNIST-100 with cached
    teacher logits); ``probe(distiller, finished_epochs)`` adds measurements (e.g. GSNR) to the epoch's row.
    """
    validate(cfg)
    if datasets is None:
        data_root(cfg)  # a missing data path fails before any model or teacher is built
    out = Path(out_dir)
    dist = dist_setup(cfg.device)
    distiller, parts = build_run(cfg)
    two_views = cfg.data.two_views if cfg.data.two_views is not None else distiller.two_views
    if distiller.two_views and not two_views:
        raise UsageError(f"{cfg.distiller.name} trains on two views; leave data.two_views unset or true")
    if datasets is None:
        datasets = build_dataset(cfg, train=True, two_views=two_views), build_dataset(cfg, train=False)
    loader = train_loader(datasets[0], cfg, dist)
    tests = test_loader(datasets[1], cfg, dist)
    counter = StepCounter(len(loader))

    def eval_fn(model: nn.Module) -> dict[str, float]:
        row = evaluate(model, tests, dist.device)
        if probe is not None:
            with torch.enable_grad():
                row.update(probe(distiller, counter.step // counter.steps_per_epoch))
        return row

    trainer = Trainer(
        distiller, parts["optimizer"], loader, epochs=cfg.solver.epochs, out_dir=out, scheduler=parts["scheduler"],
        step_fn=DistillStep(cfg, counter, topk_schedule(cfg)), config=config_to_dict(cfg), dist=dist,
        eval_fn=eval_fn, progress=progress, extra_state={"step_counter": counter}, resume=resume,
    )
    start = time.perf_counter()
    result = trainer.fit()
    history = result["history"]
    top1 = [row["eval_top1"] for row in history]
    metrics = {"top1": top1[-1], "best_top1": max(top1), "top5": history[-1]["eval_top5"],
               "epochs": len(history), "seconds": time.perf_counter() - start}
    if dist.is_main:
        export_student(out / "student.pt", distiller.student, cfg, metrics)
    return {"history": history, **metrics}
