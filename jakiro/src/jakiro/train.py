"""Training the four draft heads the paper compares, on the engine's trainer with identical data and recipe.

Methods (the four arms of the paper's comparison):

* ``eagle2``: the engine's EAGLE-2 head (dense SwiGLU, intermediate = the target's), EAGLE loss;
* ``jakiro``: 2 SwiGLU experts (intermediate = H), 4-logit router, loss on both branches (const 0.5);
* ``jakiro_nocepd``: the same MoE trained without the contrastive branch (const 0), drafted EAGLE-2 style;
* ``jakiro_star``: Jakiro* (2 GELU experts, intermediate = the target's, 2-logit router), branch-0 loss.

Every head goes through ``effrepro.specdec.train_head`` (AdamW (0.9, 0.95), weight decay 1e-3, cosine schedule with
warm-up, gradient clipping by value 0.5, uniform feature noise 0.2 * 512 / L, ``v_w`` 1.0, ``p_w`` 0.1) with the
same seed, data order and number of steps. All four compute their loss on the supervised rows only
(:func:`jakiro.jakiro.masked_feature_losses`; same value as the dense formula).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftHead, HeadTrainConfig, train_head
from effrepro.specdec.eagle import build_eagle_head, head_from_checkpoint

from jakiro.jakiro import JakiroConfig, JakiroDraft, eagle_masked_loss, load_official_state_dict

METHODS = ("eagle2", "jakiro", "jakiro_nocepd", "jakiro_star")
CONST = {"jakiro": 0.5, "jakiro_nocepd": 0.0}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return method


def build_head(method: str, target_model: Any, fc_bias: bool = True) -> DraftHead:
    """A fresh head for ``method`` with the target's widths and its embedding frozen in."""
    check_method(method)
    embed = target_model.get_input_embeddings().weight.detach().float()
    if method == "eagle2":
        return build_eagle_head(target_model.config, embed, fc_bias=fc_bias)
    variant = "star" if method == "jakiro_star" else "jakiro"
    head = JakiroDraft(JakiroConfig.from_target(target_model.config, variant=variant, fc_bias=fc_bias))
    head.freeze_embedding(embed)
    return head


def method_train_config(method: str, base: HeadTrainConfig) -> HeadTrainConfig:
    """The shared recipe plus the method's loss weights (``const`` for the contrastive branch)."""
    weights = {"v_w": 1.0, "p_w": 0.1, **base.loss_weights}
    if method in CONST:
        weights["const"] = CONST[method]
    return replace(base, loss_weights=weights)


def train_method(method: str, target_model: Any, data_dir: str | Path | list[Path], config: HeadTrainConfig,
                 out_dir: str | Path, progress: bool = True, resume: bool = True,
                 fc_bias: bool = True) -> dict[str, Any]:
    """Train one method's head on a draft-data folder; writes ``out_dir/head.pt`` (+ ``last.pt``, metrics)."""
    head = build_head(method, target_model, fc_bias=fc_bias)
    lm_head = target_model.get_output_embeddings().weight.detach().float()
    loss_fn = eagle_masked_loss if method == "eagle2" else None
    result = train_head(head, lm_head, data_dir, method_train_config(method, config), out_dir, loss_fn=loss_fn,
                        progress=progress, resume=resume)
    result["method"] = method
    return result


def load_head(path: str | Path, target_model: Any, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> DraftHead:
    """Rebuild a trained head (``head.pt`` from ``train_method``) for ``target_model``; clear errors on mismatch.

    The EAGLE-2 baseline may also be a released EAGLE-2 head (SafeAILab ``yuhuili/EAGLE-*``): its folder or weights
    file, or a method folder holding its ``pytorch_model.bin`` / ``model.safetensors`` where ``head.pt`` would be
    (the engine maps its keys and checks it against the target), so the baseline need not be retrained."""
    from effrepro.specdec.eagle import RELEASED_FILES, is_released_checkpoint, read_eagle_head
    from effrepro.train import load_checkpoint
    from effrepro.train.checkpoint import config_from

    path = Path(path)
    if not path.exists() and any((path.parent / name).is_file() for name in RELEASED_FILES):
        path = path.parent  # a released EAGLE-2 head in place of head.pt
    if is_released_checkpoint(path):
        embed = target_model.get_input_embeddings().weight.detach().float()
        return read_eagle_head(path, embed, target_model.config).to(device, dtype).eval()
    state = load_checkpoint(path, required=("config", "state_dict"), expect="draft-head")
    embed = target_model.get_input_embeddings().weight.detach().float()
    method = state.get("method")
    if method == "EagleHead":
        head: DraftHead = head_from_checkpoint(state, embed, source=str(path))
    elif method == "JakiroDraft":
        head = JakiroDraft(config_from(JakiroConfig, state["config"], str(path)))
        head.check_compatible(int(embed.shape[1]), int(embed.shape[0]))
        head.freeze_embedding(embed)
        load_official_state_dict(head, state["state_dict"])
    else:
        raise UsageError(f"{path} holds a {method!r} head; expected one written by `jakiro train`")
    return head.to(device, dtype).eval()


def head_summary(head: DraftHead) -> dict[str, Any]:
    """Trainable parameters and the config, for reports."""
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    config = asdict(head.config) if hasattr(head, "config") else {}
    return {"trainable_params": trainable, "config": config}
