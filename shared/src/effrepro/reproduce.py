"""``python -m effrepro.reproduce``: the dispatcher behind ``make reproduce`` / ``make bench`` / ``make summary``.

Each paper project owns its experiments (``<paper> reproduce``); this module only validates the paper
name, runs the project's console script (one after another for ``all``) and summarises claims files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from effrepro.errors import UsageError, run_cli

PAPERS = ("partialnet", "kerneldna", "deepkd", "double_rounding", "jakiro", "gumiho", "token_router_pruning")
SCALES = ("smoke", "full")


def _papers(name: str) -> list[str]:
    if name == "all":
        return list(PAPERS)
    if name not in PAPERS:
        given = f"unknown paper {name!r}" if name else "no paper given"
        raise UsageError(f"{given}; use PAPER=<name> with one of: {', '.join(PAPERS)}, or all")
    return [name]


def _script(paper: str) -> str:
    path = Path(sys.executable).parent / paper
    found = str(path) if path.exists() else shutil.which(paper)
    if not found:
        raise UsageError(f"the {paper} command is not installed; run `make setup` (or pip install -e {paper})")
    return found


def _run(paper: str, args: list[str]) -> int:
    cmd = [_script(paper), *args]
    print(f"==> {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    print(f"<== {paper}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    return code


def summary_table(root: Path = Path("results")) -> str:
    """Markdown table of every ``results/<paper>/<scale>/claims.json``: claims held / total and each claim."""
    lines = ["| paper | scale | claim | paper value | measured | holds |", "|---|---|---|---|---|---|"]
    for path in sorted(root.glob("*/*/claims.json")):
        paper, scale = path.parent.parent.name, path.parent.name
        for claim in json.loads(path.read_text()):
            paper_value = "–" if claim["paper"] is None else f"{claim['paper']:.4g}"
            lines.append(f"| {paper} | {scale} | {claim['id']} | {paper_value} | {claim['measured']:.4g} "
                         f"{claim['unit']} | {'yes' if claim['holds'] else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else "no results yet: run `make reproduce PAPER=<name>`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrepro.reproduce", description=__doc__)
    parser.add_argument("command", choices=["run", "bench", "summary"])
    parser.add_argument("paper", nargs="?", default="")
    parser.add_argument("--scale", default="smoke")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on to the paper's command")
    args = parser.parse_args(argv)
    rest = [a for a in args.rest if a != "--"]
    if args.command == "summary":
        print(summary_table())
        return 0
    if args.scale not in SCALES:
        raise UsageError(f"unknown SCALE {args.scale!r}; use smoke or full")
    failed = []
    for paper in _papers(args.paper):
        sub = ["reproduce", "--scale", args.scale, *rest] if args.command == "run" else ["bench", *rest]
        if _run(paper, sub) != 0:
            failed.append(paper)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
