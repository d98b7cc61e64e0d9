"""A draft tree sized for the hardware (EAGLE-2's ``total_token=-1``): measure, then maximise the cost model.

The expected speedup of a tree ``(top_k, depth, total_tokens)`` over plain decoding is the harness's cost model

    speedup = tau(k, d, N) * t_step / (t_draft(k, d) + t_verify(k, d, N))

with every term measured on the current device for the head at hand:

* ``tau(k, d, N)`` (tokens per verification pass) by **replaying greedy decoding offline**: plain greedy answers to
  a few prompts (``greedy_sequences``), their target features from one pass, and at every position the
  proposer's draft levels; a tree's accepted length is the longest path whose tokens equal the greedy
  continuation (what ``greedy_verify`` accepts), and the cycles are walked as the generate loop walks them. This
  needs draft forwards only, no verification pass per tree, and equals a real greedy run's acceptance (a test
  compares the accept lengths). For a proposer whose depth-``d`` levels are the first ``d + 1`` levels of a
  deeper one (EAGLE-2: ``prefix=True``) one run at the largest depth serves every depth.
* ``t_draft(k, d)``: median time of a draft round (one new position, the catch-up pass included).
* ``t_verify(k, d, N)``: a tree pass of N nodes without the LM head, plus the LM head on the rows greedy
  verification reads (``greedy_verify_features``: the tree's nodes with children, measured per tree, + 1).
* ``t_step``: one plain decoding step. All timings are medians of interleaved repeats at the answers' median
  context (``effrepro.bench.paired_benchmark``).

``best_tree`` is the pure selection (tested on synthetic costs); ``tune_tree`` does the measuring.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from effrepro.errors import UsageError
from effrepro.specdec.generate import GenerationConfig, autoregressive_generate
from effrepro.specdec.protocol import LevelProposer, TreeConfig
from effrepro.specdec.target import TargetAdapter
from effrepro.specdec.tree import DraftLevel, tree_from_parents

ProposerMaker = Callable[[TreeConfig], LevelProposer]


@dataclass
class TreeGrid:
    """The candidate trees: every ``(top_k, depth, total_tokens)`` with ``total_tokens - 1 <= pool size``."""

    top_k: tuple[int, ...] = (2, 4, 6, 8, 10)
    depth: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    total_tokens: tuple[int, ...] = (4, 6, 8, 12, 16, 24, 32, 48, 60)

    def __post_init__(self) -> None:
        if not self.top_k or not self.depth or not self.total_tokens:
            raise UsageError("a tree grid needs at least one top_k, depth and total_tokens")
        if min(self.top_k) < 1 or min(self.depth) < 1 or min(self.total_tokens) < 2:
            raise UsageError("tree grid: top_k >= 1, depth >= 1, total_tokens >= 2")


@dataclass
class TreeCosts:
    """Measured seconds: one plain step, a draft round per ``(k, d)``, a verification per ``(k, d, N)``."""

    t_step: float
    draft: dict[tuple[int, int], float]
    verify: dict[tuple[int, int, int], float]


@dataclass
class TreeChoice:
    """The chosen tree and the cost-model table it was picked from (one row per candidate)."""

    tree: TreeConfig
    speedup: float
    tau: float
    table: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"tree": asdict(self.tree), "speedup": self.speedup, "tau": self.tau, "table": self.table,
                "details": self.details}


def expected_speedup(tau: float, t_step: float, t_draft: float, t_verify: float) -> float:
    """The cost model: tokens per cycle times the plain step time over the cycle time."""
    return tau * t_step / (t_draft + t_verify)


def best_tree(taus: dict[tuple[int, int, int], float], costs: TreeCosts) -> TreeChoice:
    """The ``(k, d, N)`` of ``taus`` with the largest expected speedup; ties go to the smaller tree (N, then d,
    then k). Every candidate needs its draft and verify costs."""
    if not taus:
        raise UsageError("no candidate trees to choose from")
    table = []
    for (k, d, n), tau in taus.items():
        if (k, d) not in costs.draft or (k, d, n) not in costs.verify:
            raise UsageError(f"no measured cost for the tree (top_k {k}, depth {d}, total {n})")
        speed = expected_speedup(tau, costs.t_step, costs.draft[(k, d)], costs.verify[(k, d, n)])
        table.append({"top_k": k, "depth": d, "total_tokens": n, "tau": tau, "t_draft": costs.draft[(k, d)],
                      "t_verify": costs.verify[(k, d, n)], "speedup": speed})
    best = max(table, key=lambda r: (r["speedup"], -r["total_tokens"], -r["depth"], -r["top_k"]))
    tree = TreeConfig(int(best["top_k"]), int(best["depth"]), int(best["total_tokens"]))
    return TreeChoice(tree=tree, speedup=best["speedup"], tau=best["tau"],
                      table=sorted(table, key=lambda r: -r["speedup"]), details={"t_step": costs.t_step})


# ----- acceptance by offline greedy replay -----
def greedy_sequences(target: TargetAdapter, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                     stop_token_ids: tuple[int, ...] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(prompt_ids, greedy_answer_ids)]``: plain greedy decoding of every prompt (the replay's ground truth)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids)
    out = []
    for prompt in prompts:
        result = autoregressive_generate(target, prompt, config)
        out.append((prompt.flatten().long().cpu(), torch.tensor(result.tokens, dtype=torch.long)))
    return out


def _pool(levels: list[DraftLevel]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened candidates of all levels: tokens, scores, pool index of the parent (-1 root) and depth."""
    tokens, scores, parents, depths = [], [], [], []
    start = previous = 0
    for number, level in enumerate(levels):
        tokens.append(level.tokens.flatten().long().cpu())
        scores.append(level.scores.flatten().float().cpu())
        pars = level.parents.flatten().long().cpu()
        parents.append(torch.full_like(pars, -1) if number == 0 else pars + previous)
        depths.append(torch.full_like(pars, number + 1))
        previous, start = start, start + pars.numel()
    return torch.cat(tokens), torch.cat(scores), torch.cat(parents), torch.cat(depths)


