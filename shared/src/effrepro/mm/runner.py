"""Train and evaluate an mmdet detector on a COCO-layout folder with mmengine's Runner (CPU or GPU).

Used by the vision projects' ``det`` stage on the COCO-format digits miniature (``effrepro.data.write_coco_digits``)
and, with ``--coco``, on COCO 2017 itself (same code path; only the paths, classes and schedule differ).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError


def _dataset(root: Path, split: str, classes: tuple[str, ...] | None, ann: str, img_dir: str, test: bool,
             scale: tuple[int, int]) -> dict[str, Any]:
    pack_keys = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")
    # No flip augmentation: it is harmless on COCO but turns digits into other shapes on the miniature.
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
                dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                dict(type="PackDetInputs", meta_keys=pack_keys) if test else dict(type="PackDetInputs")]
    dataset = dict(type="CocoDataset", data_root=str(root), ann_file=ann, data_prefix=dict(img=img_dir),
                   pipeline=pipeline, test_mode=test)
    if classes is not None:
        dataset["metainfo"] = dict(classes=classes)
    if not test:
        dataset["filter_cfg"] = dict(filter_empty_gt=True, min_size=0)
    return dataset


def detection_config(model: dict[str, Any], data_root: str | os.PathLike, work_dir: str | os.PathLike, epochs: int,
                     lr: float, batch_size: int = 4, classes: tuple[str, ...] | None = None,
                     train_split: str = "train", val_split: str = "val", weight_decay: float = 1e-4,
                     milestones: tuple[int, ...] = (), warmup_iters: int = 100, seed: int = 0,
                     num_workers: int = 0, image_scale: tuple[int, int] = (1333, 800),
                     check: bool = True, clip_grad: float | None = 35.0) -> dict[str, Any]:
    """An mmengine Runner config: AdamW (the FasterNet / PartialNet detection recipe), linear warm-up,
    step decay at ``milestones`` (epochs), COCO bbox + segm metric on the val split. ``check=False`` skips the
    data-layout check (for writing config files with a placeholder ``data_root``). ``clip_grad``: the max-norm
    of the recipe's gradient clipping, ``None`` for none (the default 35 steadies the miniatures, trained from
    random initialisation; the papers' COCO recipes pass their own)."""
    root = Path(data_root)
    for split in (train_split, val_split) if check else ():
        if not (root / "annotations" / f"instances_{split}.json").is_file() or not (root / split).is_dir():
            raise UsageError(f"COCO layout not found under {root}: need annotations/instances_{split}.json and "
                             f"{split}/ (for COCO 2017: train2017/, val2017/ and their instances_*.json)")

    def loader(split: str, test: bool) -> dict[str, Any]:
        return dict(batch_size=1 if test else batch_size, num_workers=num_workers, persistent_workers=False,
                    sampler=dict(type="DefaultSampler", shuffle=not test),
                    dataset=_dataset(root, split, classes, f"annotations/instances_{split}.json", f"{split}/", test,
                                     image_scale))

    return dict(
        default_scope="mmdet",
        model=model,
        work_dir=str(work_dir),
        train_dataloader=loader(train_split, False),
        val_dataloader=loader(val_split, True),
        val_evaluator=dict(type="CocoMetric", ann_file=str(root / "annotations" / f"instances_{val_split}.json"),
                           metric=["bbox", "segm"]),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=epochs + 1),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=lr, weight_decay=weight_decay),
                           clip_grad=None if clip_grad is None else dict(max_norm=clip_grad, norm_type=2)),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup_iters),
            dict(type="MultiStepLR", begin=0, end=epochs, by_epoch=True, milestones=list(milestones), gamma=0.1),
        ],
        default_hooks=dict(timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50),
                           param_scheduler=dict(type="ParamSchedulerHook"),
                           checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=1),
                           sampler_seed=dict(type="DistSamplerSeedHook")),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        log_level="WARNING",
        randomness=dict(seed=seed),
        resume=True,
    )


ADE20K_PIPELINES = {
    "train": [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
              dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
              dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
              dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")],
    "val": [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(2048, 512), keep_ratio=True),
            dict(type="LoadAnnotations", reduce_zero_label=True), dict(type="PackSegInputs")],
}


def ade20k_runner(model: dict[str, Any], data_root: str | os.PathLike, work_dir: str | os.PathLike,
                  optimizer: dict[str, Any], iters: int, batch_size: int, workers: int = 4) -> dict[str, Any]:
    """An mmseg Runner config on ADE20K (``ADEChallengeData2016`` layout, 150 classes): mmseg's ADE20K
    pipeline with 512x512 crops, ``optimizer`` with poly decay over ``iters``, mIoU on the validation split."""
    def loader(split: str, batch: int) -> dict[str, Any]:
        folder = "training" if split == "train" else "validation"
        return dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                    sampler=dict(type="InfiniteSampler" if split == "train" else "DefaultSampler",
                                 shuffle=split == "train"),
                    dataset=dict(type="ADE20KDataset", data_root=str(data_root),
                                 data_prefix=dict(img_path=f"images/{folder}", seg_map_path=f"annotations/{folder}"),
                                 pipeline=ADE20K_PIPELINES[split]))

    return dict(
        default_scope="mmseg", model=model, work_dir=str(work_dir),
        train_dataloader=loader("train", batch_size), val_dataloader=loader("val", 1),
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters // 10),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None),
        param_scheduler=[dict(type="PolyLR", eta_min=0.0, power=0.9, begin=0, end=iters, by_epoch=False)],
        default_hooks=dict(timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50),
                           param_scheduler=dict(type="ParamSchedulerHook"),
                           checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=iters // 10,
                                           max_keep_ckpts=1),
                           sampler_seed=dict(type="DistSamplerSeedHook")),
        env_cfg=dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        log_processor=dict(by_epoch=False), log_level="INFO", randomness=dict(seed=0), resume=True,
    )


