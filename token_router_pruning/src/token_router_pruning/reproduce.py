"""``token_router_pruning reproduce``: FTP's experiments in one run, on the effrepro reproduce skeleton.

The stages live in :mod:`token_router_pruning.pipeline`; this module declares the plans (a YAML config in
``configs/`` plus dotted overrides) and runs the stages; :mod:`token_router_pruning.measures` turns their results
into estimates over the unit of replication (test items for accuracies, both arms' per-item correctness resampled
together; text windows for redundancy; interleaved latency rounds for the prefill speed-up) and facts, and
:mod:`token_router_pruning.tables` holds the claims and facts tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.reproduce import Context, Plan, Reproduction, Results

from token_router_pruning import datafiles, figures
from token_router_pruning.baselines import matched_shortgpt
from token_router_pruning.config import ReproduceConfig, config_path, window_needs
from token_router_pruning.ftp import RandomRouter, StaticRouter
from token_router_pruning.measures import estimates, facts
from token_router_pruning.pipeline import (
    Experiment,
    pct,
    stage_blockpruner,
    stage_determinism,
    stage_latency,
    stage_redundancy,
    stage_router,
    stage_scorer_check,
    stage_search,
)
from token_router_pruning.planfile import save_plan
from token_router_pruning.scheduler import GAConfig, bi_proportional_allocation, uniform_allocation
from token_router_pruning.tables import BUDGET_PCTS, CLAIMS, FACTS, PAPER_TABLE
from token_router_pruning.tasks import PAPER_TASKS

TINY_OVERRIDES = (
    "data.calib_per_family=1", "data.test_per_family=2", "data.text_len=32", "data.redundancy_windows=2",
    "data.ppl_windows=1", "data.train_windows=4", "data.blockpruner_windows=1", "data.blockpruner_len=24",
    "data.router_text_len=32", "data.router_prompts=2", "data.router_heldout=1", "data.secondary_per_family=1",
    "ga.population=3", "ga.generations=1", "ga.elitism=1", "finetune.population=2", "finetune.generations=1",
    "router.steps=2", "router.steps_per_epoch=1", "router.warm_start=2", "router.keep_best=true",
    "bench.seq_len=64", "bench.repeats=2", "bench.warmup=0",
    "blockpruner_lazy_top=2", "allocations=[uniform]", "latency_methods=[ftp]", "budgets=[0.25]",
    "dynamic_stage1=true", "distill_ablation=true",  # the optional arms' code path, end to end
)


@dataclass(frozen=True, kw_only=True)
class FTPPlan(Plan):
    """``config``: ``configs/<config>.yaml`` or a path; ``overrides``: dotted ``key=value`` on it (``--set``)."""

    config: str = "smoke"
    overrides: tuple[str, ...] = ()
    target: str | None = None
    tasks_dir: str | None = None
    lm_eval_check: int = 4  # test items per family that lm-eval itself also scores (parity with our scorer)
    data: tuple[str, ...] = ()  # KIND=PATH: alpaca (router training json), corpus (text windows)
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None

    def load(self) -> ReproduceConfig:
        path = Path(self.config) if self.config.endswith((".yaml", ".yml")) else config_path(self.config)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}; pass --config")
        extra = [f"target={self.target}"] if self.target else []
        cfg = load_config(path, ReproduceConfig, list(self.overrides) + extra)
        unknown = [b for b in cfg.budgets if round(100 * b) not in BUDGET_PCTS]
        if unknown:
            raise UsageError(f"budgets {unknown}: the claims table covers {', '.join(f'0.{p}' for p in BUDGET_PCTS)}")
        return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default configs/<scale>.yaml)")
    parser.add_argument("--cfg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted; `token_router_pruning reproduce --set KEY=VALUE` takes "
                             "config keys too (e.g. --set router.steps=300 --set ga.generations=6)")
    parser.add_argument("--target", help="local HF model directory (required for --scale full)")
    parser.add_argument("--tasks-dir", help="paper tasks as local JSONL (--scale full; default: lm-eval's tasks "
                        "from the local HF datasets cache)")
    parser.add_argument("--data", action="append", default=[], metavar="KIND=PATH",
                        help="alpaca=FILE.json (router training, Alpaca format) or corpus=FILE_OR_DIR (.txt / .jsonl "
                        "text for the calibration, evaluation and training windows)")
    parser.add_argument("--device", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--dtype", help="float32, bfloat16 or float16 (default bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--device-map", help="HF device_map (e.g. auto) for a model that does not fit one GPU")


def configure(plan: FTPPlan, args: argparse.Namespace) -> FTPPlan:
    """Command-line paths and overrides into the plan; the config is loaded once here so a bad key, value or path
    is one ``error:`` line before any work."""
    if plan.name == "full":
        if not args.target:
            raise UsageError("--scale full needs --target /path/to/hf-model (e.g. LLaMA-2-7B or Qwen1.5-7B); the "
                             "tasks come from --tasks-dir or lm-eval's datasets in the local HF cache")
        if not Path(args.target).expanduser().is_dir():
            raise UsageError(f"--target {args.target}: no such directory")
    datafiles.parse_data_args(args.data)
    device, dtype = datafiles.resolve_device(args.device, args.dtype, args.device_map)
    plan = dataclasses.replace(plan, config=args.config or plan.config, overrides=plan.overrides + tuple(args.cfg),
                               target=args.target or plan.target, tasks_dir=args.tasks_dir or plan.tasks_dir,
                               data=plan.data + tuple(args.data), device=device, dtype=dtype,
                               device_map=args.device_map or plan.device_map)
    check_inputs(plan, plan.load())
    return plan


def check_inputs(plan: FTPPlan, cfg: ReproduceConfig) -> None:
    """Before any model work: the corpus holds every window the plan cuts, and at full scale without
    ``--tasks-dir`` every task's dataset is in the local HF datasets cache."""
    from effrepro.data.llm import resolve_model_dir
    from transformers import AutoTokenizer

    data = datafiles.parse_data_args(plan.data)
    corpus = datafiles.load_corpus(data["corpus"]) if "corpus" in data else None
    if "alpaca" in data:
        datafiles.load_alpaca(data["alpaca"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(cfg.target))
    datafiles.check_windows(window_needs(cfg), tokenizer, corpus,
                            str(data["corpus"]) if corpus else "the embedded corpus; --data corpus=PATH for yours")
    if not (cfg.data.train_windows or cfg.data.router_prompts or "alpaca" in data):
        raise UsageError("the router has no training data: give --data alpaca=FILE.json or set data.train_windows")
    if plan.name == "full" and not plan.tasks_dir:
        datafiles.check_hf_datasets(datafiles.hf_task_configs(PAPER_TASKS + (cfg.data.calib_task,)))


def arm_items(cfg: ReproduceConfig, budget: float) -> tuple[int | None, int | None]:
    """Test items per family (None: all) of the main arms and of the secondary arms at ``budget``: the first
    budget is the headline one; the others score ``data.other_budget_per_family`` items per family."""
    sub = cfg.data.secondary_per_family
    if budget == cfg.budgets[0] or cfg.data.other_budget_per_family is None:
        return None, sub
    main = cfg.data.other_budget_per_family
    return main, main if sub is None else min(sub, main)


# ---- the run -----------------------------------------------------------------------------------------------
def setup(plan: FTPPlan, ctx: Context) -> Experiment:
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-run progress bars
    with ctx.stage("setup"):
        return Experiment(plan.load(), ctx, plan.tasks_dir, plan.lm_eval_check, datafiles.parse_data_args(plan.data),
                          plan.device or "cpu", plan.dtype or "float32", plan.device_map,
                          hf_tasks=plan.name == "full" and not plan.tasks_dir)


def prepare(plan: FTPPlan, ctx: Context) -> None:
    """The shared prerequisite (``make prepare``): the dense model's evaluation, kept in the effrepro cache."""
    exp = setup(plan, ctx)
    with ctx.stage("eval"):
        exp.evaluate("dense", None, None, "dense")


def run(plan: FTPPlan, ctx: Context) -> Results:
    exp = setup(plan, ctx)
    cfg = exp.cfg
    print(f"[setup] {cfg.target}: {exp.n} blocks; reference length {exp.ref_len} tokens; "
          f"{len(exp.calib_items)} calibration items; tasks {exp.lm_eval.task_names}", flush=True)
    with ctx.stage("redundancy"):
        red = stage_redundancy(exp)
    with ctx.stage("eval"):
        exp.evaluate("dense", None, None, "dense")
    static = StaticRouter()
    with ctx.stage("ga_static"):
        searched = {b: stage_search(exp, b, static, "ga_static", cfg.ga) for b in cfg.budgets}
    with ctx.stage("router"):
        router, router_summary = stage_router(exp, [searched[b]["best"] for b in cfg.budgets])
        ablation = stage_router(exp, [searched[b]["best"] for b in cfg.budgets], "router_all_positions",
                                dataclasses.replace(cfg.router, distill_positions="all")) \
            if cfg.distill_ablation else None
    ft_cfg = GAConfig(**{**asdict(cfg.ga), "population": cfg.finetune.population,
                         "generations": cfg.finetune.generations,
                         "elitism": min(cfg.ga.elitism, cfg.finetune.population - 1)})
    with ctx.stage("ga_finetune"):
        tuned = {b: stage_search(exp, b, router, "ga_finetune", ft_cfg, seeds=[searched[b]["best"]])
                 for b in cfg.budgets}
    ftp_plans = {b: exp.plan(f"ftp_{pct(b)}", tuned[b]["best"], router) for b in cfg.budgets}
    with ctx.stage("blockpruner"):
        pruner = stage_blockpruner(exp, min(exp.flops(p, exp.ref_len)["flops_ratio"] for p in ftp_plans.values())
                                   - 0.02)
    plans, matched = {}, {}
    for b in cfg.budgets:
        p, target = pct(b), exp.flops(ftp_plans[b], exp.ref_len)["flops_ratio"]
        main, sub = arm_items(cfg, b)
        short_plan, short_ratio = matched_shortgpt(red["block_influence"], exp.dims, exp.ref_len, target)
        bp_plan, bp_ratio, bp_count = pruner.matched(exp.dims, exp.ref_len, target)
        matched[b] = {"ftp": target, "shortgpt": short_ratio, "blockpruner": bp_ratio,
                      "shortgpt_layers": sorted({i for i, _ in short_plan.removed}), "blockpruner_removed": bp_count}
        plans[f"ftp_{p}"] = ("ftp", b, ftp_plans[b], main)
        if (cfg.dynamic_stage1 or ablation) and b == cfg.budgets[0]:  # the distillation ablation: headline budget
            plans[f"ftp_dynamic_stage1_{p}"] = ("ftp_dynamic_stage1", b,
                                                exp.plan("dyn", searched[b]["best"], router), sub)
        if ablation and b == cfg.budgets[0]:
            plans[f"ftp_all_positions_stage1_{p}"] = ("ftp_all_positions_stage1", b,
                                                      exp.plan("dyn_all", searched[b]["best"], ablation[0]), sub)
        plans[f"ftp_static_{p}"] = ("ftp_static", b, exp.plan("static", searched[b]["best"], static), main)
        plans[f"random_{p}"] = ("random", b, exp.plan("random", searched[b]["best"], RandomRouter(cfg.seed)), sub)
        if "uniform" in cfg.allocations:
            plans[f"uniform_{p}"] = ("uniform", b, exp.plan("uniform", uniform_allocation(exp.n, b), static), sub)
        if "bi" in cfg.allocations:
            plans[f"bi_alloc_{p}"] = ("bi_alloc", b, exp.plan("bi", bi_proportional_allocation(
                red["block_influence"], b, cfg.ga.s_max), static), sub)
        plans[f"shortgpt_{p}"] = ("shortgpt", b, short_plan.with_name("shortgpt"), main)
        plans[f"blockpruner_{p}"] = ("blockpruner", b, bp_plan.with_name("blockpruner"), main)
    with ctx.stage("eval"):
        for key, (family, b, skip_plan, per_family) in plans.items():
            exp.evaluate(key, skip_plan, b, family, per_family)
        check = stage_scorer_check(exp, {"dense": None, f"ftp_{pct(cfg.budgets[0])}": ftp_plans[cfg.budgets[0]]}) \
            if exp.test_items else None
    for b in cfg.budgets:
        save_plan(ctx.runs / f"ftp_{pct(b)}.pt", tuned[b]["best"], router, cfg.scope, {"budget": b})
        save_plan(ctx.runs / f"ftp_static_{pct(b)}.pt", searched[b]["best"], None, cfg.scope, {"budget": b})
    with ctx.stage("determinism"):
        first = cfg.budgets[0]
        determinism = stage_determinism(exp, searched[first]["best"], searched[first]["best_fitness"])
    latency_plans = {"dense": None, **{k: plans[k][2] for b in cfg.budgets for m in cfg.latency_methods
                                       if (k := f"{m}_{pct(b)}") in plans}}
    with ctx.stage("latency"):
        latency = stage_latency(exp, latency_plans)

    results = Results(estimates=estimates(exp, red, latency), facts=facts(
        exp, matched, searched, tuned, latency, determinism, router, router_summary, ablation))
    if check is not None:
        results.facts["scorer_vs_lm_eval"] = (max(v["max_abs_loglik_diff"] for v in check.values()), check)
    results.tables_md = figures.notes(exp, latency)
    results.plots = figures.plots(exp, red, searched, tuned, router_summary, latency, ablation)
    return results


REPRODUCTION = Reproduction(
    paper="token_router_pruning", title="FTP token-router pruning: reproduction", paper_table=PAPER_TABLE,
    plans={"smoke": FTPPlan(), "tiny": FTPPlan(name="tiny", overrides=TINY_OVERRIDES),
           "full": FTPPlan(name="full", config="full")},
    claims=CLAIMS, facts=FACTS, run=run, add_arguments=add_arguments, configure=configure, prepare=prepare,
)
