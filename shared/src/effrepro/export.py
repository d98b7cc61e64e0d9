"""Export an inference-form model with ``torch.export`` (a ``.pt2`` program) and, where the ``onnx`` and
``onnxscript`` packages are installed, to ONNX through torch's dynamo exporter. The projects call these on their
deploy forms (folded KernelDNA, fused PartialNet) and test that the exported program computes the same outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from effrepro.errors import UsageError


def export_program(model: nn.Module, example: torch.Tensor,
                   path: str | Path | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode at ``example``'s shape (saved to ``path`` as ``.pt2`` if given)."""
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    return program


def onnx_missing() -> str | None:
    """Why ONNX export is unavailable here (``None`` when it is)."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    return f"ONNX export needs the {' and '.join(missing)} package(s): pip install {' '.join(missing)}" if missing \
        else None


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """ONNX file of ``model`` in eval mode (torch's dynamo exporter); a clear error when onnx is not installed."""
    reason = onnx_missing()
    if reason:
        raise UsageError(reason)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True)
    return path
