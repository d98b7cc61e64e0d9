"""The claims file (schema in the root README) with validation, and the ``report.md`` writer.

``claims.json`` is ``{"claims": [...], "facts": [...]}``. A claim is a comparison that could come out false,
measured over a unit of replication with a 95 % interval and a verdict; a fact is what the configuration fixes or
what is reported without a test.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.stats import VERDICTS, Estimate, check_expect, min_detectable_effect, n_to_decide, verdict

__all__ = ["CLAIM_KEYS", "FACT_KEYS", "Claim", "Fact", "atomic_write_text", "check_expect", "claims_document",
           "claims_table", "environment", "facts_table", "fmt", "fmt_ci", "read_claims", "results_dir", "save_figure",
           "validate_claims", "write_claims", "write_report"]

CLAIM_KEYS = ("id", "description", "paper", "measured", "unit", "baseline", "expect", "n", "ci", "verdict", "holds",
              "headline", "details")
FACT_KEYS = ("id", "description", "value", "unit", "paper", "exact", "details")


@dataclass(kw_only=True)
class Claim:
    """One claim measured in miniature, with its 95 % interval over ``n`` units of replication.

    ``verdict`` is computed from ``ci`` and ``expect`` (holds iff the whole interval meets it, fails iff the whole
    interval misses it, else inconclusive); ``holds`` is ``verdict == "holds"``. ``headline`` marks the paper's
    headline claims, which a decisive experiment must settle and CI's strict compare watches.
    """

    id: str
    description: str
    paper: float | None
    measured: float
    unit: str
    baseline: str
    expect: str
    n: int
    ci: tuple[float, float]
    headline: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    verdict: str = field(init=False)
    holds: bool = field(init=False)

    def __post_init__(self) -> None:
        self.measured = float(self.measured)
        self.ci = (float(self.ci[0]), float(self.ci[1]))
        self.verdict = verdict(self.ci, self.expect)
        self.holds = self.verdict == "holds"

    @classmethod
    def from_estimate(cls, estimate: Estimate, **fields: Any) -> Claim:
        """A claim whose value, ``n`` and interval come from ``estimate``; the interval method and, when the
        verdict is inconclusive, the ``n`` that would decide it and the minimum detectable effect go to details."""
        details = {"interval": estimate.method, **estimate.details, **fields.pop("details", {})}
        claim = cls(measured=estimate.value, n=estimate.n, ci=estimate.ci, details=details, **fields)
        if claim.verdict == "inconclusive":
            claim.details.setdefault("n_to_decide", n_to_decide(estimate, claim.expect))
            claim.details.setdefault("min_detectable_effect", min_detectable_effect(estimate))
        return claim

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci"] = [None if math.isnan(v) else v for v in self.ci]
        return {key: data[key] for key in CLAIM_KEYS}


@dataclass(kw_only=True)
class Fact:
    """What is fixed by construction or reported without a test (parameter and FLOP counts from configs, parity
    with the official code, forwards per cycle, wall times): shown beside the claims, never judged. ``exact``
    facts must match a reference run exactly (counts); the others are informative (timings)."""

    id: str
    description: str
    value: float | int | str | bool
    unit: str = ""
    paper: float | None = None
    exact: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in FACT_KEYS}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(entry: Any, keys: Sequence[str], where: str, seen: set[str]) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: not an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    extra = sorted(set(entry) - set(keys))
    if extra:
        raise ValueError(f"{where}: unknown keys {extra}")
    if not isinstance(entry["id"], str) or not entry["id"]:
        raise ValueError(f"{where}: 'id' must be a non-empty string")
    if entry["id"] in seen:
        raise ValueError(f"{where}: duplicate id (claims and facts share one id space)")
    seen.add(entry["id"])
    if not isinstance(entry["description"], str) or not isinstance(entry["unit"], str):
        raise ValueError(f"{where}: 'description' and 'unit' must be strings")
    if entry["paper"] is not None and not _number(entry["paper"]):
        raise ValueError(f"{where}: 'paper' must be a number or null")
    if not isinstance(entry["details"], dict):
        raise ValueError(f"{where}: 'details' must be an object")


def _check_claim(claim: Any, where: str, seen: set[str]) -> None:
    _check_keys(claim, CLAIM_KEYS, where, seen)
    if not isinstance(claim["baseline"], str) or not isinstance(claim["expect"], str) or not claim["expect"]:
        raise ValueError(f"{where}: 'baseline' must be a string and 'expect' a non-empty string")
    if not _number(claim["measured"]):
        raise ValueError(f"{where}: 'measured' must be a number")
    if not isinstance(claim["n"], int) or isinstance(claim["n"], bool) or claim["n"] < 1:
        raise ValueError(f"{where}: 'n' must be a positive integer (seeds, items or turns)")
    ci = claim["ci"]
    if not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) or v is None for v in ci)):
        raise ValueError(f"{where}: 'ci' must be [lo, hi] (numbers, or null where undecidable)")
    lo, hi = (math.nan if v is None else float(v) for v in ci)
    if lo > hi:
        raise ValueError(f"{where}: 'ci' lower bound {lo} exceeds upper bound {hi}")
    if claim["verdict"] not in VERDICTS:
        raise ValueError(f"{where}: 'verdict' must be one of {', '.join(VERDICTS)}")
    if claim["verdict"] != verdict((lo, hi), claim["expect"]):
        raise ValueError(f"{where}: verdict {claim['verdict']!r} disagrees with ci {ci} and expect "
                         f"{claim['expect']!r}")
    if not isinstance(claim["holds"], bool) or claim["holds"] != (claim["verdict"] == "holds"):
        raise ValueError(f"{where}: 'holds' must be true exactly when the verdict is 'holds'")
    if not isinstance(claim["headline"], bool):
        raise ValueError(f"{where}: 'headline' must be a boolean")


def _check_fact(fact: Any, where: str, seen: set[str]) -> None:
    _check_keys(fact, FACT_KEYS, where, seen)
    if not isinstance(fact["value"], (int, float, str, bool)):
        raise ValueError(f"{where}: 'value' must be a number, string or boolean")
    if not isinstance(fact["exact"], bool):
        raise ValueError(f"{where}: 'exact' must be a boolean")


def validate_claims(document: Any) -> None:
    """Raise ``ValueError`` naming the first entry of a claims document (``{"claims": [...], "facts": [...]}``)
    that breaks the schema in the root README."""
    if not isinstance(document, dict) or set(document) != {"claims", "facts"}:
        raise ValueError('a claims file is an object with exactly the keys "claims" and "facts"')
    claims, facts = document["claims"], document["facts"]
    if not isinstance(claims, list) or not claims:
        raise ValueError('"claims" must be a non-empty list')
    if not isinstance(facts, list):
        raise ValueError('"facts" must be a list')
    seen: set[str] = set()
    for index, claim in enumerate(claims):
        _check_claim(claim, f"claim {index} ({claim.get('id', '?') if isinstance(claim, dict) else '?'})", seen)
    for index, fact in enumerate(facts):
        _check_fact(fact, f"fact {index} ({fact.get('id', '?') if isinstance(fact, dict) else '?'})", seen)


def read_claims(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a ``claims.json``; a missing, unreadable or malformed file is one ``UsageError`` line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no claims file; run `make reproduce PAPER=<name>` first")
    try:
        document = json.loads(path.read_text())
        validate_claims(document)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a valid claims file ({exc}); rerun `make reproduce` to rewrite it") from None
    return document


def results_dir(paper: str, scale: str, out: str | os.PathLike | None = None) -> Path:
    """``out`` if given, else ``$EFFREPRO_RESULTS`` (default ``./results``) ``/<paper>/<scale>``; created."""
    path = Path(out) if out is not None else Path(os.environ.get("EFFREPRO_RESULTS", "results")) / paper / scale
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and move it into place (readable by the group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN / inf: write them as null (details and intervals)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def claims_document(claims: Iterable[Claim | dict[str, Any]], facts: Iterable[Fact | dict[str, Any]] = ()
                    ) -> dict[str, Any]:
    """The validated plain-JSON document ``{"claims": [...], "facts": [...]}``."""
    document = {"claims": [c.as_dict() if isinstance(c, Claim) else dict(c) for c in claims],
                "facts": [f.as_dict() if isinstance(f, Fact) else dict(f) for f in facts]}
    document = _finite(json.loads(json.dumps(document, default=_json_default)))
    validate_claims(document)
    return document


def write_claims(out_dir: str | os.PathLike, claims: Iterable[Claim | dict[str, Any]],
                 facts: Iterable[Fact | dict[str, Any]] = ()) -> Path:
    """Validate and write ``claims.json`` atomically; returns its path."""
    document = claims_document(claims, facts)
    return atomic_write_text(Path(out_dir) / "claims.json", json.dumps(document, indent=2) + "\n")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """What a reader needs to judge a number: versions, device, CPU model, threads, commit."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def fmt(value: Any) -> str:
    """A number as a report shows it (4 significant digits; – for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_ci(ci: Sequence[Any]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def seed_span(seeds: Iterable[int]) -> str:
    """Seeds as a report names them: a contiguous run of three or more as ``first-last``, else listed; ``none``
    when there are none."""
    ordered = sorted(seeds)
    if not ordered:
        return "none"
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _rows(entries: Iterable[Any]) -> list[dict[str, Any]]:
    return [e.as_dict() if isinstance(e, (Claim, Fact)) else e for e in entries]


def claims_table(claims: Iterable[Claim | dict[str, Any]]) -> str:
    """A markdown table: claim, paper, measured with its 95 % interval and n, baseline, expectation, verdict."""
    lines = ["| claim | paper | measured | 95 % CI | n | unit | vs | expect | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in _rows(claims):
        mark = "**" if c["headline"] else ""
        verdict_text = c["verdict"] if c["verdict"] == "holds" else f"**{c['verdict']}**"
        lines.append(f"| {mark}{c['id']}{mark}: {c['description']} | {fmt(c['paper'])} | {fmt(c['measured'])} "
                     f"| {fmt_ci(c['ci'])} | {c['n']} | {c['unit']} | {c['baseline']} | {c['expect']} "
                     f"| {verdict_text} |")
    return "\n".join(lines)


def facts_table(facts: Iterable[Fact | dict[str, Any]]) -> str:
    """A markdown table of facts: id, description, value, unit, paper."""
    rows = _rows(facts)
    if not rows:
        return "(none)"
    lines = ["| fact | value | unit | paper |", "|---|---|---|---|"]
    lines += [f"| {f['id']}: {f['description']} | {fmt(f['value'])} | {f['unit']} | {fmt(f['paper'])} |"
              for f in rows]
    return "\n".join(lines)


def undecided_notes(claims: Iterable[Claim | dict[str, Any]]) -> str:
    """For each inconclusive claim: the n at which an interval of the same spread would decide it."""
    lines = []
    for c in _rows(claims):
        if c["verdict"] == "inconclusive":
            needed = c["details"].get("n_to_decide")
            mde = c["details"].get("min_detectable_effect")
            lines.append(f"- `{c['id']}` is inconclusive at n = {c['n']}: about n = {fmt(needed)} would decide it at "
                         f"this spread (minimum detectable effect at this n: {fmt(mde)} {c['unit']}).")
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    paper_table_md: str,
    claims: Iterable[Claim | dict[str, Any]],
    facts: Iterable[Fact | dict[str, Any]] = (),
    notes_md: str = "",
    plots: Sequence[str | os.PathLike] = (),
    env: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md``: the paper's table, our claims (headline first) and facts, notes, plots, environment."""
    rows = _rows(claims)
    headline = [c for c in rows if c["headline"]]
    others = [c for c in rows if not c["headline"]]
    parts = [f"# {title}", "", "## The paper's table", "", paper_table_md.strip(), ""]
    if headline:
        parts += ["## Headline claims", "", claims_table(headline), ""]
    if others:
        parts += ["## Other claims" if headline else "## Claims", "", claims_table(others), ""]
    undecided = undecided_notes(rows)
    if undecided:
        parts += ["### What would decide the inconclusive claims", "", undecided, ""]
    parts += ["## Facts (fixed by construction or reported without a test)", "", facts_table(facts), ""]
    if notes_md.strip():
        parts += ["## Notes", "", notes_md.strip(), ""]
    for plot in plots:
        name = Path(plot).name
        parts += [f"![{name}]({name})", ""]
    env = env if env is not None else environment()
    parts += ["## Environment", "", *(f"- {k}: `{v}`" for k, v in env.items()), ""]
    return atomic_write_text(Path(out_dir) / "report.md", "\n".join(parts))


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
