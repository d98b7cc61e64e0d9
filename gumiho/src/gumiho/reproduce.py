"""``gumiho reproduce``: Gumiho against EAGLE-2 in miniature (smoke) or at the paper's recipe (full).

The run config is a YAML file of ``gumiho/configs`` (``smoke.yaml`` / ``full.yaml``, the same files ``gumiho
train`` and ``gumiho eval`` read) plus ``key=value`` overrides; the plan names the file and the overrides.

1. draft data from the target (the engine's cached miniature set, shared with jakiro: self-distilled answers to
   the MT-bench questions the evaluation does not use, plus corpus instructions);
2. the heads as cached prerequisites, trained on the **same data with the same budget** (steps, data order, draft
   vocabulary): the EAGLE-2 baseline (the cached head jakiro compares against too) and the Gumiho drafts of
   ``variants``: ``gumiho`` (2 serial + 5 MLP) and, where asked, ``gumiho-1s`` (1 + 6), ``gumiho-3s`` (3 + 4),
   ``medusa`` (0 + 7, all parallel);
3. one interleaved evaluation on held-out MT-bench questions: plain decoding, every draft as a tree (equal budget),
   Gumiho with FTA on, top-1 chains of EAGLE-2 / Gumiho for exact per-position acceptance (``extra_decoders``
   adds Gumiho with the official compat flags and the Medusa chain). Every comparison is paired by turn, with a
   bootstrap interval over turns;
4. for the two headline ratios only, more turns answered by the EAGLE-2 and Gumiho trees alone, in cached blocks
   (``gumiho.headline``), pooled with the turns of step 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from effrepro.config import config_to_dict, load_config, package_configs
from effrepro.errors import UsageError
from effrepro.reproduce import Context, Plan, Reproduction, Results
from effrepro.specdec import TargetAdapter
from effrepro.specdec.headcache import CachedHead, unseen_corpus_prompts
from effrepro.specdec.turns import acceptance_difference, mismatch_rate, ratio_of_sums

from gumiho.claims import CLAIMS, FACTS
from gumiho.config import GumihoRunConfig
from gumiho.data import split_mtbench, write_questions
from gumiho.eval import chain_tree, eagle_factory, eagle_tree_for, gumiho_factory, run_eval
from gumiho.headline import ARMS, headline_blocks, two_arm_turns
from gumiho.prereqs import cached_heads, load_head, target_and_data, training_summary
from gumiho.reporting import PAPER_TABLE, notes, plot, training_plot
from gumiho.train import VARIANTS

CONFIGS = package_configs("gumiho")  # configs/ shipped in the package (smoke.yaml, full.yaml)

# The --tiny budget (same code path): a handful of samples, steps and tokens; every decoder path, end to end.
TINY_OVERRIDES = (
    "data.self_generated=3", "data.self_max_new_tokens=16", "data.max_len=128", "train.max_len=128",
    "train.epochs=3", "train.steps_per_epoch=1", "train.batch_size=1", "train.warmup_steps=1", "train.draft_vocab=512",
    "eval.max_questions=2", "eval.max_turns=1", "eval.max_new_tokens=8", "eval.warmup=0", "eval.cost_model_repeats=1",
    "extra_decoders=[gumiho-official,medusa-chain]",
)


@dataclass(frozen=True, kw_only=True)
class GumihoPlan(Plan):
    config: str = "smoke.yaml"  # a file of gumiho/configs, or a path
    config_set: tuple[str, ...] = ()  # key=value overrides of the run config (e.g. eval.max_questions=8)
    target: str = ""  # replaces the config's target (full scale: a local HF model directory)
    device: str = "cpu"
    dtype: str = "float32"
    variants: tuple[str, ...] = ("gumiho",)  # Gumiho drafts trained and evaluated (gumiho.train.VARIANTS)
    # more turns for the intervals: this many corpus instructions the draft data did not answer (one turn each),
    # evaluated like the MT-bench questions in a second interleaved run and pooled with them in the claims
    extra_heldout: int = 16
    # the two headline ratios only: this many further unseen corpus instructions, answered by the EAGLE-2 and
    # Gumiho trees alone (cached blocks of headline_block turns) and pooled with the turns above. 128: chosen
    # before the run from the 32-turn look (power analysis in gumiho/README.md)
    headline_extra: int = 128
    headline_block: int = 16


SMOKE = GumihoPlan()
TINY = GumihoPlan(name="tiny", config_set=TINY_OVERRIDES, variants=tuple(VARIANTS), extra_heldout=1,
                  headline_extra=3, headline_block=2)
FULL = GumihoPlan(name="full", config="full.yaml", device="cuda", dtype="float16", variants=tuple(VARIANTS),
                  extra_heldout=0, headline_extra=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config YAML (default: the plan's, configs/smoke.yaml)")
    parser.add_argument("--target", default=None, help="local HF model dir or smollm2-135m (full scale: required)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the plan's)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="target dtype")
    parser.add_argument("config_overrides", nargs="*", help=argparse.SUPPRESS)  # `gumiho reproduce --set` fills it
    parser.epilog = ("`gumiho reproduce --set KEY=VALUE` also takes run-config keys, e.g. --set eval.max_questions=8 "
                     "--set extra_decoders=[medusa-chain]")


def load_run_config(plan: GumihoPlan) -> GumihoRunConfig:
    """The plan's YAML run config with its overrides and target (errors are one UsageError)."""
    path = Path(plan.config) if Path(plan.config).is_file() else CONFIGS / plan.config
    if not path.is_file():
        raise UsageError(f"run config {plan.config!r} not found (neither a file nor one of {CONFIGS})")
    for item in plan.config_set:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not key=value (e.g. train.epochs=5)")
    config = load_config(path, GumihoRunConfig, list(plan.config_set))
    if plan.target:
        config.target = config.data.target = plan.target
    return config