def replay_trees(levels: list[DraftLevel], depths: Sequence[int], totals: Sequence[int],
                 continuation: torch.Tensor) -> dict[tuple[int, int], tuple[int, int]]:
    """For every tree ``(d, N)``: ``tree_from_levels(levels[:d + 1], root, N)`` judged against the target's greedy
    continuation after the root. Returns ``(accepted, rows)``: the longest path whose tokens all match (what
    ``greedy_verify`` accepts) and the LM-head rows greedy verification reads (nodes with children, root
    included)."""
    tokens, scores, parents, depth = _pool(levels)
    size = tokens.numel()
    reach = depth <= continuation.numel()
    want = continuation[(depth - 1).clamp(max=max(continuation.numel() - 1, 0))] if continuation.numel() else tokens
    ok = reach & (tokens == want)
    bounds = [0]
    for level in levels:
        bounds.append(bounds[-1] + level.tokens.numel())
    totals_t = torch.tensor([n - 1 for n in totals])
    has_parent = parents >= 0
    out = {}
    for d in depths:
        allowed = depth <= d + 1
        key = torch.where(allowed, -scores, torch.full_like(scores, float("inf")))
        order = torch.sort(key, stable=True).indices  # the ranking of tree_from_levels over the cut pool
        rank = torch.empty(size, dtype=torch.long)
        rank[order] = torch.arange(size)
        kept = (rank[None] < totals_t[:, None]) & allowed[None]  # [totals, pool]
        matched = kept & ok[None]
        for number in range(1, min(d + 1, len(levels))):  # parents precede children: one level at a time
            lo, hi = bounds[number], bounds[number + 1]
            matched[:, lo:hi] &= matched[:, parents[lo:hi]]
        deepest = torch.where(matched, depth[None], torch.zeros_like(depth)[None]).amax(dim=1)
        children = torch.zeros(len(totals), size, dtype=torch.long)
        children.index_add_(1, parents.clamp(min=0), (kept & has_parent[None]).long())  # kept children per entry
        inner = (children > 0).sum(dim=1) + kept.any(dim=1).long()
        for i, n in enumerate(totals):
            out[(d, n)] = (int(deepest[i]), int(inner[i]))
    return out