_BUFFER = "effrepro.history_buffer"


def resume_globals() -> list[Any]:
    """What the checkpoints of :func:`train_and_evaluate` hold beyond tensors and plain containers: NumPy arrays
    and scalars (logged metrics) and ``collections.Counter`` (the milestones of mmengine's ``MultiStepLR``)."""
    from collections import Counter

    from effrepro.train.checkpoint import LEGACY_GLOBALS

    return [Counter, *LEGACY_GLOBALS]


def safe_checkpoint_hook() -> Any:
    """An mmengine hook that keeps the runner's checkpoints loadable as data only.

    On save, the message hub's ``HistoryBuffer`` objects (which pickle references to their own methods) become
    plain dicts of lists; on load they are rebuilt, and ``meta["config"]``, which mmengine's resume would execute
    as a Python config, is dropped (our runner never writes it)."""
    from mmengine.hooks import Hook
    from mmengine.logging import HistoryBuffer

    class SafeCheckpointHook(Hook):
        priority = "VERY_LOW"

        def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
            scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
            for key, buffer in list(scalars.items()):
                if isinstance(buffer, HistoryBuffer):
                    log, count = buffer.data
                    scalars[key] = {_BUFFER: True, "log": log.tolist(), "count": count.tolist(),
                                    "max_length": int(buffer.max_length)}

        def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
            if isinstance(checkpoint.get("meta"), dict):
                checkpoint["meta"].pop("config", None)
            scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
            for key, value in list(scalars.items()):
                if isinstance(value, dict) and value.get(_BUFFER):
                    scalars[key] = HistoryBuffer(value["log"], value["count"], value["max_length"])

    return SafeCheckpointHook()


def with_launcher(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for the process group it runs in: under ``torchrun`` (``WORLD_SIZE`` > 1) mmengine's ``pytorch``
    launcher (one process per device, NCCL on GPUs, gloo on CPUs), so ``auto_scale_lr`` sees the real total batch;
    a single process runs without a launcher. A config that names its launcher is left alone."""
    if "launcher" in config or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return config
    import torch

    env = dict(config.get("env_cfg", {}))
    env["dist_cfg"] = {**env.get("dist_cfg", {}), "backend": "nccl" if torch.cuda.is_available() else "gloo"}
    return {**config, "launcher": "pytorch", "env_cfg": env}


def train_and_evaluate(config: dict[str, Any]) -> dict[str, float]:
    """Run ``config`` (from :func:`detection_config`): train (resuming from ``work_dir`` if a checkpoint is there),
    then evaluate; returns mmdet's COCO metrics (``coco/bbox_mAP``, ``coco/segm_mAP``, ...). Under ``torchrun``
    it runs distributed (:func:`with_launcher`)."""
    from effrepro.mm.backbones import register_timm_backbone
    from effrepro.mm.mmcv_fallback import install

    install()
    register_timm_backbone()
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=False)
    loop = config.get("train_cfg", {})
    if loop.get("type") == "EpochBasedTrainLoop":
        # mmengine's loop validates after its last epoch whatever val_interval says, and the val loop below evaluates
        # the same model again (it doubled the miniature's evaluation time): start validation past the last epoch.
        # Config files written for mmdet's tools/train.py keep the loop's final validation.
        config = {**config, "train_cfg": {**loop, "val_begin": loop["max_epochs"] + 1}}
    runner = Runner.from_cfg(Config(with_launcher(config)))
    # mmengine resumes from its work_dir with torch.load's default, weights_only=True (torch >= 2.6); the hook keeps
    # our checkpoints within that (and within the few NumPy / Counter globals allowed here), so a file in the
    # work_dir that would import anything more is refused, never executed.
    import pickle

    import torch

    runner.register_hook(safe_checkpoint_hook())
    try:
        with torch.serialization.safe_globals(resume_globals()):
            runner.train()
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise UsageError(f"refusing to resume from the checkpoint in {runner.work_dir}: it is not plain data "
                         f"(it would import {found.group(1) if found else 'code'}); use a new work_dir, or delete "
                         "its checkpoints if this project wrote them before checkpoints were made data-only") from None
    metrics = runner.val_loop.run()  # the trained model in memory; runner.val() would reload a checkpoint
    if not metrics:  # mmdet returns {} when the model predicted nothing above the score threshold
        return {"coco/bbox_mAP": 0.0, "coco/segm_mAP": 0.0, "empty_predictions": 1.0}
    return {k: float(v) for k, v in metrics.items()}