def configure(plan: GumihoPlan, args: argparse.Namespace) -> GumihoPlan:
    changes = {k: v for k, v in (("config", args.config), ("target", args.target), ("device", args.device),
                                 ("dtype", args.dtype)) if v is not None}
    plan = dataclasses.replace(plan, **changes, config_set=plan.config_set + tuple(args.config_overrides))
    if plan.name == "full" and not plan.target:
        raise UsageError("--scale full needs --target /path/to/hf-model (e.g. vicuna-7b-v1.3) and a GPU; "
                         "see gumiho/README.md")
    load_run_config(plan)  # every config error before any work
    return plan


def _methods(config: GumihoRunConfig, model: Any, heads: dict[str, CachedHead]) -> dict[str, Any]:
    eagle = load_head("eagle2", heads["eagle2"].path, model)
    drafts = {name: load_head(name, head.path, model) for name, head in heads.items() if name != "eagle2"}
    corrected = replace(config.tree, fta="off", official_compat=False)
    methods = {"eagle2": eagle_factory(eagle, eagle_tree_for(corrected))}
    methods.update({name: gumiho_factory(draft, corrected) for name, draft in drafts.items()})
    methods["gumiho+fta"] = gumiho_factory(drafts["gumiho"], replace(corrected, fta="official"))
    if "gumiho-official" in config.extra_decoders:
        methods["gumiho-official"] = gumiho_factory(drafts["gumiho"], replace(corrected, official_compat=True))
    chain = chain_tree(corrected)
    methods["eagle2-chain"] = eagle_factory(eagle, eagle_tree_for(replace(chain, top_k=1)))
    methods["gumiho-chain"] = gumiho_factory(drafts["gumiho"], chain)
    if "medusa-chain" in config.extra_decoders and "medusa" in drafts:
        methods["medusa-chain"] = gumiho_factory(drafts["medusa"], chain)
    return methods


def prepare(plan: GumihoPlan, ctx: Context) -> None:
    config = load_run_config(plan)
    with ctx.stage("data"):
        model, _, data_dir = target_and_data(config, plan)
        print(f"[gumiho] draft data: {data_dir}")
    with ctx.stage("training"):
        for name, head in cached_heads(config, plan, model, data_dir, progress=True).items():
            print(f"[gumiho] head {name}: {head.path} ({head.steps} steps)")


