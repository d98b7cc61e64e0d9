"""``deepkd eval``: top-1 / top-5 of a trained student (or teacher) checkpoint on the test / val split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.train import dist_setup, load_checkpoint

from deepkd.config import TrainConfig
from deepkd.data import build_dataset, test_loader
from deepkd.engine import evaluate
from deepkd.models import family_of
from deepkd.train import load_teacher


def evaluate_checkpoint(ckpt: str | Path, cfg: TrainConfig, arch: str | None = None) -> dict[str, Any]:
    """Load ``ckpt`` (``student.pt`` / ``teacher.pt`` / a ``{"model": ...}`` file) and evaluate it.

    The architecture comes from the checkpoint's ``arch`` field, else from ``arch`` (``--arch``).
    """
    obj = load_checkpoint(ckpt, expect=("student", "train-state", "state-dict"))
    name = arch or (obj.get("arch") if isinstance(obj, dict) else None)
    if not name:
        raise UsageError(f"{ckpt} does not name its architecture; pass --arch <model name>")
    if isinstance(obj, dict) and obj.get("dataset") not in (None, cfg.data.dataset):
        raise UsageError(f"{ckpt} was trained on {obj['dataset']}, not {cfg.data.dataset}; pass --dataset "
                         f"{obj['dataset']}")
    num_classes = int(obj.get("num_classes") or cfg.classes) if isinstance(obj, dict) else cfg.classes
    dist = dist_setup(cfg.device)
    model = load_teacher(ckpt, name, num_classes, family_of(cfg.data.dataset)).to(dist.device)
    loader = test_loader(build_dataset(cfg, train=False), cfg, dist)
    return {"checkpoint": str(ckpt), "arch": name, **evaluate(model, loader, dist.device)}
