"""The reproduce skeleton every paper uses.

A paper declares a :class:`Reproduction`: its plans (``smoke`` / ``tiny`` / ``full``, instances of one
:class:`Plan` dataclass), a declarative table of :class:`ClaimSpec` and :class:`FactSpec`, and one function
``run(plan, ctx) -> Results`` that holds its experiment only. The skeleton owns the rest: argument parsing
(``--scale``, ``--tiny``, ``--out``, ``--threads``, ``--stages``, ``--set key=value``, ``--no-resume``,
``--prepare``), the output folder (checked before any work), threads, per-stage wall times, the metrics log,
resumable per-stage caches, turning estimates into claims with verdicts, the claims / report / env writers, and
merging a partial-stage run (e.g. ``--stages det``) into an earlier full one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from effrepro.errors import UsageError
from effrepro.report import (
    Claim,
    Fact,
    atomic_write_text,
    claims_document,
    environment,
    read_claims,
    write_report,
)
from effrepro.reproduce.workers import run_jobs
from effrepro.stats import Estimate, Expectation

SCALES = ("smoke", "full")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What every plan has; a paper subclasses it with its experiment's knobs (seeds, epochs, sizes...).

    ``name`` is ``smoke``, ``tiny`` (smoke's code path with a tiny budget, for tests) or ``full``; ``stages`` the
    stages to run (a paper with several declares them in :attr:`Reproduction.stages`); ``threads`` the torch
    threads (``None``: 2 on a quiet machine, 1 when other processes share the cores, where OpenMP spinning makes
    two threads slower than one).
    """

    name: str = "smoke"
    stages: tuple[str, ...] = ("main",)
    threads: int | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimSpec:
    """One row of a paper's claims table: what is measured, the paper's value and what would confirm it.

    ``timing=True`` marks a claim measured in wall-clock or CPU time (latency, throughput, speed-up, training
    time). Its claims carry ``details["timing"] = true``, and a strict compare checks them against the reference
    by a relative tolerance (and by verdict when headline), not by the reference interval: a time measured in one
    process moves between processes on a shared machine by more than its within-run interval.
    """

    id: str
    description: str
    paper: float | None
    unit: str
    baseline: str
    expect: str
    headline: bool = False
    timing: bool = False

    def __post_init__(self) -> None:
        Expectation.parse(self.expect)

    def claim(self, estimate: Estimate, **details: Any) -> Claim:
        if self.timing:
            details["timing"] = True
        return Claim.from_estimate(estimate, id=self.id, description=self.description, paper=self.paper,
                                   unit=self.unit, baseline=self.baseline, expect=self.expect, headline=self.headline,
                                   details=details)


@dataclass(frozen=True, kw_only=True)
class FactSpec:
    """One row of a paper's facts table (fixed by construction, or reported without a test)."""

    id: str
    description: str
    unit: str = ""
    paper: float | None = None
    exact: bool = True

    def fact(self, value: Any, **details: Any) -> Fact:
        return Fact(id=self.id, description=self.description, value=value, unit=self.unit, paper=self.paper,
                    exact=self.exact, details=details)


@dataclass
class Results:
    """What a paper's ``run`` returns: estimates by claim id, fact values by fact id (a ``(value, details)``
    pair where details help), markdown for the report, plot paths inside the output folder."""

    estimates: dict[str, Estimate] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    tables_md: str = ""
    notes_md: str = ""
    plots: list[Path] = field(default_factory=list)