def run(plan: GumihoPlan, ctx: Context) -> Results:
    config = load_run_config(plan)
    with ctx.stage("data"):
        model, tokenizer, data_dir = target_and_data(config, plan)
        if config.data_source == "mtbench_split":  # evaluate on the held-out questions only
            config.eval.questions = str(write_questions(split_mtbench()[1], ctx.out / "eval_questions.jsonl"))
        data_meta = json.loads((data_dir / "meta.json").read_text())
        ctx.log.log(stage="data", folder=str(data_dir), **{k: data_meta.get(k) for k in ("samples", "tokens")})
    with ctx.stage("training"):
        heads = cached_heads(config, plan, model, data_dir)
        trained = training_summary(heads, model, ctx)
    target = TargetAdapter(model, max_length=config.eval.max_length)
    key = json.loads(json.dumps({"config": config_to_dict(config), "device": plan.device, "dtype": plan.dtype,
                                 "heads": {n: h.entry["sha256"] for n, h in heads.items()}}, default=str))
    with ctx.stage("evaluation"):
        def evaluate(eval_config: Any = config.eval, folder: str = "eval") -> dict[str, Any]:
            result = run_eval(target, tokenizer, _methods(config, model, heads), eval_config, ctx.out / folder,
                              progress=False)
            return {k: result[k] for k in ("summary", "records", "costs")}

        result = ctx.cached("eval", evaluate, key=key)
    records = result["records"]
    if plan.extra_heldout:
        with ctx.stage("evaluation_extra"):
            fresh = unseen_corpus_prompts(config.data, plan.extra_heldout)
            path = write_questions([{"question_id": f"corpus-{i}", "category": "corpus", "turns": [p]}
                                    for i, p in enumerate(fresh)], ctx.out / "extra_questions.jsonl")
            extra_config = replace(config.eval, questions=str(path), max_questions=0, max_turns=1)
            extra = ctx.cached("eval_extra", lambda: evaluate(extra_config, "eval_extra"),
                               key={**key, "extra_heldout": plan.extra_heldout})
        records = {name: rows + extra["records"][name] for name, rows in records.items()}
    headline: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    blocks = headline_blocks(config.data, plan.extra_heldout, plan.headline_extra, plan.headline_block)
    if blocks:
        with ctx.stage("evaluation_headline"):
            arms = {name: factory for name, factory in _methods(config, model, heads).items() if name in ARMS}
            for block in blocks:
                part = ctx.cached(block.name, lambda b=block: two_arm_turns(target, tokenizer, arms, config.eval, b,
                                                                            ctx.out), key={**key, **block.key()})
                for arm in ARMS:
                    headline[arm] += part[arm]
    estimates, facts = measure(config, records, result["summary"], trained, headline)
    return Results(estimates=estimates, facts=facts, notes_md=notes(config, trained, data_meta, result["summary"],
                                                                    plan.extra_heldout, len(headline["gumiho"])),
                   plots=plot(result["summary"], ctx.out) + training_plot(heads, ctx.out))


