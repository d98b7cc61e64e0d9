"""Root pytest hooks: offline hub, GPU / OpenMMLab markers skip themselves where unavailable."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    has_mm = all(importlib.util.find_spec(m) is not None for m in ("mmengine", "mmdet", "mmseg"))
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "mm" in item.keywords and not has_mm:
            item.add_marker(pytest.mark.skip(reason="needs the OpenMMLab extra (mmengine, mmdet, mmseg)"))
