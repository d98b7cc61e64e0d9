"""Committed reference results: the README tables generated from them, a user's run compared with them (strict
mode for CI), and promoting a run to be the new reference.

Layout: ``results/reference/<paper>/<scale>/{claims.json, report.md, env.json, *.png}``. The root README and each
project README hold a generated block between ``<!-- results:begin -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.papers import PAPERS
from effrepro.report import claims_table, facts_table, fmt, fmt_ci, read_claims

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REFERENCE = Path("results") / "reference"
PROMOTED_FILES = ("claims.json", "report.md", "env.json")
DEFAULT_TOLERANCE = 0.5  # strict compare: the reference interval widened by this fraction of its width per side
# Strict compare of timing claims (``details["timing"]``): the value within this fraction of the reference value.
# A time ratio measured in one process drifts between runs on a shared machine by more than its own interval
# (double_rounding's CPU-time ratio: 0.986 [0.962, 1.012] in one run, 1.062 [1.023, 1.112] in the next, +7.7 %).
DEFAULT_TIMING_TOLERANCE = 0.25


def reference_dir(paper: str, scale: str = "smoke", root: Path = Path(".")) -> Path:
    return root / REFERENCE / paper / scale


def _load_env(folder: Path) -> dict[str, Any]:
    path = folder / "env.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def root_table(root: Path = Path(".")) -> str:
    """The root README's results table: each paper's headline claims from its reference run."""
    lines = ["| paper | headline claim | paper | measured (95 % CI) | n | verdict | all claims: holds / fails / "
             "inconclusive |", "|---|---|---|---|---|---|---|"]
    for paper in PAPERS:
        folder = reference_dir(paper, root=root)
        if not (folder / "claims.json").is_file():
            lines.append(f"| [{paper}]({paper}/) | no reference run committed yet | | | | | |")
            continue
        claims = read_claims(folder / "claims.json")["claims"]
        counts = " / ".join(str(sum(c["verdict"] == v for c in claims)) for v in ("holds", "fails", "inconclusive"))
        headline = [c for c in claims if c["headline"]] or claims[:1]
        for index, c in enumerate(headline):
            name = f"[{paper}]({paper}/)" if index == 0 else ""
            lines.append(f"| {name} | `{c['id']}`: {c['description']} | {fmt(c['paper'])} | {fmt(c['measured'])} "
                         f"{c['unit']} {fmt_ci(c['ci'])} | {c['n']} | {c['verdict']} | "
                         f"{counts if index == 0 else ''} |")
    return "\n".join(lines)


def paper_block(paper: str, root: Path = Path(".")) -> str:
    """A project README's generated block: every claim and fact of the reference run, and where it came from."""
    folder = reference_dir(paper, root=root)
    if not (folder / "claims.json").is_file():
        return f"No reference run committed yet: `make reproduce PAPER={paper}` then `make promote PAPER={paper}`."
    document = read_claims(folder / "claims.json")
    env = _load_env(folder)
    source = (f"Reference run `{REFERENCE / paper / 'smoke'}` (commit `{env.get('git_commit', '?')}`, "
              f"{env.get('cpu_model', '?')}, {env.get('torch_threads', '?')} thread(s), "
              f"wall {fmt(env.get('wall_seconds'))} s).")
    return "\n\n".join([source, claims_table(document["claims"]), "Facts:", facts_table(document["facts"])])


