"""``python -m effrepro.specdec race``: plain greedy decoding and every installed speculative method in one
interleaved run on this machine, each with the tree it uses, and the tau each would need to break even.

Each paper's reproduction compares its method with EAGLE-2 in its own process. A user choosing a method wants
them side by side: the same questions, the same process, the methods taking turns per question (the harness
rotates the order), so machine noise falls on all of them alike. The unit of replication is the turn; tokens/s
and the speed-up over plain decoding carry a paired bootstrap interval over turns.

Methods come from the entry-point group ``effrepro.specdec.methods``: a project registers
``name = "package.module:function"``, a function ``(model, tokenizer) -> RaceMethod`` that returns its miniature
head (the shared head cache's entry, trained on first use) and the tree its smoke reproduction uses. EAGLE-2 is
built in: the shared cached baseline head. Heads are the miniature's (SmolLM2-135M-Instruct); a full-scale
comparison runs each paper's own evaluation on its target.

The break-even tau is ``(t_draft + t_verify(N)) / t_step`` from this run's measured costs: the tokens per cycle
a method would need to match plain decoding here, whatever its head.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.report import atomic_write_text, environment
from effrepro.specdec.harness import BASELINE, EvalConfig, evaluate
from effrepro.specdec.protocol import TreeConfig
from effrepro.specdec.target import TargetAdapter
from effrepro.specdec.turns import ratio_of_sums
from effrepro.stats import bootstrap

ENTRY_GROUP = "effrepro.specdec.methods"
EAGLE2_TREE = TreeConfig(top_k=4, depth=5, total_tokens=24)  # the tree of the jakiro miniature's EAGLE-2


@dataclass
class RaceMethod:
    """One contestant: ``factory`` builds its proposer for a target; ``tree`` and ``head`` describe it."""

    factory: Callable[[TargetAdapter], Any]
    tree: dict[str, Any]
    head: dict[str, Any] = field(default_factory=dict)


def eagle2_method(model: Any, tokenizer: Any) -> RaceMethod:
    """The shared EAGLE-2 baseline head of the miniature (trained on first use) with :data:`EAGLE2_TREE`."""
    from effrepro.specdec.draft_data import draft_data_folders
    from effrepro.specdec.eagle import eagle_factory, head_from_checkpoint
    from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, SMOKE_HEAD_TRAIN, eagle2_baseline
    from effrepro.train import load_checkpoint

    data_dirs = draft_data_folders(model, tokenizer, SMOKE_DRAFT_DATA, progress=False)
    cached = eagle2_baseline(model, data_dirs, SMOKE_HEAD_TRAIN, progress=True)
    embed = model.get_input_embeddings().weight.detach()
    head = head_from_checkpoint(load_checkpoint(cached.path), embed).to(embed.device).eval()
    return RaceMethod(eagle_factory(head, EAGLE2_TREE), asdict(EAGLE2_TREE),
                      {"path": str(cached.path), "steps": cached.steps})


MethodLoader = Callable[[], Callable[[Any, Any], RaceMethod]]


def available_methods() -> dict[str, MethodLoader]:
    """EAGLE-2 and every method an installed project registers under :data:`ENTRY_GROUP`, each as a loader
    (an entry point imports its project only when loaded)."""
    methods: dict[str, MethodLoader] = {"eagle2": lambda: eagle2_method}
    for entry in entry_points(group=ENTRY_GROUP):
        methods[entry.name] = entry.load
    return methods


def race(model: Any, tokenizer: Any, names: list[str], config: EvalConfig,
         out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Build the named methods, run them and plain decoding interleaved, and summarise per method."""
    known = available_methods()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; installed: {', '.join(known)} (a project registers one "
                         f"under the entry-point group {ENTRY_GROUP!r})")
    contestants = {name: known[name]()(model, tokenizer) for name in names}
    target = TargetAdapter(model, max_length=config.max_length)
    load_start, started = os.getloadavg()[0], time.time()
    result = evaluate(target, tokenizer, {n: m.factory for n, m in contestants.items()}, config,
                      out_dir=Path(out_dir) / "turns" if out_dir else None, progress=progress)
    table = summarize_race(result["records"], result["summary"], result["costs"], contestants)
    env = {**environment(), "eval_wall_seconds": round(time.time() - started, 1),
           "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}
    document = {"methods": table, "costs_s": result["costs"], "config": asdict(config), "env": env}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "race.json", json.dumps(document, indent=1) + "\n")
        atomic_write_text(out / "race.md", race_markdown(document) + "\n")
    return document


