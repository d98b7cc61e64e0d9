"""Atomic, validated checkpoints and the RNG state that makes a resumed run equal an uninterrupted one."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effrepro.errors import UsageError


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file in the same folder, then rename it into place.

    A crash mid-write leaves the previous checkpoint intact; readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", required: tuple[str, ...] = ()) -> Any:
    """Load a checkpoint, turning a missing, truncated or foreign file into one clear :class:`UsageError`.

    ``required`` lists top-level keys the checkpoint must hold (e.g. ``("model", "config")``).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, wrong format...
        raise UsageError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__})") from None
    missing = [key for key in required if not (isinstance(obj, dict) and key in obj)]
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(missing)}; was it written by this project?")
    return obj


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """``module.load_state_dict`` with a one-line error naming missing/unexpected keys or shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise UsageError(f"{source} does not match the model: {'; '.join(parts)}")
    module.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """Every RNG a training loop draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
