"""The stages of ``token_router_pruning reproduce`` on one loaded model (the experiment; ``reproduce.py`` turns
their results into claims).

Redundancy (cosine figure, ShortGPT's block influence) -> GA sparsity search with the static router ->
router training on the searched schedules -> GA fine-tune with the trained router -> baselines at matched
analytic FLOPs (ShortGPT, BlockPruner-mini, random and uniform token skipping) -> lm-eval accuracy (per item),
option loss and perplexity of every method against the dense model of the same run -> paired prefill latency
(per round). Every expensive result is a ``ctx.cached`` JSON under ``runs/``, keyed by its inputs, so an
interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from effrepro.bench import cuda_sync, paired_benchmark
from effrepro.errors import UsageError
from effrepro.reproduce import Context
from effrepro.train import seed_everything

from token_router_pruning.baselines import BlockPrunerResult, blockpruner_search
from token_router_pruning.config import ReproduceConfig
from token_router_pruning.eval import LmEval, encode_items, option_logliks, perplexity, text_windows
from token_router_pruning.flops import ModelDims, model_flops
from token_router_pruning.ftp import DynamicRouter, SkipPlan, StaticRouter, TokenSkipper, attach
from token_router_pruning.redundancy import RedundancyReport, block_cosines
from token_router_pruning.scheduler import GAConfig, genetic_search, uniform_allocation
from token_router_pruning.tasks import (
    PAPER_TASKS,
    load_mini_items,
    mini_task_name,
    paper_task_configs,
    train_items,
    write_mini_task_yamls,
)
from token_router_pruning.train import RouterTrainConfig, TrainExample, heldout_kl, train_router


def pct(budget: float) -> str:
    return f"{round(100 * budget):d}"


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(plan: SkipPlan | None) -> Any:
    """A JSON description of a plan (the cache key of its evaluation)."""
    if plan is None:
        return "dense"
    router = plan.router
    router_desc = None
    if isinstance(router, DynamicRouter):
        router_desc = {"dynamic": _key([v.tolist() for v in router.state_dict().values()]), **router.options()}
    elif router is not None:
        router_desc = {"name": router.name, "seed": getattr(router, "seed", None)}
    return {"sparsity": [round(v, 8) for v in plan.sparsity] if plan.sparsity else None, "router": router_desc,
            "removed": sorted(plan.removed), "scope": plan.scope}


class Experiment:
    """The model, tasks and text windows shared by the stages of one reproduce run."""

    def __init__(self, cfg: ReproduceConfig, ctx: Context, tasks_dir: str | None, lm_eval_check: int = 4,
                 data: dict[str, Path] | None = None, device: str = "cpu", dtype: str = "float32",
                 device_map: str | None = None, hf_tasks: bool = False) -> None:
        """``data``: the user's files (``alpaca``, ``corpus``; see :mod:`token_router_pruning.datafiles`);
        ``hf_tasks``: the paper's tasks from the local HF datasets cache instead of the generated families."""
        from effrepro.data import load_target

        from token_router_pruning.datafiles import alpaca_examples, load_alpaca, load_corpus

        self.cfg, self.ctx, self.runs, self.tasks_dir = cfg, ctx, ctx.runs, tasks_dir
        self.lm_eval_check, self.hf_tasks = lm_eval_check, hf_tasks
        data = data or {}
        self.corpus = load_corpus(data["corpus"]) if "corpus" in data else None
        self.corpus_key = _key(list(self.corpus)) if self.corpus else "embedded"  # part of every text cache key
        seed_everything(cfg.seed)
        self.model, self.tokenizer = load_target(cfg.target, dtype=getattr(torch, dtype),
                                                 **({"device_map": device_map} if device_map else {}))
        if not device_map:
            self.model.to(device)
        self.model.eval()
        self.skipper: TokenSkipper = attach(self.model)
        self.dims = ModelDims.from_config(self.model.config)
        self.n = self.dims.layers
        self._setup_tasks()
        self.windows = {
            "calib": self.text("calib", cfg.data.text_len, cfg.data.redundancy_windows),
            "eval": self.text("eval", cfg.data.text_len, cfg.data.ppl_windows),
            "train": self.text("train", cfg.data.router_text_len, cfg.data.train_windows),
        }
        alpaca = alpaca_examples(self.tokenizer, load_alpaca(data["alpaca"]), cfg.data.router_text_len) \
            if "alpaca" in data else None
        self._setup_router_data(alpaca)
        self.rows: dict[str, dict[str, Any]] = {}

    def _setup_tasks(self) -> None:
        cfg = self.cfg
        if self.tasks_dir is None and not self.hf_tasks:
            task_dir = self.runs / "lm_eval_tasks"
            names = write_mini_task_yamls(task_dir)
            # lm-eval scores a few items per family only, to check the batched scorer against it (parity fact)
            self.lm_eval = LmEval(self.model, self.tokenizer, names, include_path=[task_dir],
                                  limit=min(self.lm_eval_check, cfg.data.test_per_family))
            self.calib_items = encode_items(self.tokenizer, load_mini_items("calibration", cfg.data.calib_per_family))
            self.calib_lm_eval = None
            self.test_items = encode_items(self.tokenizer, load_mini_items("test", cfg.data.test_per_family))
            self.prompt_lengths = [len(it.context) for it in self.test_items]
            self.ref_len = int(round(statistics.mean(self.prompt_lengths)))
            return
        self.test_items = []
        if self.hf_tasks:  # lm-eval's own task configs over the local HF datasets cache (checked up front)
            from token_router_pruning.datafiles import hf_task_configs

            configs, include = hf_task_configs(PAPER_TASKS), []
            calib = [dict(c) for c in hf_task_configs((cfg.data.calib_task,))]
        else:
            configs = paper_task_configs(self.tasks_dir)
            include = [Path(self.tasks_dir)] if list(Path(self.tasks_dir).glob("*.yaml")) else []
            calib = [dict(c) for c in paper_task_configs(self.tasks_dir, (cfg.data.calib_task,))]
            for c in calib:
                if "train" not in c["dataset_kwargs"]["data_files"]:
                    raise UsageError(f"GA fitness needs {self.tasks_dir}/{cfg.data.calib_task}/train.jsonl "
                                     "(a split disjoint from the reported one)")
        metric = {c["task"]: ("acc_norm" if c["metadata"]["paper_task"] in ("arc_challenge", "arc_easy", "hellaswag")
                              else "acc") for c in configs}
        self.lm_eval = LmEval(self.model, self.tokenizer, configs, include_path=include,
                              limit=cfg.data.test_per_family or None, metric=metric)
        for c in calib:
            c.update(task=c["task"] + "_calib", test_split="train")
            c.pop("validation_split", None)
        self.calib_lm_eval = LmEval(self.model, self.tokenizer, calib, limit=cfg.data.calib_limit)
        self.calib_items = []
        self.prompt_lengths = []
        self.ref_len = cfg.data.text_len

    def text(self, split: str, length: int, count: int) -> torch.Tensor:
        """``count`` windows of ``length`` tokens of the run's corpus (the user's ``--data corpus`` or the
        embedded one)."""
        return text_windows(self.tokenizer, length, split, count, corpus=self.corpus)

    def _setup_router_data(self, alpaca: list[TrainExample] | None = None) -> None:
        """The router's training set: generated train-split prompts of every family (scored at their last
        token, where the answer is read) or the user's Alpaca examples (scored on the response), and corpus
        windows (scored on their tail), shuffled by the loader; held-out prompts for the per-epoch KL."""
        data = self.cfg.data
        windows = self.windows["train"]
        tail = min(self.cfg.router.text_scored, windows.shape[1])
        examples = [TrainExample(row, tail) for row in windows]
        if alpaca:
            held = min(data.router_heldout or 8, len(alpaca) - 1)
            self.router_examples = examples + alpaca[:len(alpaca) - held]
            self.router_heldout = alpaca[len(alpaca) - held:] or examples[:4]
            return
        prompts = train_items(data.router_prompts + data.router_heldout) if data.router_prompts else []
        self.router_examples, self.router_heldout = list(examples), []
        for index, item in enumerate(encode_items(self.tokenizer, prompts)):
            example = TrainExample(torch.tensor(item.context, dtype=torch.long), 1)
            held = index % (data.router_prompts + data.router_heldout) >= data.router_prompts
            (self.router_heldout if held else self.router_examples).append(example)
        if not self.router_heldout:
            self.router_heldout = examples[:4]

    # ---- plans, fitness, FLOPs ----------------------------------------------------------------------------
    def plan(self, name: str, schedule, router) -> SkipPlan:
        return SkipPlan(name=name, sparsity=tuple(float(v) for v in schedule), router=router, scope=self.cfg.scope)

    def fitness(self, router) -> Any:
        """GA fitness: mean log-likelihood of the correct option on the calibration items (never the test)."""
        def evaluate(schedule: np.ndarray) -> float:
            with self.skipper.use(self.plan("fitness", schedule, router)):
                if self.calib_lm_eval is not None:
                    values = [v for r in self.calib_lm_eval.run().values() for v in r["gold_loglik"]]
                else:
                    values = [ll[0] for ll in option_logliks(self.model, self.calib_items,
                                                             self.cfg.data.fitness_batch_size, gold_only=True)]
            return float(np.mean(values))
        return evaluate

    def flops(self, plan: SkipPlan | None, seq_len: int) -> dict[str, float]:
        if plan is None:
            return model_flops(self.dims, seq_len).as_dict()
        dynamic = plan.router is not None and plan.router.needs_attention
        return model_flops(self.dims, seq_len, sparsity=plan.sparsity, removed=plan.removed, scope=plan.scope,
                           dynamic_router=dynamic).as_dict()

    # ---- evaluation ---------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        if self.test_items:
            return sorted({mini_task_name(it.family) for it in self.test_items})
        return self.lm_eval.task_names

    def subset(self, per_family: int | None) -> list:
        """The first ``per_family`` test items of each family (all when None)."""
        if per_family is None:
            return self.test_items
        seen: dict[str, int] = {}
        out = []
        for item in self.test_items:
            seen[item.family] = seen.get(item.family, 0) + 1
            if seen[item.family] <= per_family:
                out.append(item)
        return out

    def score_items(self, items: list) -> dict[str, dict[str, Any]]:
        """Per family: accuracy, per-item correctness and gold log-likelihood from the batched scorer (equal to
        lm-eval's log-likelihoods: single-token options of one context scored by one forward, batched)."""
        logliks = option_logliks(self.model, items, self.cfg.data.fitness_batch_size)
        rows: dict[str, dict[str, Any]] = {}
        for item, ll in zip(items, logliks):
            row = rows.setdefault(mini_task_name(item.family), {"correct": [], "gold_loglik": []})
            row["correct"].append(float(max(range(len(ll)), key=lambda o: ll[o]) == item.gold))
            row["gold_loglik"].append(float(ll[item.gold]))
        for row in rows.values():
            row.update(acc=float(np.mean(row["correct"])), n=len(row["correct"]))
        return rows

    def evaluate(self, key: str, plan: SkipPlan | None, budget: float | None, family: str,
                 per_family: int | None = None) -> dict[str, Any]:
        """lm-eval accuracy with per-item correctness and gold log-likelihood, and text perplexity, of one plan
        (on the first ``per_family`` test items of each family when given)."""
        per_family = per_family if self.test_items else None
        def compute() -> dict[str, Any]:
            start = time.perf_counter()
            with torch.no_grad(), self.skipper.use(plan):
                tasks = self.score_items(self.subset(per_family)) if self.test_items else self.lm_eval.run()
                ppl = perplexity(self.model, self.windows["eval"])
            return {"tasks": {t: {"acc": r["acc"], "n": r["n"]} for t, r in tasks.items()},
                    "correct": {t: r["correct"] for t, r in tasks.items()},
                    "gold_loglik": {t: r["gold_loglik"] for t, r in tasks.items()},
                    "ppl": ppl["tail_ppl"], "text_nll_all_positions": ppl["nll"],
                    "seconds": time.perf_counter() - start}

        inputs = {"v": 3, "plan": describe(plan), "tasks": self.task_names,
                  "limit": self.cfg.data.test_per_family if self.test_items else self.lm_eval.limit,
                  "per_family": per_family,
                  "ppl": list(self.windows["eval"].shape), "target": self.cfg.target,
                  "dtype": str(next(self.model.parameters()).dtype),
                  **({"corpus": self.corpus_key} if self.corpus else {})}
        if plan is None:  # the dense model's evaluation: a shared prerequisite, reused across runs
            row = shared_cached(self.ctx, f"eval_{key}", compute, inputs)
        else:
            row = self.ctx.cached(f"eval_{key}", compute, inputs)
        row.update(method=family, budget=budget, key=key,
                   flops=self.flops(plan, self.ref_len), flops_bench=self.flops(plan, self.cfg.bench.seq_len))
        self.rows[key] = row
        acc = np.mean([v["acc"] for v in row["tasks"].values()])
        self.ctx.log.log(stage="eval", key=key, method=family, budget=budget, acc=float(acc), ppl=row["ppl"],
                         flops_ratio=row["flops"]["flops_ratio"])
        print(f"[eval] {key:>22}: acc {acc:.3f}  ppl {row['ppl']:.2f}  flops {row['flops']['flops_ratio']:.3f}",
              flush=True)
        return row