def replace_block(text: str, block: str, where: str) -> str:
    if BEGIN not in text or END not in text:
        raise UsageError(f"{where}: no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def readme_updates(root: Path = Path(".")) -> dict[Path, str]:
    """Every README whose generated block would change, with its new text."""
    targets = {root / "README.md": root_table(root)}
    targets.update({root / paper / "README.md": paper_block(paper, root) for paper in PAPERS})
    changed = {}
    for path, block in targets.items():
        text = path.read_text()
        new = replace_block(text, block, str(path))
        if new != text:
            changed[path] = new
    return changed


def write_summary(root: Path = Path(".")) -> list[Path]:
    changed = readme_updates(root)
    for path, text in changed.items():
        path.write_text(text)
    return sorted(changed)


# ---- compare -------------------------------------------------------------------------------------------------
def _widened(ci: list[Any], tolerance: float) -> tuple[float, float]:
    lo, hi = (math.nan if v is None else float(v) for v in ci)
    pad = tolerance * (hi - lo)
    return lo - pad, hi + pad


def _same_fact(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def is_timing(claim: dict[str, Any]) -> bool:
    """A claim measured in wall-clock or CPU time (marked by its ``ClaimSpec(timing=True)``)."""
    return bool(claim["details"].get("timing"))


def compare_rules(tolerance: float = DEFAULT_TOLERANCE, timing_tolerance: float = DEFAULT_TIMING_TOLERANCE) -> str:
    """What strict compare checks, in one paragraph (printed above the table)."""
    return (f"strict compare: a headline verdict must not change; a claim's measured value must lie in the reference "
            f"interval widened by {tolerance:.0%} of its width per side, a timing claim's (wall or CPU time) within "
            f"±{timing_tolerance:.0%} of the reference value; no claim or fact may appear or disappear; exact facts "
            "must be equal.")


def compare(run: dict[str, Any], reference: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE,
            timing_tolerance: float = DEFAULT_TIMING_TOLERANCE) -> tuple[list[str], list[str]]:
    """Claim by claim and fact by fact: the printed table and the reasons a strict comparison fails.

    Strict failures: a headline claim whose verdict differs; a claim whose measured value falls outside the
    reference interval widened by ``tolerance`` of its width on each side, or, for a timing claim (marked in
    either run), differs from the reference value by more than ``timing_tolerance`` of it; a claim or fact
    present in one run only; an exact fact whose value differs.
    """
    lines = ["| id | reference | yours | verdict ref -> yours | status |", "|---|---|---|---|---|"]
    problems: list[str] = []
    for kind, key in (("claim", "measured"), ("fact", "value")):
        for eid, ref, mine in _paired_entries(reference[f"{kind}s"], run[f"{kind}s"]):
            label = eid if kind == "claim" else f"{eid} (fact)"
            if ref is None or mine is None:
                reason = "missing from your run" if mine is None else "not in the reference"
                problems.append(f"{kind} {eid}: {reason}")
                lines.append(f"| {label} | {fmt(ref and ref[key])} | {fmt(mine and mine[key])} | | {reason} |")
                continue
            status = (_claim_status(ref, mine, tolerance, timing_tolerance) if kind == "claim"
                      else _fact_status(ref, mine))
            problems += [f"{kind} {eid}: {item}" for item in status]
            if kind == "claim":
                label += " (timing)" if is_timing(ref) or is_timing(mine) else ""
                ref_cell, mine_cell = (f"{fmt(e[key])} {fmt_ci(e['ci'])}" for e in (ref, mine))
                verdicts = f"{ref['verdict']} -> {mine['verdict']}"
            else:
                ref_cell, mine_cell, verdicts = fmt(ref[key]), fmt(mine[key]), ""
            lines.append(f"| {label} | {ref_cell} | {mine_cell} | {verdicts} | {'; '.join(status) or 'ok'} |")
    return lines, problems


def _paired_entries(reference: list[dict[str, Any]], run: list[dict[str, Any]]
                    ) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """(id, reference entry, run entry) in reference order, then the run's new ids; None where one side lacks it."""
    ref, mine = {e["id"]: e for e in reference}, {e["id"]: e for e in run}
    ids = list(ref) + [i for i in mine if i not in ref]
    return [(i, ref.get(i), mine.get(i)) for i in ids]


def _claim_status(ref: dict[str, Any], mine: dict[str, Any], tolerance: float, timing_tolerance: float
                  ) -> list[str]:
    status = []
    if ref["headline"] and ref["verdict"] != mine["verdict"]:
        status.append(f"headline verdict {ref['verdict']} -> {mine['verdict']}")
    if is_timing(ref) or is_timing(mine):
        change = mine["measured"] / ref["measured"] - 1 if ref["measured"] else math.inf
        if not abs(change) <= timing_tolerance:
            status.append(f"timing {fmt(mine['measured'])} is {change:+.1%} from the reference {fmt(ref['measured'])},"
                          f" beyond ±{timing_tolerance:.0%}")
    else:
        lo, hi = _widened(ref["ci"], tolerance)
        if not (lo <= mine["measured"] <= hi):
            status.append(f"measured {fmt(mine['measured'])} outside [{fmt(lo)}, {fmt(hi)}]")
    return status


def _fact_status(ref: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    if ref["exact"] and not _same_fact(ref["value"], mine["value"]):
        return [f"exact fact changed: {fmt(ref['value'])} -> {fmt(mine['value'])}"]
    return []


def promote(paper: str, run_dir: Path, root: Path = Path(".")) -> Path:
    """Copy a finished run (claims.json, report.md, env.json, plots) into the reference folder, replacing it."""
    read_claims(run_dir / "claims.json")
    missing = [name for name in PROMOTED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UsageError(f"{run_dir}: missing {missing}; rerun `make reproduce PAPER={paper}` to completion")
    target = reference_dir(paper, root=root)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in [run_dir / name for name in PROMOTED_FILES] + sorted(run_dir.glob("*.png")):
        shutil.copy2(path, staging / path.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
