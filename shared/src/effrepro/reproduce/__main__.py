"""``python -m effrepro.reproduce``: the dispatcher behind ``make reproduce / prepare / bench / summary / compare /
promote``. It validates the paper name and scale (one ``error:`` line, exit 2), runs the project's console
script (one after another for ``all``) and manages the committed reference results."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from effrepro.errors import UsageError, run_cli
from effrepro.papers import PAPERS
from effrepro.report import read_claims
from effrepro.reproduce.skeleton import SCALES
from effrepro.reproduce.summary import (
    DEFAULT_TIMING_TOLERANCE,
    DEFAULT_TOLERANCE,
    compare,
    compare_rules,
    promote,
    readme_updates,
    reference_dir,
    write_summary,
)


def papers_from(name: str, allow_all: bool = True) -> list[str]:
    if name == "all" and allow_all:
        return list(PAPERS)
    if name not in PAPERS:
        given = f"unknown paper {name!r}" if name else "no paper given"
        tail = ", or all" if allow_all else ""
        raise UsageError(f"{given}; use PAPER=<name> with one of: {', '.join(PAPERS)}{tail}")
    return [name]


def _script(paper: str) -> str:
    path = Path(sys.executable).parent / paper
    found = str(path) if path.exists() else shutil.which(paper)
    if not found:
        raise UsageError(f"the {paper} command is not installed; run `make setup` (or pip install -e {paper})")
    return found


def _call(paper: str, args: list[str]) -> int:
    cmd = [_script(paper), *args]
    print(f"==> {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    print(f"<== {paper}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    return code


def _run_each(papers: list[str], args: list[str]) -> int:
    failed = [paper for paper in papers if _call(paper, args) != 0]
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    (paper,) = papers_from(args.paper, allow_all=False)
    run_dir = Path(args.run) if args.run else Path("results") / paper / args.scale
    lines, problems = compare(read_claims(run_dir / "claims.json"),
                              read_claims(reference_dir(paper, args.scale) / "claims.json"), args.tolerance,
                              args.timing_tolerance)
    print(f"{paper}: your run {run_dir} beside the reference {reference_dir(paper, args.scale)}")
    print(compare_rules(args.tolerance, args.timing_tolerance))
    print("\n".join(lines))
    if problems:
        print(f"{len(problems)} difference(s):\n" + "\n".join(f"- {p}" for p in problems))
        if args.strict:
            print(f"error: {paper}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                  file=sys.stderr)
            return 1
    else:
        print("matches the reference")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrepro.reproduce", description=__doc__,
                                     epilog="arguments after -- go to the paper's own command")
    parser.add_argument("command", choices=["run", "prepare", "bench", "summary", "compare", "promote"])
    parser.add_argument("paper", nargs="?", default="")
    parser.add_argument("--scale", default="smoke")
    parser.add_argument("--strict", action="store_true", help="compare: exit 1 on any difference (CI)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="compare: widen the reference interval by this fraction of its width per side")
    parser.add_argument("--timing-tolerance", type=float, default=DEFAULT_TIMING_TOLERANCE,
                        help="compare: a timing claim may differ from the reference value by this fraction of it")
    parser.add_argument("--run", default=None,
                        help="compare / promote: the run folder (default results/<paper>/<scale>)")
    parser.add_argument("--check", action="store_true", help="summary: exit 1 if a README block is out of date")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, rest = parser.parse_args(argv[:split]), argv[split + 1:]  # after "--": the paper command's own arguments
    if args.scale not in SCALES:
        raise UsageError(f"unknown SCALE {args.scale!r}; use one of {', '.join(SCALES)}")
    if args.command == "summary":
        if args.check:
            stale = sorted(str(p) for p in readme_updates())
            if stale:
                print(f"error: generated results blocks out of date in {', '.join(stale)}; run `make summary`",
                      file=sys.stderr)
                return 1
            return 0
        changed = write_summary()
        print("updated " + ", ".join(map(str, changed)) if changed else "README tables already up to date")
        return 0
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "promote":
        (paper,) = papers_from(args.paper, allow_all=False)
        target = promote(paper, Path(args.run) if args.run else Path("results") / paper / args.scale)
        changed = write_summary()
        print(f"promoted to {target}; updated {', '.join(map(str, changed)) or 'no README'}")
        return 0
    papers = papers_from(args.paper)
    if args.command == "bench":
        return _run_each(papers, ["bench", *rest])
    prepare = ["--prepare"] if args.command == "prepare" else []
    return _run_each(papers, ["reproduce", "--scale", args.scale, *prepare, *rest])


if __name__ == "__main__":
    run_cli(main)
