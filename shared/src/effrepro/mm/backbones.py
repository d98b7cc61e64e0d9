"""Any timm-registered model as an mmdet / mmseg backbone (multi-scale features, frozen stages, our checkpoints).

Our vision projects register their models in timm (``partialnet_t2``, ``kerneldna_resnet50``, ...), and timm
ships FasterNet / ResNet baselines, so one wrapper serves every backbone of the detection and segmentation
tables: ``dict(type="TimmBackbone", model_name="partialnet_t2", out_indices=(0, 1, 2, 3), frozen_stages=-1,
checkpoint="runs/partialnet_t2/last.pt")``. The projects add named aliases (``type="PartialNet"``) on top.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from effrepro.errors import UsageError


def _checkpoint_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from effrepro.train import load_checkpoint

    obj = load_checkpoint(path)
    for key in ("ema", "model", "state_dict"):  # our Trainer writes model (+ ema); timm / mm write state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise UsageError(f"checkpoint {path} holds no model state dict (looked for ema, model, state_dict)")


def pretrained_checkpoint(init_cfg: Any) -> str | None:
    """The path in an mm ``init_cfg=dict(type="Pretrained", checkpoint=path)`` (None for ``init_cfg=None``)."""
    if init_cfg is None:
        return None
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained" and init_cfg.get("checkpoint"):
        return str(init_cfg["checkpoint"])
    raise UsageError(f"init_cfg {init_cfg!r}: only dict(type='Pretrained', checkpoint=path) is supported "
                     "(or pass checkpoint=path)")


class TimmBackbone(nn.Module):
    """``timm.create_model(model_name, features_only=True)`` with mm conventions.

    ``frozen_stages=k`` freezes the stem and the first ``k`` feature stages (-1: nothing) and keeps their
    BatchNorms in eval mode; ``norm_eval`` keeps every BatchNorm in eval mode. ``checkpoint`` loads an
    ImageNet checkpoint of the classification model (EMA weights when present); the classifier head is
    dropped, and any other missing or unexpected key is an error, never silently ignored. The mm spelling
    ``init_cfg=dict(type="Pretrained", checkpoint=path)`` does the same.
    """

    def __init__(self, model_name: str, out_indices: tuple[int, ...] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, checkpoint: str | None = None, init_cfg: Any = None,
                 **model_kwargs: Any) -> None:
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(model_name, pretrained=False, features_only=True,
                                          out_indices=tuple(out_indices), **model_kwargs)
        except IndexError:
            levels = f"{model_name}'s feature levels"
            raise UsageError(f"out_indices {tuple(out_indices)} out of range for {levels}") from None
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise UsageError(f"unknown timm model {model_name!r}; is its project installed and imported?") from None
            raise
        self.model_name, self.frozen_stages, self.norm_eval = model_name, int(frozen_stages), bool(norm_eval)
        self.model_kwargs = dict(model_kwargs)
        self.out_channels = list(self.body.feature_info.channels())
        self.stage_modules = [m.replace(".", "_") for m in self.body.feature_info.module_name()]
        checkpoint = checkpoint or pretrained_checkpoint(init_cfg)
        if checkpoint:
            self.load_classification_checkpoint(checkpoint)
        self._freeze()

    def _feature_key(self, key: str) -> str:
        """timm's feature wrapper flattens ``stages.0.x`` into ``stages_0.x``; map a classifier key the same way."""
        for module in self.body.feature_info.module_name():
            if key.startswith(module + "."):
                return module.replace(".", "_") + key[len(module):]
        return key

    def load_classification_checkpoint(self, path: str | os.PathLike) -> None:
        import timm

        own = self.body.state_dict()
        # The keys the feature model drops on purpose (classifier head, unused last stages) may be skipped;
        # anything else missing or unexpected means the checkpoint is of another model.
        full = timm.create_model(self.model_name, pretrained=False, **self.model_kwargs).state_dict()
        droppable = {self._feature_key(k) for k in full} - set(own)
        renamed = {self._feature_key(k): v for k, v in _checkpoint_state(path).items()}
        missing = sorted(set(own) - set(renamed))
        unexpected = sorted(set(renamed) - set(own) - droppable)
        if missing or unexpected:
            what = (f"missing {len(missing)} keys (e.g. {missing[0]})" if missing
                    else f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
            raise UsageError(f"checkpoint {path} does not match {self.model_name}: {what}")
        shapes = [k for k in own if renamed[k].shape != own[k].shape]
        if shapes:
            raise UsageError(f"checkpoint {path} does not match {self.model_name}: shape of {shapes[0]}")
        self.body.load_state_dict({k: renamed[k] for k in own})

    def _stage_root(self) -> nn.Module:
        """The module whose children are the stem and the stages, in order (timm's feature model itself)."""
        return self.body

    def _frozen_children(self) -> list[nn.Module]:
        """mm convention: 0 freezes the stem (everything before the first output stage), k also stages 1..k."""
        if self.frozen_stages < 0:
            return []
        children = list(self._stage_root().named_children())
        names = [name for name, _ in children]
        first = self.stage_modules[0]
        if self.frozen_stages > len(self.stage_modules) or first not in names:
            raise UsageError(f"cannot freeze {self.frozen_stages} stages of {self.model_name} "
                             f"(stages: {', '.join(self.stage_modules)})")
        end = names.index(first) if self.frozen_stages == 0 else names.index(
            self.stage_modules[self.frozen_stages - 1]) + 1
        return [child for _, child in children[:end]]

    def _freeze(self) -> None:
        for child in self._frozen_children():
            child.eval()
            for p in child.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:  # mm calls this; weights come from the constructor (random or checkpoint)
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))


def register_backbone(cls: type, name: str | None = None) -> None:
    """Register ``cls`` in both mmdet's and mmseg's MODELS registries (idempotent)."""
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    for registry in (DET_MODELS, SEG_MODELS):
        if (name or cls.__name__) not in registry.module_dict:
            registry.register_module(name=name or cls.__name__, module=cls)


def register_timm_backbone() -> None:
    register_backbone(TimmBackbone)