# ---- the shared cache --------------------------------------------------------------------------------------
def code_version() -> str:
    """Hash of what a dense evaluation depends on besides its settings: the scorer, the shipped task items and
    the torch / transformers versions (a change to any of them makes a new shared entry)."""
    import transformers

    from token_router_pruning import eval as eval_module
    from token_router_pruning import tasks

    digest = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for path in [Path(eval_module.__file__), Path(tasks.__file__), *sorted(tasks.MINI_DIR.glob("*.jsonl"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def shared_dir() -> Path:
    from effrepro.data import cache_dir

    return cache_dir() / "token_router_pruning"


def shared_cached(ctx: Context, name: str, compute: Any, key: dict) -> Any:
    """``ctx.cached`` with a copy in the shared effrepro cache (``$EFFREPRO_CACHE/token_router_pruning``, keyed
    by the settings and :func:`code_version`): a fresh run reuses it (env.json then lists it under
    ``reused_cache_seconds``, with the seconds it took to make); ``reproduce --prepare`` builds it. A damaged or
    mismatched entry is recomputed by ``ctx.cached`` and the shared copy replaced."""
    import shutil

    from effrepro.report import atomic_write_text

    key = {**key, "code": code_version()}
    shared = shared_dir() / f"{name}_{_key(key)}.json"
    local = ctx.runs / f"{name}.json"
    if ctx.resume and shared.is_file() and not local.is_file():
        shutil.copyfile(shared, local)
    value = ctx.cached(name, compute, key)
    text = local.read_text() if local.is_file() else None
    if text is not None and (not shared.is_file() or shared.read_text() != text):
        shared.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(shared, text)
    return value


# ---- stages ------------------------------------------------------------------------------------------------
def stage_redundancy(exp: Experiment) -> dict:
    """Share of (token, block) pairs with cos(in, out) > 0.8, overall and per window (the unit of the claims)."""
    def compute() -> dict:
        report = RedundancyReport(block_cosines(exp.model, exp.windows["calib"]), 0.8, 3, True)
        flags = (report.cosines[:, :, 1:] > report.threshold).float()  # (blocks, windows, tokens)
        middle = [i for i in range(exp.n) if i not in report.edge_blocks]
        gap = flags[middle].mean(dim=(0, 2)) - flags[report.edge_blocks].mean(dim=(0, 2)) if middle else None
        return {**report.as_dict(), "per_window_share": flags.mean(dim=(0, 2)).tolist(),
                "per_window_gap": gap.tolist() if gap is not None else []}

    result = exp.ctx.cached("redundancy", compute, {"v": 2, "windows": list(exp.windows["calib"].shape),
                                                    "target": exp.cfg.target,
                                                    **({"corpus": exp.corpus_key} if exp.corpus else {})})
    exp.ctx.log.log(stage="redundancy", overall=result["overall_share"], edge=result["edge_share"],
                    middle=result["middle_share"])
    return result


def stage_search(exp: Experiment, budget: float, router, name: str, ga: GAConfig, seeds=()) -> dict:
    def compute() -> dict:
        start = time.perf_counter()
        fitness = exp.fitness(router)
        result = genetic_search(fitness, exp.n, budget, ga, seeds=[np.asarray(s) for s in seeds],
                                dims=exp.dims, seq_len=exp.ref_len,
                                log=lambda row: exp.ctx.log.log(stage=name, budget=budget, **row))
        # the uniform allocation under the same router and fitness: what the search has to beat
        uniform = fitness(uniform_allocation(exp.n, budget))
        return {**result.as_dict(), "uniform_fitness": uniform, "seconds": time.perf_counter() - start}

    inputs = {"v": 2, "budget": budget, "ga": asdict(ga),
              "router": describe(exp.plan("x", [0.0] * exp.n, router))["router"],
              "seeds": [list(map(float, s)) for s in seeds], "calib": len(exp.calib_items), "target": exp.cfg.target,
              "scope": exp.cfg.scope}
    result = exp.ctx.cached(f"{name}_{pct(budget)}", compute, inputs)
    print(f"[{name}] budget {budget}: best fitness {result['best_fitness']:.4f} after {result['evaluations']} "
          "evaluations", flush=True)
    return result


def stage_router(exp: Experiment, schedules: list[list[float]], name: str = "router",
                 cfg: RouterTrainConfig | None = None) -> tuple[DynamicRouter, dict]:
    """One router for every budget's schedule (steps alternate); resumable from ``runs/<name>_<key>``, a folder
    keyed by the settings, so a changed config trains afresh (and ``--no-resume`` always does). The summary
    holds the per-epoch history (training losses, held-out KL) and the static router's held-out KL on the
    first schedule (the reference the trained router has to beat)."""
    import shutil

    cfg = cfg or exp.cfg.router
    start = time.perf_counter()
    lengths = [int(e.ids.shape[0]) for e in exp.router_examples]
    key = _key({"router": asdict(cfg), "schedules": schedules, "examples": [len(lengths), sum(lengths)],
                "heldout": len(exp.router_heldout), "target": exp.cfg.target, "scope": exp.cfg.scope, "v": 2})
    out_dir = exp.runs / f"{name}_{key}"
    if not exp.ctx.resume:
        shutil.rmtree(out_dir, ignore_errors=True)
    router, summary = train_router(exp.model, exp.skipper, schedules, exp.router_examples, cfg, out_dir=out_dir,
                                   heldout=exp.router_heldout)
    for row in summary["history"]:
        exp.ctx.log.log(stage=name, **row)
    static = exp.plan("static", schedules[0], StaticRouter())
    static_kl, _ = heldout_kl(exp.model, exp.skipper, static, exp.router_heldout)
    summary = {**summary, "seconds": time.perf_counter() - start, "static_heldout_kl": static_kl,
               "examples": len(lengths), "heldout": len(exp.router_heldout)}
    final = summary["final"]
    print(f"[{name}] {cfg.steps} steps: distill {final.get('train_distill', float('nan')):.4f} held-out KL "
          f"{final.get('eval_kl', float('nan')):.4f} (static router {static_kl:.4f})", flush=True)
    return router, summary


def stage_determinism(exp: Experiment, schedule: list[float], best_fitness: float) -> dict[str, float]:
    """Same seed -> same router weights (two short trainings) and the same fitness of the searched schedule."""
    cfg = exp.cfg.router
    short = type(cfg)(**{**asdict(cfg), "steps": 2, "steps_per_epoch": 2})
    weights = []
    for _ in range(2):
        r, _ = train_router(exp.model, exp.skipper, [schedule], exp.router_examples[:2], short, out_dir=None)
        weights.append(torch.cat([p.detach().flatten() for p in r.parameters()]))
    again = exp.fitness(StaticRouter())(np.asarray(schedule))
    return {"router_max_abs_diff": float((weights[0] - weights[1]).abs().max()),
            "fitness_abs_diff": abs(again - best_fitness)}


def stage_blockpruner(exp: Experiment, min_ratio: float) -> BlockPrunerResult:
    windows = exp.text("calib", exp.cfg.data.blockpruner_len, exp.cfg.data.blockpruner_windows)

    def compute() -> dict:
        start = time.perf_counter()
        result = blockpruner_search(exp.model, exp.skipper, windows, exp.dims, exp.ref_len, min_ratio,
                                    lazy_top=exp.cfg.blockpruner_lazy_top,
                                    log=lambda row: exp.ctx.log.log(stage="blockpruner", **row))
        return {**result.as_dict(), "seconds": time.perf_counter() - start}

    inputs = {"min_ratio": round(min_ratio, 6), "windows": list(windows.shape), "lazy": exp.cfg.blockpruner_lazy_top,
              "ref_len": exp.ref_len, "target": exp.cfg.target, **({"corpus": exp.corpus_key} if exp.corpus else {})}
    data = exp.ctx.cached("blockpruner", compute, inputs)
    print(f"[blockpruner] {len(data['order'])} sub-blocks ordered with {data['evaluations']} evaluations", flush=True)
    return BlockPrunerResult.from_dict(data)


def stage_scorer_check(exp: Experiment, plans: dict[str, SkipPlan | None]) -> dict[str, dict[str, float]]:
    """lm-eval itself on the first ``lm_eval_check`` test items per family, beside the batched scorer that
    produces the reported numbers: the largest |gold log-likelihood difference| and correctness disagreements."""
    per_family, seen, items = exp.lm_eval.limit, {}, []
    for item in exp.test_items:
        seen[item.family] = seen.get(item.family, 0) + 1
        if seen[item.family] <= per_family:
            items.append(item)

    def compute() -> dict[str, dict[str, float]]:
        out = {}
        for name, plan in plans.items():
            with torch.no_grad(), exp.skipper.use(plan):
                reference, ours = exp.lm_eval.run(), exp.score_items(items)
            diffs = [abs(a - b) for t in ours for a, b in zip(ours[t]["gold_loglik"], reference[t]["gold_loglik"])]
            flips = sum(a != b for t in ours for a, b in zip(ours[t]["correct"], reference[t]["correct"]))
            out[name] = {"max_abs_loglik_diff": max(diffs), "correct_disagreements": flips, "items": len(items)}
        return out

    return exp.ctx.cached("scorer_check", compute, {"plans": {k: describe(p) for k, p in plans.items()},
                                                    "per_family": per_family, "target": exp.cfg.target})


@torch.no_grad()
def stage_latency(exp: Experiment, plans: dict[str, SkipPlan | None]) -> dict[str, list[float]]:
    """Prefill seconds per round (batch ``bench.batch_size``, ``bench.seq_len`` tokens, next-token logits only),
    the plans interleaved round-robin with rotating order so machine drift hits them alike. Not cached: a
    timing belongs to the machine state of this run."""
    bench = exp.cfg.bench
    ids = exp.text("eval", bench.seq_len, bench.batch_size).to(next(exp.model.parameters()).device)

    def runner(plan: SkipPlan | None):
        def call() -> None:
            with exp.skipper.use(plan):
                exp.model(input_ids=ids, logits_to_keep=1)
        return call

    stats = paired_benchmark({name: runner(plan) for name, plan in plans.items()}, warmup=bench.warmup,
                             repeats=bench.repeats, sync=cuda_sync)
    rounds = {name: list(s.samples) for name, s in stats.items()}
    exp.ctx.log.log(stage="latency", **{k: statistics.median(v) for k, v in rounds.items()})
    return rounds