def _tokens_per_s(rows: list[dict]) -> dict[str, Any]:
    import numpy as np

    data = np.array([[r["new_tokens"], r["wall_time"]] for r in rows], dtype=np.float64)
    est = bootstrap(data, lambda d: float(d[:, 0].sum() / d[:, 1].sum()))
    return {"value": est.value, "ci": list(est.ci), "n": est.n}


def summarize_race(records: dict[str, list[dict]], summary: dict[str, dict], costs: dict[str, float] | None,
                   contestants: dict[str, RaceMethod]) -> dict[str, dict[str, Any]]:
    """Per method: tokens/s (ratio of sums over turns, bootstrap interval), speed-up over plain (paired), tau,
    the tree, the head and the break-even tau from the measured costs."""
    table: dict[str, dict[str, Any]] = {BASELINE: {"tokens_per_s": _tokens_per_s(records[BASELINE])}}
    for name, method in contestants.items():
        rows, item = records[name], summary[name]
        speedup = ratio_of_sums(rows, records[BASELINE], "new_tokens", "wall_time")
        entry: dict[str, Any] = {
            "tokens_per_s": _tokens_per_s(rows),
            "speedup_vs_plain": {"value": speedup.value, "ci": list(speedup.ci), "n": speedup.n},
            "tau": item["tau"], "tree": method.tree, "head": method.head,
            "greedy_mismatches": item.get("greedy_mismatches"),
            "draft_ms_per_cycle": item.get("draft_ms_per_cycle_median"),
        }
        if item.get("cost_model_speedup"):
            entry["break_even_tau"] = item["tau"] / item["cost_model_speedup"]
        table[name] = entry
    return table


def race_markdown(document: dict[str, Any]) -> str:
    """The race as a markdown table (what ``race.md`` holds)."""
    lines = ["| method | tree (top-k, depth, tokens) | tau | tokens/s [95 % CI] | vs plain [95 % CI] | "
             "break-even tau | greedy mismatches |", "|---|---|---|---|---|---|---|"]
    for name, m in document["methods"].items():
        tps = m["tokens_per_s"]
        speed = f"{tps['value']:.2f} [{tps['ci'][0]:.2f}, {tps['ci'][1]:.2f}]"
        if name == BASELINE:
            lines.append(f"| plain greedy | - | 1 | {speed} | 1 | - | - |")
            continue
        tree = m["tree"]
        vs = m["speedup_vs_plain"]
        even = f"{m['break_even_tau']:.2f}" if m.get("break_even_tau") else "-"
        lines.append(f"| {name} | {tree.get('top_k')}, {tree.get('depth')}, {tree.get('total_tokens')} | "
                     f"{m['tau']:.2f} | {speed} | {vs['value']:.3f} [{vs['ci'][0]:.3f}, {vs['ci'][1]:.3f}] | "
                     f"{even} | {m['greedy_mismatches']} |")
    turns = statistics.median([m["tokens_per_s"]["n"] for m in document["methods"].values()])
    lines.append("")
    lines.append(f"{turns:.0f} turns, interleaved per question; intervals are bootstrap over turns (paired for "
                 "the speed-up). Break-even tau = (draft + verify time per cycle) / plain step time, measured here.")
    env = document.get("env")
    if env:
        lines.append(f"Commit {env.get('git_commit')}, {env.get('cpu_model')}, {env.get('torch_threads')} thread(s), "
                     f"load average {env.get('load_average')}, evaluation {env.get('eval_wall_seconds')} s, "
                     f"started {env.get('started')}.")
    return "\n".join(lines)