@torch.no_grad()
def replay_acceptance(target: TargetAdapter, proposer: LevelProposer,
                      sequences: list[tuple[torch.Tensor, torch.Tensor]], depths: Sequence[int],
                      totals: Sequence[int]) -> dict[tuple[int, int], dict[str, Any]]:
    """Greedy decoding replayed offline for every tree ``(d, N)`` with one proposer (its levels cut to ``d + 1``).

    Returns per tree ``{"accept_lengths": [...], "cycles", "tau", "rows"}`` (``rows``: mean LM-head rows of
    greedy verification per cycle).
    """
    trees = [(d, n) for d in depths for n in totals]
    results: dict[tuple[int, int], dict[str, Any]] = {tree: {"accept_lengths": [], "rows": []} for tree in trees}
    for prompt, answer in sequences:
        if answer.numel() < 2:
            continue
        sequence = torch.cat([prompt, answer])
        _, features = target.prefill(sequence)
        proposer.reset()
        start, end = prompt.numel(), sequence.numel()
        per_root = {}
        for root in range(start, end - 1):  # a round at every position the walk may visit
            context = proposer.context_length
            levels = proposer.propose_levels(features[context:root],
                                             sequence[context + 1: root + 1].to(features.device))
            per_root[root] = replay_trees(levels, depths, totals, sequence[root + 1:])
        for tree in trees:
            position = start
            while position < end - 1:
                accepted, rows = per_root[position][tree]
                results[tree]["accept_lengths"].append(accepted)
                results[tree]["rows"].append(rows)
                position += accepted + 1
    for item in results.values():
        cycles = len(item["accept_lengths"])
        item["cycles"] = cycles
        item["tau"] = sum(a + 1 for a in item["accept_lengths"]) / cycles if cycles else float("nan")
        item["rows"] = statistics.fmean(item["rows"]) if item["rows"] else 1.0
    return results


# ----- timings -----
@torch.no_grad()
def draft_round_time(make: ProposerMaker, tree: TreeConfig, sequence: torch.Tensor, features: torch.Tensor,
                     context: int, rounds: int = 7) -> float:
    """Median seconds of a draft round (one new position) at ``context`` with a fresh proposer for ``tree``."""
    proposer = make(tree)
    proposer.reset()
    proposer.propose_levels(features[:context], sequence[1: context + 1].to(features.device))
    times = []
    for position in range(context, min(context + rounds + 1, sequence.numel() - 1)):
        start = time.perf_counter()
        proposer.propose_levels(features[position:position + 1], sequence[position + 1: position + 2].to(
            features.device))
        if features.device.type == "cuda":
            torch.cuda.synchronize(features.device)
        times.append(time.perf_counter() - start)
    times = times[1:] or times  # the first round after the catch-up warms up
    return statistics.median(times)


