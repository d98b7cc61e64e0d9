"""``mmcv._ext`` from torchvision, for ``mmcv-lite`` installs (no compiled ops).

The full mmcv 2.1 does not build against torch 2.14 on our machines (DESIGN.md §6), and ``mmcv-lite``
ships ``mmcv.ops`` without its compiled extension. Mask R-CNN and the segmentors need only NMS and RoIAlign
(average mode), which torchvision provides with the same (Detectron2) semantics. :func:`install` registers a
module named ``mmcv._ext`` with those three functions before ``mmcv.ops`` is imported; every other op name
resolves to a function that raises a clear error. A real compiled mmcv, when present, is used unchanged.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

import torch
from torch import Tensor
from torchvision import ops as tv_ops

FALLBACK_OPS = ("nms", "roi_align_forward", "roi_align_backward")


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """mmcv's NMS: indices kept, by decreasing score. ``offset=1`` is the legacy ``x2 - x1 + 1`` box width."""
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + offset], dim=1)
    return tv_ops.nms(boxes[:, :4].float(), scores.float(), float(iou_threshold))


def _check_avg(pool_mode: int) -> None:
    if pool_mode != 1:
        raise NotImplementedError(
            "RoIAlign pool_mode='max' needs the compiled mmcv; the torchvision fallback supports 'avg' "
            "(what Mask R-CNN uses). Install a full mmcv build, or use pool_mode='avg'."
        )


def _roi_align_forward(input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor,
                       aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """Fill ``output`` in place, as the compiled op does."""
    _check_avg(pool_mode)
    output.copy_(tv_ops.roi_align(input, rois.to(input.dtype), (aligned_height, aligned_width), spatial_scale,
                                  sampling_ratio, aligned))


def _roi_align_backward(grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor, grad_input: Tensor,
                        aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                        pool_mode: int, aligned: bool) -> None:
    """Fill ``grad_input`` in place.

    Average-mode RoIAlign is linear in its input (bilinear weights depend on the RoIs only), so the
    gradient is the adjoint applied to ``grad_output``, which autograd gives us from any input: we use
    zeros of the input's shape, as the compiled op is not handed the input either.
    """
    _check_avg(pool_mode)
    with torch.enable_grad():
        probe = torch.zeros_like(grad_input, requires_grad=True)
        out = tv_ops.roi_align(probe, rois.to(probe.dtype), (aligned_height, aligned_width), spatial_scale,
                               sampling_ratio, aligned)
        (grad,) = torch.autograd.grad(out, probe, grad_output)
    grad_input.copy_(grad)


def _missing(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"mmcv op {name!r} needs the compiled mmcv (mmcv._ext); this install has mmcv-lite with effrepro's "
            f"torchvision fallback, which provides only {', '.join(FALLBACK_OPS)}"
        )

    return unavailable


def has_compiled_mmcv() -> bool:
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return not getattr(existing, "__effrepro_fallback__", False)
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        return False
    return True


def install() -> bool:
    """Register the fallback as ``mmcv._ext`` unless a compiled one exists. Returns True if it installed it.

    Call before anything imports ``mmcv.ops`` (``effrepro.mm`` and the projects' mm modules do).
    """
    if has_compiled_mmcv():
        return False
    if "mmcv._ext" in sys.modules:
        return True
    module = types.ModuleType("mmcv._ext", __doc__)
    # A spec without a loader: importable from sys.modules, and mmengine's "is full mmcv available"
    # probe (pkgutil.find_loader) correctly answers no.
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    module.__effrepro_fallback__ = True
    module.nms = _nms
    module.roi_align_forward = _roi_align_forward
    module.roi_align_backward = _roi_align_backward
    module.__getattr__ = _missing  # PEP 562: every other op name resolves to a clear error
    sys.modules["mmcv._ext"] = module
    import mmcv

    mmcv._ext = module
    return True