class Context:
    """Handed to a paper's ``run``: the output folders, the metrics log, stage timing and resumable caches."""

    def __init__(self, paper: str, plan: Plan, out: Path, resume: bool = True) -> None:
        from effrepro.train import MetricsLogger

        self.paper, self.plan, self.out, self.resume = paper, plan, out, resume
        self.runs = out / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLogger(out / "metrics.jsonl")
        self.timings: dict[str, float] = {}
        self.reused: dict[str, float] = {}  # cache name -> compute seconds recorded when it was made
        self.expected = _reference_stage_seconds(paper, plan.name)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (seconds accumulate under ``name`` in env.json) and say when it starts and ends, with the
        committed reference run's time for the stage as the estimate of when it will end."""
        eta = ""
        if name in self.expected and name not in self.timings:
            done = time.strftime("%H:%M", time.localtime(time.time() + self.expected[name]))
            eta = f" (the reference run took {self.expected[name]:.0f} s at 1 thread: expect it done ~{done})"
        print(f"[{self.paper}] {name} ...{eta}", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            print(f"[{self.paper}] {name} done in {seconds:.0f} s", flush=True)

    def _stored(self, name: str, key: Any) -> dict[str, Any] | None:
        """The stored entry ``runs/<name>.json`` when resuming and its key is ``key``; None otherwise."""
        path = self.runs / f"{name}.json"
        if not self.resume or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"[{self.paper}] {name}: {path} is unreadable; recomputing", flush=True)
            return None
        return stored if isinstance(stored, dict) and "value" in stored and stored.get("key") == key else None

    def is_cached(self, name: str, key: Any = None) -> bool:
        """Whether :meth:`cached` would reuse the stored value (e.g. to decide which jobs to send to workers)."""
        return self._stored(name, json.loads(json.dumps(key, default=str))) is not None

    def cached(self, name: str, compute: Callable[[], Any], key: Any = None, seconds: float | None = None) -> Any:
        """``compute()``'s JSON-able result, stored atomically as ``runs/<name>.json`` with ``key`` (the settings
        that produced it) and the seconds it took. A later run with the same key reuses it (resume; env.json then
        lists the reused entries' original compute seconds under ``reused_cache_seconds``, so a resumed run's wall
        time is not mistaken for the experiment's cost); a different key, an unreadable file or ``--no-resume``
        recomputes. ``seconds`` is the compute time to store when ``compute`` only hands over a result computed
        elsewhere (a worker process); by default the call is timed."""
        key = json.loads(json.dumps(key, default=str))
        stored = self._stored(name, key)
        if stored is not None:
            print(f"[{self.paper}] {name}: reusing {self.runs / f'{name}.json'}", flush=True)
            self.reused[name] = float(stored.get("seconds", 0.0))
            return stored["value"]
        start = time.perf_counter()
        value = compute()
        took = round(time.perf_counter() - start if seconds is None else seconds, 1)
        atomic_write_text(self.runs / f"{name}.json",
                          json.dumps({"key": key, "value": value, "seconds": took}, default=_json_plain))
        return json.loads(json.dumps(value, default=_json_plain))

    def cached_jobs(self, fn: Callable[..., Any], jobs: Mapping[Any, Sequence[Any]], names: Mapping[Any, str],
                    keys: Mapping[Any, Any], workers: int = 1) -> Iterator[tuple[Any, Any, float]]:
        """:meth:`cached` ``(names[job], lambda: fn(*jobs[job]), key=keys[job])`` for every job of a seed or arm
        grid, yielding ``(job, value, seconds)``. The jobs not cached yet go first, to :func:`run_jobs` (``workers``
        processes of one thread each), and each is stored as soon as it finishes, with its worker seconds (an
        interrupted run loses only the jobs still running); then the cached ones are read. ``seconds`` is what the
        value cost to compute: the worker's seconds, or for a reused entry the seconds stored with it (a
        recomputation here if the entry vanished meanwhile)."""
        missing = {job: args for job, args in jobs.items() if not self.is_cached(names[job], keys[job])}
        for job, value, seconds in run_jobs(fn, missing, workers):
            yield job, self.cached(names[job], lambda v=value: v, key=keys[job], seconds=seconds), seconds
        for job, args in jobs.items():
            if job not in missing:
                start = time.perf_counter()
                value = self.cached(names[job], lambda a=args: fn(*a), key=keys[job])
                yield job, value, self.reused.get(names[job], time.perf_counter() - start)


