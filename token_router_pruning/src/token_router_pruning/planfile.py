"""Plan files (``*.pt``): a per-block sparsity schedule, its scope and optionally the trained router, written by
``train`` and ``reproduce`` and read by ``eval`` / ``bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effrepro.errors import UsageError


def save_plan(path: str | Path, schedule: list[float], router: Any = None, scope: str = "block",
              extra: dict | None = None) -> Path:
    """A plan file: per-block schedule, scope and (optionally) the trained router's weights and options."""
    from effrepro.train import save_checkpoint

    obj = {"kind": "ftp_plan", "schedule": [float(v) for v in schedule], "scope": scope,
           "router": None if router is None else {"state": router.state_dict(), "options": router.options()},
           **(extra or {})}
    return save_checkpoint(path, obj)


def load_plan(path: str | Path, n_blocks: int, dtype: Any) -> Any:
    """The :class:`SkipPlan` of a plan file, checked against the model's block count."""
    from effrepro.train import load_checkpoint, load_state_dict_checked

    from token_router_pruning.ftp import DynamicRouter, SkipPlan, StaticRouter

    obj = load_checkpoint(path, required=("kind", "schedule", "scope", "router"), expect="ftp-plan")
    if obj["kind"] != "ftp_plan":
        raise UsageError(f"{path} is not an FTP plan file (kind {obj['kind']!r})")
    if len(obj["schedule"]) != n_blocks:
        raise UsageError(f"{path} holds {len(obj['schedule'])} block sparsities; this model has {n_blocks} blocks")
    router: Any = StaticRouter()
    if obj["router"] is not None:
        try:
            router = DynamicRouter(**obj["router"]["options"]).to(dtype)
        except (TypeError, ValueError, KeyError) as exc:
            raise UsageError(f"{path}: its router options do not fit this version ({exc}); write the plan again "
                             "with `token_router_pruning train`") from None
        load_state_dict_checked(router, obj["router"]["state"], str(path))
        router.eval()
    return SkipPlan(name=Path(path).stem, sparsity=tuple(obj["schedule"]), router=router, scope=obj["scope"])