def measure(config: GumihoRunConfig, records: dict[str, list[dict]], summary: dict[str, dict[str, Any]],
            trained: dict[str, dict[str, Any]], headline: dict[str, list[dict]] | None = None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Estimates paired over turns and facts, from the turn records of the interleaved evaluation(s); the two
    headline ratios pool ``headline`` (EAGLE-2 and Gumiho alone on further turns) with them."""
    r = records

    def tau(a: str, b: str) -> Any:
        return ratio_of_sums(r[a], r[b], "cycle_tokens", "cycles")

    more = headline or {arm: [] for arm in ARMS}
    g, e = r["gumiho"] + more["gumiho"], r["eagle2"] + more["eagle2"]
    turns = {"main_evaluation": len(r["gumiho"]), "headline_only": len(more["gumiho"]),
             "headline_only_outputs_differ": sum(a["tokens"] != b["tokens"] for a, b in
                                                 zip(more["gumiho"], more["eagle2"], strict=True))}
    chain = r["gumiho-chain"]
    estimates = {
        "tau_ratio_vs_eagle2": ratio_of_sums(g, e, "cycle_tokens", "cycles", turns=turns),
        "speedup_ratio_vs_eagle2": ratio_of_sums(g, e, "new_tokens", "wall_time", turns=turns),
        "speedup_vs_plain": ratio_of_sums(r["gumiho"], r["plain"], "new_tokens", "wall_time"),
        "early_position_acceptance": acceptance_difference(chain, [1], chain, range(2, config.tree.depth + 1)),
        "a1_vs_eagle2": acceptance_difference(chain, [1], r["eagle2-chain"], [1]),
        "fta_tau_gain": tau("gumiho+fta", "gumiho"),
        "fta_outputs_identical": mismatch_rate([r["gumiho+fta"]], r["plain"]),
        "lossless_fta_off": mismatch_rate([r[n] for n in r if n not in ("plain", "gumiho+fta", "gumiho-official")],
                                          r["plain"]),
    }
    pairs = {"tau_ratio_vs_medusa": ("gumiho", "medusa"), "ablation_serial_2_vs_1": ("gumiho", "gumiho-1s"),
             "ablation_serial_3_vs_2": ("gumiho-3s", "gumiho"), "compat_fix_tau": ("gumiho", "gumiho-official")}
    for claim, (a, b) in pairs.items():
        if a in r and b in r:
            estimates[claim] = tau(a, b)
    budgets = {n: t["budget"] for n, t in trained.items()}
    estimates = {k: v if k in ("fta_outputs_identical", "lossless_fta_off") else
                 dataclasses.replace(v, details={**v.details, "head_budgets": budgets}) for k, v in estimates.items()}
    estimates = {k: v for k, v in estimates.items() if v.value == v.value}  # NaN: a position never reached
    passes = {n: summary[n]["draft_forwards_per_cycle"] for n in summary if n != "plain"}
    cost = {n: summary[n].get("cost_model_speedup") for n in summary if n != "plain"}
    facts = {
        "serial_passes_gumiho": (passes["gumiho"], {"per_method": passes}),
        "serial_passes_ratio_vs_eagle2": passes["gumiho"] / passes["eagle2"],
        "trainable_params_gumiho": (trained["gumiho"]["params"], {n: t["params"] for n, t in trained.items()}),
        "train_steps_per_head": (trained["gumiho"]["steps"], {n: t["steps"] for n, t in trained.items()}),
        "tau_gumiho": (summary["gumiho"]["tau"], {n: summary[n]["tau"] for n in passes}),
        "tau_eagle2": summary["eagle2"]["tau"],
        "heldout_top1_eagle2": (trained["eagle2"]["final"].get("eval_top1"), trained["eagle2"]["budget"]),
        "heldout_top1_gumiho": (trained["gumiho"]["final"].get("eval_top1_T"), trained["gumiho"]["budget"]),
        "tokens_per_s_plain": (summary["plain"]["tokens_per_s"], {"by_method": {
            n: {"tokens_per_s": s["tokens_per_s"], "tree": dataclasses.asdict(config.tree)} for n, s in
            summary.items()}}),
    }
    break_even = {n: summary[n]["tau"] / cost[n] for n in passes if cost.get(n)}
    if "gumiho" in break_even:
        facts["break_even_tau_gumiho"] = (break_even["gumiho"], {"by_method": break_even})
    if cost["gumiho"] and cost["eagle2"]:
        facts["cost_model_ratio_vs_eagle2"] = (cost["gumiho"] / cost["eagle2"], {"cost_model_speedup": cost})
    return estimates, facts


REPRODUCTION = Reproduction(
    paper="gumiho", title="Gumiho: serial heads for the early draft tokens, parallel MLP heads for the rest",
    paper_table=PAPER_TABLE, plans={"smoke": SMOKE, "tiny": TINY, "full": FULL}, claims=CLAIMS, facts=FACTS,
    run=run, add_arguments=add_arguments, configure=configure, prepare=prepare)