def _cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children: on a shared machine the budget is checked in
    CPU time, since wall time grows with the load (env.json records both, and the load average)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _reference_stage_seconds(paper: str, plan: str) -> dict[str, float]:
    """Stage seconds of the committed reference run of ``paper`` at this plan (empty when there is none)."""
    from effrepro.reproduce.summary import reference_dir

    path = reference_dir(paper, plan) / "env.json"
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).get("stage_seconds", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _json_plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


StageStep = Callable[[Plan, Context, Results], None]


def run_stages(steps: Mapping[str, StageStep]) -> Callable[[Plan, Context], Results]:
    """``run`` for a paper made of named stages (e.g. ``main`` and ``det``): each stage the plan selects, in the
    order of ``steps``, adds its estimates and facts to one :class:`Results`."""

    def run(plan: Plan, ctx: Context) -> Results:
        results = Results()
        for name, step in steps.items():
            if name in plan.stages:
                step(plan, ctx, results)
        return results

    return run


def default_threads() -> int:
    """2 threads on a quiet machine with 2+ cores, else 1 (``EFFREPRO_THREADS`` overrides)."""
    if os.environ.get("EFFREPRO_THREADS"):
        return int(os.environ["EFFREPRO_THREADS"])
    quiet = os.getloadavg()[0] < 1.0
    return min(2, os.cpu_count() or 1) if quiet else 1


def apply_overrides(plan: Plan, overrides: Sequence[str]) -> Plan:
    """``key=value`` overrides of plan fields (values parsed as YAML; lists become tuples). Unknown keys and
    values of the wrong type are one clear error."""
    fields = {f.name: f for f in dataclasses.fields(plan)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--set {item!r}: use key=value with a key of {type(plan).__name__}: "
                             f"{', '.join(sorted(fields))}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: the value is not valid YAML") from None
        current = getattr(plan, key)
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if current is not None and value is not None and not isinstance(value, type(current)):
            raise UsageError(f"--set {item!r}: {key} is a {type(current).__name__}, got {type(value).__name__}")
        changes[key] = value
    return dataclasses.replace(plan, **changes)


def check_output_dir(path: Path) -> Path:
    """The output folder must be creatable and writable: checked before any work, one ``error:`` line if not."""
    from effrepro.outputs import check_output_dir as check

    return check(path, "--out")


@dataclass(kw_only=True)
class Reproduction:
    """A paper's reproduction, declared: see the module docstring."""

    paper: str
    title: str
    paper_table: str
    plans: Mapping[str, Plan]
    claims: Sequence[ClaimSpec]
    run: Callable[[Plan, Context], Results]
    facts: Sequence[FactSpec] = ()
    stages: tuple[str, ...] = ("main",)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    configure: Callable[[Plan, argparse.Namespace], Plan] | None = None
    prepare: Callable[[Plan, Context], None] | None = None

    def __post_init__(self) -> None:
        ids = [s.id for s in self.claims] + [s.id for s in self.facts]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"{self.paper}: duplicate claim/fact ids {duplicates}")

    # ---- command line ------------------------------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"{self.paper} reproduce", description=self.title)
        parser.add_argument("--scale", default="smoke", help=f"one of {', '.join(SCALES)} (default smoke)")
        parser.add_argument("--tiny", action="store_true", help="smoke's code path with a tiny budget (tests)")
        parser.add_argument("--out", default=None, help=f"output folder (default results/{self.paper}/<scale>)")
        parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 2 if quiet, else 1)")
        defaults = "; ".join(f"{name}: {','.join(plan.stages)}" for name, plan in self.plans.items())
        parser.add_argument("--stages", default=None,
                            help=f"comma list of {', '.join(self.stages)} (default: the plan's own, {defaults})")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a field of the plan (repeatable)")
        parser.add_argument("--no-resume", action="store_true", help="recompute every cached stage")
        parser.add_argument("--prepare", action="store_true", help="only build the cached prerequisites")
        if self.add_arguments is not None:
            self.add_arguments(parser)
        return parser

    def plan_from_args(self, args: argparse.Namespace) -> Plan:
        if args.scale not in SCALES:
            raise UsageError(f"unknown scale {args.scale!r}; use one of {', '.join(SCALES)}")
        name = "tiny" if args.tiny else args.scale
        if args.tiny and args.scale != "smoke":
            raise UsageError("--tiny is a smoke-scale budget; drop --scale full or --tiny")
        if name not in self.plans:
            raise UsageError(f"{self.paper} has no {name} plan; use one of {', '.join(self.plans)}")
        plan = apply_overrides(self.plans[name], args.overrides)
        if args.stages is not None:
            stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
            unknown = [s for s in stages if s not in self.stages]
            if unknown or not stages:
                raise UsageError(f"--stages {args.stages!r}: use a comma list of {', '.join(self.stages)}")
            plan = dataclasses.replace(plan, stages=stages)
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError("--threads must be at least 1")
            plan = dataclasses.replace(plan, threads=args.threads)
        if self.configure is not None:
            plan = self.configure(plan, args)
        return plan

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        plan = self.plan_from_args(args)
        scale = "full" if plan.name == "full" else "smoke"
        out = check_output_dir(Path(args.out) if args.out else Path(os.environ.get("EFFREPRO_RESULTS", "results"))
                               / self.paper / scale)
        if args.prepare:
            if self.prepare is None:
                print(f"[{self.paper}] nothing to prepare: this reproduction has no shared prerequisites")
                return 0
            self.prepare(plan, Context(self.paper, plan, out, resume=True))
            return 0
        self.execute(plan, out, resume=not args.no_resume)
        return 0

    # ---- running ----------------------------------------------------------------------------------------------
    def execute(self, plan: Plan, out: Path, resume: bool = True) -> dict[str, Any]:
        """Run ``plan`` into ``out``: claims.json, report.md, env.json, metrics.jsonl; returns the claims document."""
        import torch

        threads = plan.threads or default_threads()
        torch.set_num_threads(threads)
        out.mkdir(parents=True, exist_ok=True)
        ctx = Context(self.paper, plan, out, resume)
        load_start, started, cpu_start = os.getloadavg()[0], time.time(), _cpu_seconds()
        print(f"[{self.paper}] plan {plan.name}, stages {','.join(plan.stages)}, {threads} thread(s) -> {out}",
              flush=True)
        results = self.run(plan, ctx)
        claims, facts = self.assemble(results)
        partial = set(plan.stages) != set(self.stages) and plan.name != "tiny"
        if partial and (out / "claims.json").is_file():
            claims, facts = _merge(read_claims(out / "claims.json"), claims, facts)
        document = claims_document(claims, facts)
        env = {"paper": self.paper, "plan": plan.name, "stages": list(plan.stages), **environment(),
               "torch_threads": threads, "wall_seconds": round(time.time() - started, 1),
               "cpu_seconds": round(_cpu_seconds() - cpu_start, 1),
               "stage_seconds": {k: round(v, 1) for k, v in ctx.timings.items()},
               "reused_cache_seconds": {k: round(v, 1) for k, v in ctx.reused.items()},
               "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "plan_fields": json.loads(json.dumps(dataclasses.asdict(plan), default=str))}
        atomic_write_text(out / "claims.json", json.dumps(document, indent=2) + "\n")
        atomic_write_text(out / "env.json", json.dumps(env, indent=2) + "\n")
        notes = "\n\n".join(part for part in (results.tables_md, results.notes_md) if part.strip())
        write_report(out, self.title, self.paper_table, document["claims"], document["facts"], notes,
                     results.plots, env={k: v for k, v in env.items() if k != "plan_fields"})
        counts = {v: sum(c["verdict"] == v for c in document["claims"]) for v in ("holds", "fails", "inconclusive")}
        print(f"[{self.paper}] wrote {out / 'claims.json'}: {counts['holds']} hold, {counts['fails']} fail, "
              f"{counts['inconclusive']} inconclusive; {len(document['facts'])} facts", flush=True)
        return document

    def assemble(self, results: Results) -> tuple[list[Claim], list[Fact]]:
        """Claims and facts in table order from a run's estimates; an id the tables do not declare is a bug."""
        claim_specs = {s.id: s for s in self.claims}
        fact_specs = {s.id: s for s in self.facts}
        unknown = sorted(set(results.estimates) - set(claim_specs)) + sorted(set(results.facts) - set(fact_specs))
        if unknown:
            raise ValueError(f"{self.paper}: run returned ids missing from the claims/facts tables: {unknown}")
        claims = [spec.claim(results.estimates[spec.id]) for spec in self.claims if spec.id in results.estimates]
        facts = []
        for spec in self.facts:
            if spec.id in results.facts:
                value = results.facts[spec.id]
                value, details = value if isinstance(value, tuple) else (value, {})
                facts.append(spec.fact(value, **details))
        return claims, facts


def _merge(previous: dict[str, Any], claims: list[Claim], facts: list[Fact]) -> tuple[list[Any], list[Any]]:
    """A partial-stage run replaces the entries it produced and keeps the earlier run's others."""
    new_ids = {c.id for c in claims} | {f.id for f in facts}
    kept_claims = [c for c in previous["claims"] if c["id"] not in new_ids]
    kept_facts = [f for f in previous["facts"] if f["id"] not in new_ids]
    return kept_claims + [c.as_dict() for c in claims], kept_facts + [f.as_dict() for f in facts]

