"""The claims file (DESIGN.md §3) with validation, and the ``report.md`` writer with an environment block."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

CLAIM_KEYS = ("id", "description", "paper", "measured", "unit", "baseline", "expect", "holds", "details")
_EXPECT = re.compile(
    r"^\s*(?:(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[-+0-9.eE]+)|between\s+(?P<lo>[-+0-9.eE]+)\s+(?P<hi>[-+0-9.eE]+))\s*$"
)


def check_expect(measured: float, expect: str) -> bool:
    """Evaluate an ``expect`` string (``">= 1.0"``, ``"< 0.5"``, ``"== 5"``, ``"between 0.9 1.1"``).

    ``==`` compares with a relative tolerance of 1e-9; a NaN measurement never holds.
    """
    match = _EXPECT.match(expect)
    if match is None:
        raise ValueError(f"cannot parse expect {expect!r}; use e.g. '>= 1.0' or 'between 0.9 1.1'")
    value = float(measured)
    if math.isnan(value):
        return False
    if match["op"] is None:
        return float(match["lo"]) <= value <= float(match["hi"])
    ref = float(match["value"])
    return {
        ">=": value >= ref, "<=": value <= ref, ">": value > ref, "<": value < ref,
        "==": math.isclose(value, ref, rel_tol=1e-9, abs_tol=1e-12),
        "!=": not math.isclose(value, ref, rel_tol=1e-9, abs_tol=1e-12),
    }[match["op"]]


@dataclass
class Claim:
    """One headline claim measured in miniature: ``holds`` is computed from ``measured`` and ``expect``."""

    id: str
    description: str
    paper: float | None
    measured: float
    unit: str
    baseline: str
    expect: str
    details: dict[str, Any] = field(default_factory=dict)
    holds: bool = field(init=False)

    def __post_init__(self) -> None:
        self.measured = float(self.measured)
        self.holds = check_expect(self.measured, self.expect)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in CLAIM_KEYS}


def validate_claims(claims: Sequence[dict[str, Any]]) -> None:
    """Raise ``ValueError`` naming the first claim that breaks the schema of DESIGN.md §3."""
    if not isinstance(claims, (list, tuple)) or not claims:
        raise ValueError("claims must be a non-empty list")
    seen: set[str] = set()
    for index, claim in enumerate(claims):
        where = f"claim {index} ({claim.get('id', '?') if isinstance(claim, dict) else '?'})"
        if not isinstance(claim, dict):
            raise ValueError(f"{where}: not an object")
        missing = [k for k in CLAIM_KEYS if k not in claim]
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
        extra = sorted(set(claim) - set(CLAIM_KEYS))
        if extra:
            raise ValueError(f"{where}: unknown keys {extra}")
        for key in ("id", "description", "unit", "baseline", "expect"):
            if not isinstance(claim[key], str) or (key in ("id", "expect") and not claim[key]):
                raise ValueError(f"{where}: {key!r} must be a non-empty string" if key in ("id", "expect")
                                 else f"{where}: {key!r} must be a string")
        if claim["id"] in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(claim["id"])
        if claim["paper"] is not None and not isinstance(claim["paper"], (int, float)):
            raise ValueError(f"{where}: 'paper' must be a number or null")
        if isinstance(claim["measured"], bool) or not isinstance(claim["measured"], (int, float)):
            raise ValueError(f"{where}: 'measured' must be a number")
        if not isinstance(claim["holds"], bool):
            raise ValueError(f"{where}: 'holds' must be a boolean")
        if not isinstance(claim["details"], dict):
            raise ValueError(f"{where}: 'details' must be an object")
        if check_expect(claim["measured"], claim["expect"]) != claim["holds"]:
            raise ValueError(f"{where}: 'holds' disagrees with measured {claim['measured']} and expect "
                             f"{claim['expect']!r}")


def results_dir(paper: str, scale: str, out: str | os.PathLike | None = None) -> Path:
    """``out`` if given, else ``$EFFREPRO_RESULTS`` (default ``./results``) ``/<paper>/<scale>``; created."""
    path = Path(out) if out is not None else Path(os.environ.get("EFFREPRO_RESULTS", "results")) / paper / scale
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_claims(out_dir: str | os.PathLike, claims: Iterable[Claim | dict[str, Any]]) -> Path:
    """Validate and write ``claims.json`` atomically; returns its path."""
    rows = [c.as_dict() if isinstance(c, Claim) else dict(c) for c in claims]
    rows = json.loads(json.dumps(rows, default=_json_default))  # plain JSON types before validating
    validate_claims(rows)
    path = Path(out_dir) / "claims.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    return path


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """What a reader needs to judge a number: versions, device, threads, commit."""
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def claims_table(claims: Iterable[Claim | dict[str, Any]]) -> str:
    """A markdown table: claim, paper, measured, unit, baseline, expectation, holds."""
    rows = [c.as_dict() if isinstance(c, Claim) else c for c in claims]
    lines = ["| claim | paper | measured | unit | vs | expect | holds |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c['id']}: {c['description']} | {_fmt(c['paper'])} | {_fmt(c['measured'])} | {c['unit']} "
                     f"| {c['baseline']} | {c['expect']} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    paper_table_md: str,
    claims: Iterable[Claim | dict[str, Any]],
    notes_md: str = "",
    plots: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write ``report.md``: the paper's table, our claims beside it, notes, plots and the environment."""
    out = Path(out_dir)
    env = environment()
    parts = [f"# {title}", "", "## The paper's table", "", paper_table_md.strip(), "",
             "## Measured here", "", claims_table(claims), ""]
    if notes_md.strip():
        parts += ["## Notes", "", notes_md.strip(), ""]
    for plot in plots:
        name = Path(plot).name
        parts += [f"![{name}]({name})", ""]
    parts += ["## Environment", "", *(f"- {k}: `{v}`" for k, v in env.items()), ""]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, "\n".join(parts))
    return path


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure (Agg backend, 120 dpi) and close it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