def verify_costs(target: TargetAdapter, context: int, sizes: list[int], rows: list[int], repeats: int = 7,
                 warmup: int = 2) -> dict[str, float]:
    """Median seconds of a plain step (``step``), a tree pass of N nodes without the LM head (``pass_N``) and
    the LM head on r rows (``head_r``), interleaved, at ``context``."""
    from effrepro.bench import cuda_sync, paired_benchmark

    prompt = torch.randint(0, target.vocab_size, (max(context, 1),), generator=torch.Generator().manual_seed(0))
    _, features = target.prefill(prompt)
    base = target.length

    def step() -> None:
        target.decode(torch.tensor([1]))
        target.cache.crop(base)

    def tree_pass(size: int) -> Callable[[], None]:
        tree = tree_from_parents(torch.ones(size, dtype=torch.long), torch.arange(-1, size - 1))

        def run() -> None:
            target.verify(tree, logits=False)
            target.commit(torch.tensor([0]))
            target.cache.crop(base)

        return run

    def head(count: int) -> Callable[[], None]:
        block = features[:1].expand(count, -1).contiguous()
        return lambda: target.logits(block)

    fns: dict[str, Callable[[], None]] = {"step": step}
    fns.update({f"pass_{n}": tree_pass(n) for n in sorted(set(sizes))})
    fns.update({f"head_{r}": head(r) for r in sorted(set(rows))})
    sync = cuda_sync if target.device.type == "cuda" else None
    stats = paired_benchmark(fns, warmup=warmup, repeats=repeats, sync=sync)
    return {name: s.median for name, s in stats.items()}


def _interpolate(points: dict[int, float], x: float) -> float:
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]] * x / xs[0] if xs[0] else points[xs[0]]
    for low, high in zip(xs, xs[1:], strict=False):
        if x <= high:
            return points[low] + (points[high] - points[low]) * (x - low) / (high - low)
    return points[xs[-1]] * x / xs[-1]


