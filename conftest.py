"""Root pytest hooks: offline hub, GPU / OpenMMLab markers skip themselves where unavailable."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest's ``--import-mode=importlib`` names a test module ``<project>.tests.test_x`` (from the rootdir) and, when
# ``<project>`` is not imported yet, registers the project *folder* as an empty namespace package of that name,
# which hides the installed package (``<project>/src/<project>``). Importing the installed packages first, here,
# keeps the real ones in ``sys.modules``; pytest then only adds ``<project>.tests`` beneath them.
# The paper names come from the one list that the Makefile and the reproduce dispatcher read too.
PAPERS_FILE = os.path.join(os.path.dirname(__file__), "shared", "src", "effrepro", "papers.txt")
with open(PAPERS_FILE) as _handle:
    PROJECT_PACKAGES = tuple(line.strip() for line in _handle if line.strip())
for _name in PROJECT_PACKAGES:
    _spec = importlib.util.find_spec(_name)
    if _spec is not None and _spec.origin is not None:  # installed (not just the bare project folder)
        importlib.import_module(_name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    has_mm = all(importlib.util.find_spec(m) is not None for m in ("mmengine", "mmdet", "mmseg"))
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "mm" in item.keywords and not has_mm:
            item.add_marker(pytest.mark.skip(reason="needs the OpenMMLab extra (mmengine, mmdet, mmseg)"))