def tune_tree(target: TargetAdapter, make: ProposerMaker, sequences: list[tuple[torch.Tensor, torch.Tensor]],
              grid: TreeGrid | None = None, prefix: bool = True, repeats: int = 7,
              log: Callable[[str], None] | None = None) -> TreeChoice:
    """Measure every candidate of ``grid`` for the proposer ``make(tree)`` and return the cost-model optimum.

    ``sequences``: ``greedy_sequences`` of a few prompts the head was not evaluated on. ``prefix=True`` replays
    every depth from one proposer per top-k (valid when a shallower round's levels are the deeper round's first
    levels, as in EAGLE-2); else one proposer per ``(k, d)``.
    """
    grid = grid or TreeGrid()
    say = log or (lambda text: None)
    if not sequences:
        raise UsageError("tree tuning needs at least one greedy sequence")
    started = time.perf_counter()
    taus: dict[tuple[int, int, int], float] = {}
    rows: dict[tuple[int, int, int], float] = {}
    for k in grid.top_k:
        runs = [(max(grid.depth), list(grid.depth))] if prefix else [(d, [d]) for d in grid.depth]
        for run_depth, depths in runs:
            proposer = make(TreeConfig(k, run_depth, max(grid.total_tokens)))
            replay = replay_acceptance(target, proposer, sequences, depths, list(grid.total_tokens))
            for (d, n), item in replay.items():
                if n - 1 <= k + d * k * k:  # a total the depth-d pool can fill
                    taus[(k, d, n)], rows[(k, d, n)] = item["tau"], item["rows"]
        say(f"tune: top_k {k} replayed ({time.perf_counter() - started:.0f} s)")
    contexts = [int(p.numel() + a.numel() // 2) for p, a in sequences]
    context = int(statistics.median(contexts))
    prompt, answer = max(sequences, key=lambda s: s[1].numel())
    sequence = torch.cat([prompt, answer])
    _, features = target.prefill(sequence)
    start = min(prompt.numel(), max(sequence.numel() - 10, 1))
    draft = {(k, d): draft_round_time(make, TreeConfig(k, d, max(grid.total_tokens)), sequence, features, start)
             for k in grid.top_k for d in grid.depth}
    say(f"tune: draft rounds timed ({time.perf_counter() - started:.0f} s)")
    head_rows = sorted({1, 4, 16, max(grid.total_tokens)})
    measured = verify_costs(target, context, list(grid.total_tokens), head_rows, repeats=repeats)
    head = {r: measured[f"head_{r}"] for r in head_rows}
    verify = {key: measured[f"pass_{key[2]}"] + _interpolate(head, rows[key] + 1) for key in taus}
    choice = best_tree(taus, TreeCosts(measured["step"], draft, verify))
    choice.details.update(context=context, sequences=len(sequences), costs=measured,
                          answer_tokens=sum(int(a.numel()) for _, a in sequences),
                          seconds=time.perf_counter() - started)
    say(f"tune: chose top_k {choice.tree.top_k}, depth {choice.tree.depth}, total {choice.tree.total_tokens}: "
        f"tau {choice.tau:.2f}, expected speedup {choice.speedup:.2f}x")
    return choice


# ----- the tuned tree of a head on this machine (the CLI's ``--total-tokens -1``) -----
def tuning_prompts(tokenizer: Any, count: int = 4, chat_template: str = "auto") -> list[torch.Tensor]:
    """Prompt ids of the first turns of ``count`` MT-bench questions the held-out evaluation does not use (one per
    category, from the training side of ``mtbench_split``)."""
    from effrepro.specdec.draft_data import ChatFormatter
    from effrepro.specdec.questions import mtbench_split

    train, _ = mtbench_split()
    step = max(1, len(train) // max(count, 1))
    formatter = ChatFormatter(tokenizer, chat_template)
    return [formatter.prompt_ids([{"role": "user", "content": q["turns"][0]}]) for q in train[::step][:count]]


def _machine_key(target: TargetAdapter) -> dict[str, Any]:
    import platform

    device = str(target.device)
    name = torch.cuda.get_device_name(target.device) if target.device.type == "cuda" else platform.processor()
    return {"device": device, "name": name, "threads": torch.get_num_threads(), "dtype": str(target.dtype)}


def head_digest(head: torch.nn.Module) -> str:
    """A digest of a head's weights and draft vocabulary (cache keys of results that depend on the head)."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(head.state_dict().items()):
        digest.update(name.encode())
        data = value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()
        digest.update(f"{tuple(data.shape)}:{float(data.double().sum()):.10e}:{float(data.double().abs().sum()):.10e}"
                      .encode())
    return digest.hexdigest()[:16]


def tuned_tree(target: TargetAdapter, tokenizer: Any, head: torch.nn.Module, make: ProposerMaker,
               grid: TreeGrid | None = None, prompts: int = 4, max_new_tokens: int = 48, prefix: bool = True,
               chat_template: str = "auto", cache: bool = True, log: Callable[[str], None] | None = None
               ) -> TreeChoice:
    """``tune_tree`` for ``head`` on this machine, cached as JSON under ``cache_dir()/specdec/trees/<key>.json``
    (keyed by the head's weights and vocabulary, the target, the device, threads, dtype and the grid)."""
    import hashlib
    import json

    from effrepro.data import cache_dir
    from effrepro.specdec.target import stop_tokens

    grid = grid or TreeGrid()
    key_data = {"head": head_digest(head), "target": getattr(target.config, "_name_or_path", ""),
                "vocab": target.vocab_size, "machine": _machine_key(target), "grid": asdict(grid),
                "prompts": prompts, "max_new_tokens": max_new_tokens, "prefix": prefix, "version": 1}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "specdec" / "trees" / f"{key}.json"
    if cache and path.is_file():
        saved = json.loads(path.read_text())
        tree = TreeConfig(**saved["tree"])
        if log:
            log(f"tune: cached choice {path}: top_k {tree.top_k}, depth {tree.depth}, total {tree.total_tokens} "
                f"(expected speedup {saved['speedup']:.2f}x)")
        return TreeChoice(tree=tree, speedup=saved["speedup"], tau=saved["tau"], table=saved["table"],
                          details=saved["details"])
    ids = tuning_prompts(tokenizer, prompts, chat_template)
    sequences = greedy_sequences(target, ids, max_new_tokens, stop_tokens(target.model, tokenizer))
    choice = tune_tree(target, make, sequences, grid, prefix=prefix, log=log)
    choice.details["key"] = key_data
    if cache:
        from effrepro.report import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(choice.as_dict(), indent=1, default=str))
        choice.details["path"] = str(path)
    return choice
