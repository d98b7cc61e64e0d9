"""``jakiro reproduce``: Jakiro against EAGLE-2 in miniature (smoke) or at the official recipe (full).

One process, shared data: draft data from the target (the engine's cached miniature set, shared with gumiho)
-> the heads as cached prerequisites, each trained with the same budget (data, data order, steps, draft
vocabulary): the EAGLE-2 baseline is the cached head gumiho compares against too -> MT-bench held-out questions
(both turns) with plain decoding interleaved, greedy and at T = 1 -> a paired drafting-cost benchmark. Every
comparison is paired by turn (all methods answer the same turns) with a bootstrap interval over turns.

``--scale smoke``: the embedded SmolLM2-135M-Instruct, self-distilled draft data, CPU. ``--tiny``: the same code
path with a tiny budget. ``--scale full``: the official recipe on ``--target /path/to/vicuna-7b-v1.3`` with the 68k
ShareGPT conversations (``--sharegpt-json``) on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from effrepro.errors import UsageError
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Plan, Reproduction, Results
from effrepro.specdec import EvalConfig, TargetAdapter, TreeConfig
from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, SMOKE_HEAD_TRAIN
from effrepro.specdec.turns import mismatch_rate, ratio_of_sums
from effrepro.train import seed_everything

from jakiro.eval import VARIANTS, check_variants, evaluate_variants, pool_blocks
from jakiro.prereqs import DTYPES, cached_heads, extra_prompts, greedy_blocks, target_and_data, training_summary
from jakiro.reporting import PAPER_TABLE, notes, plot, training_plot
from jakiro.train import METHODS, check_method, load_head


@dataclass(frozen=True, kw_only=True)
class JakiroPlan(Plan):
    target: str = "smollm2-135m"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    # draft data: prompts answered by the target (smoke: the engine's miniature set) and/or a ShareGPT json (full)
    prompts: int = SMOKE_DRAFT_DATA.self_generated
    distill_prompts: str = SMOKE_DRAFT_DATA.prompts
    data_new_tokens: int = SMOKE_DRAFT_DATA.self_max_new_tokens
    sharegpt_json: str = ""
    sharegpt_limit: int = 68000
    data_max_len: int = SMOKE_DRAFT_DATA.max_len
    # training: identical budget for every head (same seed, data order, steps, draft vocabulary)
    methods: tuple[str, ...] = ("eagle2", "jakiro")
    epochs: int = SMOKE_HEAD_TRAIN.epochs
    steps_per_epoch: int = SMOKE_HEAD_TRAIN.steps_per_epoch
    batch_size: int = SMOKE_HEAD_TRAIN.batch_size
    lr: float = SMOKE_HEAD_TRAIN.lr
    weight_decay: float = SMOKE_HEAD_TRAIN.weight_decay
    warmup_steps: int = SMOKE_HEAD_TRAIN.warmup_steps
    train_max_len: int = SMOKE_HEAD_TRAIN.max_len
    holdout: float = SMOKE_HEAD_TRAIN.holdout
    draft_vocab: int = SMOKE_HEAD_TRAIN.draft_vocab  # 0: the full vocabulary (paper-faithful)
    # evaluation: the held-out MT-bench questions (the draft data never saw them); the unit is the turn
    questions: str = "mtbench-heldout"
    max_questions: int = 8
    max_turns: int = 0  # greedy: both turns
    # plus this many corpus instructions the draft data did not answer (one turn each, in cached blocks of 16):
    # more turns for the intervals from a held-out split of the training distribution; greedy only (T = 1 keeps
    # the MT-bench turns). 64: 80 greedy turns, the most the 30-minute budget allows on 2 cores when the first
    # block (16 MT-bench + 16 corpus turns) is reused; the corpus has ~590 such instructions
    extra_heldout: int = 64
    t1_max_questions: int = 8
    t1_max_turns: int = 1
    max_new_tokens: int = 48
    warmup: int = 1
    top_k: int = 4
    depth: int = 5
    total_tokens: int = 24
    temperature: float = 1.0
    greedy_variants: tuple[str, ...] = ("eagle2", "jakiro")
    sampling_variants: tuple[str, ...] = ("eagle2", "jakiro")
    cost_model_repeats: int = 7
    bench_repeats: int = 11
    max_length: int = 2048


SMOKE = JakiroPlan()
ALL_GREEDY = ("eagle2", "jakiro", "jakiro_parent", "jakiro_nocepd", "jakiro_star")
ALL_SAMPLING = ("eagle2", "jakiro", "jakiro_star", "jakiro_star_official")
TINY = JakiroPlan(name="tiny", prompts=4, data_new_tokens=16, data_max_len=256, epochs=1, steps_per_epoch=2,
                  batch_size=2, warmup_steps=1, train_max_len=256, holdout=0.25, draft_vocab=512, max_questions=2,
                  extra_heldout=1,
                  max_turns=1, t1_max_questions=2, max_new_tokens=8, warmup=0, cost_model_repeats=2, bench_repeats=2,
                  methods=METHODS, greedy_variants=ALL_GREEDY, sampling_variants=ALL_SAMPLING)
FULL = JakiroPlan(name="full", dtype="float16", device="cuda", prompts=0, data_max_len=2048, methods=METHODS,
                  epochs=20, steps_per_epoch=0, lr=9e-5, weight_decay=1e-3, warmup_steps=2000, train_max_len=2048,
                  draft_vocab=0, questions="mtbench", max_questions=0, extra_heldout=0, t1_max_questions=0,
                  t1_max_turns=0,
                  max_new_tokens=512, warmup=3, top_k=10, total_tokens=60, cost_model_repeats=21, bench_repeats=51,
                  greedy_variants=ALL_GREEDY, sampling_variants=ALL_SAMPLING)

ON_PAR = "between 0.95 1.05"
PAPER_SPEEDUP_RATIO = round(2.99 / 2.89, 3)  # official logs, vicuna-7b, T = 0: Jakiro 2.99x, EAGLE-2 2.89x
HALF_PAPER_GAIN = round(1 + (PAPER_SPEEDUP_RATIO - 1) / 2, 4)
CLAIMS = [
    ClaimSpec(id="tau_ratio_jakiro_eagle2_greedy", description="tau(Jakiro) / tau(EAGLE-2) at T = 0, same data, "
              "steps and tree budget (tokens per target forward, pooled over the resampled turns)", paper=1.00,
              unit="ratio", baseline="EAGLE-2 head trained here", expect=ON_PAR, headline=True),
    ClaimSpec(id="speedup_ratio_jakiro_eagle2_greedy", description="tokens/s of Jakiro / of EAGLE-2 at T = 0 "
              "(paired per-turn wall times). Holds when the whole interval is above 1; fails when it lies below "
              f"{HALF_PAPER_GAIN}, half the paper's gain (an effect of the paper's size is then excluded)",
              paper=PAPER_SPEEDUP_RATIO, unit="ratio", baseline="EAGLE-2 head trained here",
              expect=f"> 1, fails below {HALF_PAPER_GAIN}", headline=True, timing=True),
    ClaimSpec(id="draft_time_ratio_jakiro_eagle2", description="drafting seconds per cycle, Jakiro / EAGLE-2, T = 0 "
              "(one sequential draft forward fewer, narrower experts)", paper=None, unit="ratio",
              baseline="EAGLE-2 drafting", expect="< 1.0", timing=True),
    ClaimSpec(id="speedup_jakiro_plain_greedy", description="tokens/s of Jakiro / of plain greedy decoding, T = 0",
              paper=2.99, unit="x", baseline="plain decoding, same process", expect="> 1.0", timing=True),
    ClaimSpec(id="speedup_ratio_jakiro_nocepd_greedy", description="tokens/s of Jakiro / of the same MoE trained and "
              "drafted without the contrastive branch (one more forward), T = 0", paper=None, unit="ratio",
              baseline="Jakiro without contrastive branch", expect="> 1.0", timing=True),
    ClaimSpec(id="lossless_greedy", description="share of turns whose greedy speculative output differs from plain "
              "greedy decoding (every greedy variant; an exact count)", paper=0.0, unit="fraction of turns",
              baseline="plain greedy decoding", expect="<= 0"),
    ClaimSpec(id="tau_ratio_jakiro_eagle2_t1", description="tau(Jakiro) / tau(EAGLE-2) at T = 1 (official logs: "
              "4.01 / 4.15; the README figure says 1.33)", paper=round(4.01 / 4.15, 3), unit="ratio",
              baseline="EAGLE-2 head trained here", expect=ON_PAR),
    ClaimSpec(id="speedup_ratio_jakiro_eagle2_t1", description="tokens/s of Jakiro / of EAGLE-2 at T = 1",
              paper=round(2.47 / 2.44, 3), unit="ratio", baseline="EAGLE-2 head trained here", expect="> 1.0",
              timing=True),
]
FACTS = [
    FactSpec(id="draft_forwards_saved_per_cycle", description="sequential draft forwards per cycle, EAGLE-2 minus "
             "Jakiro (the hybrid schedule's loop)", unit="forwards", paper=1.0),
    FactSpec(id="trainable_params_jakiro", description="trainable parameters of the Jakiro head", unit="params"),
    FactSpec(id="train_steps_per_head", description="optimizer steps per head (same for every head)", unit="steps"),
    FactSpec(id="tau_eagle2_greedy", description="tau of EAGLE-2 at T = 0", unit="tokens/cycle", paper=4.72,
             exact=False),
    FactSpec(id="heldout_top1_eagle2", description="held-out top-1 agreement of the EAGLE-2 head with the target "
             "after training (draft-data holdout)", unit="fraction", exact=False),
    FactSpec(id="heldout_top1_jakiro", description="held-out top-1 agreement of the Jakiro head (MoE branch)",
             unit="fraction", exact=False),
    FactSpec(id="tokens_per_s_plain_greedy", description="tokens/s of plain greedy decoding in the interleaved run "
             "(details: every method's tokens/s and tree)", unit="tokens/s", exact=False),
    FactSpec(id="break_even_tau_jakiro", description="tau at which Jakiro would match plain decoding on this machine: "
             "(t_draft + t_verify) / t_step from the run's measured costs", unit="tokens/cycle", exact=False),
    FactSpec(id="tau_jakiro_greedy", description="tau of Jakiro at T = 0", unit="tokens/cycle", paper=4.72,
             exact=False),
    FactSpec(id="bench_draft_time_ratio_jakiro_eagle2", description="drafting time per tree, Jakiro / EAGLE-2, "
             "paired micro-benchmark (median)", unit="ratio", exact=False),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help="full scale: a local HF model directory (vicuna-7b-v1.3)")
    parser.add_argument("--sharegpt-json", default=None, help="full scale: the ShareGPT json file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the plan's)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="target dtype (default: the plan's)")


def configure(plan: JakiroPlan, args: argparse.Namespace) -> JakiroPlan:
    """Command-line paths into the plan, then every check that needs no model (before any work)."""
    changes = {k: v for k, v in (("target", args.target), ("sharegpt_json", args.sharegpt_json),
                                 ("device", args.device), ("dtype", args.dtype)) if v is not None}
    plan = dataclasses.replace(plan, **changes)
    if plan.name == "full" and plan.target == "smollm2-135m":
        raise UsageError("--scale full needs --target /path/to/an/HF/model (e.g. vicuna-7b-v1.3); the embedded "
                         "SmolLM2 is the smoke target")
    if plan.name == "full" and not plan.sharegpt_json:
        raise UsageError("--scale full needs the ShareGPT conversations: --sharegpt-json "
                         "/path/to/ShareGPT_V4.3_unfiltered_cleaned_split.json")
    if plan.dtype not in DTYPES:
        raise UsageError(f"dtype {plan.dtype!r}; use one of {', '.join(DTYPES)}")
    for method in plan.methods:
        check_method(method)
    check_variants(list(plan.greedy_variants + plan.sampling_variants))
    missing = {VARIANTS[v].head for v in plan.greedy_variants + plan.sampling_variants} - set(plan.methods)
    if missing:
        raise UsageError(f"variants need heads {sorted(missing)} that methods does not train; add them to methods")
    if plan.extra_heldout and "sharegpt" in plan.distill_prompts.split(","):
        raise UsageError("extra_heldout takes corpus instructions the draft data did not use; with ShareGPT "
                         "prompts in distill_prompts set extra_heldout=0")
    if plan.extra_heldout:
        extra_prompts(plan)  # enough of them
    for needed in ("eagle2", "jakiro"):
        if needed not in plan.greedy_variants:
            raise UsageError(f"greedy_variants must include {needed} (the headline comparison)")
    return plan


def _eval_config(plan: JakiroPlan, source: str, temperature: float, questions: int, turns: int) -> EvalConfig:
    return EvalConfig(questions=source, max_questions=questions, max_turns=turns,
                      max_new_tokens=plan.max_new_tokens, temperature=temperature, warmup=plan.warmup,
                      seed=plan.seed, max_length=plan.max_length, cost_model_repeats=plan.cost_model_repeats)


def prepare(plan: JakiroPlan, ctx: Context) -> None:
    with ctx.stage("data"):
        model, _, data_dirs, data = target_and_data(plan)
        print(f"[jakiro] draft data: {data}")
    with ctx.stage("training"):
        for method, head in cached_heads(plan, model, data_dirs, progress=True).items():
            print(f"[jakiro] head {method}: {head.path} ({head.steps} steps)")


def run(plan: JakiroPlan, ctx: Context) -> Results:
    seed_everything(plan.seed)
    with ctx.stage("data"):
        model, tokenizer, data_dirs, data = target_and_data(plan)
        ctx.log.log(stage="data", **data)
    with ctx.stage("training"):
        cached = cached_heads(plan, model, data_dirs)
        training = training_summary(cached, ctx)
        heads = {m: load_head(h.path, model, plan.device, DTYPES[plan.dtype]) for m, h in cached.items()}
    target = TargetAdapter(model, max_length=plan.max_length)
    tree = TreeConfig(top_k=plan.top_k, depth=plan.depth, total_tokens=plan.total_tokens)
    key = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("name", "stages", "threads")}
    key["heads"] = {m: h.entry["sha256"] for m, h in cached.items()}
    runs = [("greedy", 0.0, plan.greedy_variants, name, source, questions, plan.max_turns, fields)
            for name, source, questions, fields in greedy_blocks(plan, ctx.out)]
    # T = 1 answers the first turns of the MT-bench questions only: the extra held-out turns do not key it
    runs.append(("t1", plan.temperature, plan.sampling_variants, "eval_t1", plan.questions, plan.t1_max_questions,
                 plan.t1_max_turns, {}))
    blocks: dict[str, list[dict]] = {}
    for label, temperature, variants, name, source, questions, turns, fields in runs:
        if not variants:
            continue
        config = _eval_config(plan, source, temperature, questions, turns)
        with ctx.stage(f"evaluation_{label}"):
            def evaluate(variants=variants, config=config, name=name) -> dict:
                result = evaluate_variants(target, tokenizer, heads, list(variants), tree, config, ctx.out / name,
                                           progress=False)
                return {k: result[k] for k in ("summary", "records", "costs")}

            run_key = {**key, **fields} if label == "greedy" else {k: v for k, v in key.items() if k != "extra_heldout"}
            blocks.setdefault(label, []).append(ctx.cached(name, evaluate, key={**run_key, "label": label}))
    evals = {label: pool_blocks(runs_of, tree, greedy=label == "greedy") for label, runs_of in blocks.items()}
    with ctx.stage("bench"):
        from jakiro.bench import draft_cost_benchmark

        bench = draft_cost_benchmark(model, tree, context=256, repeats=plan.bench_repeats, heads=heads)
    estimates, facts = measure(plan, evals, bench, training)
    return Results(estimates=estimates, facts=facts, notes_md=notes(plan, data, training, evals, bench, tree),
                   plots=plot(evals, ctx.out) + training_plot(cached, ctx.out))


def measure(plan: JakiroPlan, evals: dict, bench: dict, training: dict) -> tuple[dict, dict]:
    """Estimates (paired over turns) and facts from the turn records of the evaluations."""
    estimates: dict[str, Any] = {}
    greedy = evals["greedy"]["records"]
    estimates["tau_ratio_jakiro_eagle2_greedy"] = ratio_of_sums(greedy["jakiro"], greedy["eagle2"], "cycle_tokens",
                                                                "cycles")
    estimates["speedup_ratio_jakiro_eagle2_greedy"] = ratio_of_sums(greedy["jakiro"], greedy["eagle2"],
                                                                    "new_tokens", "wall_time")
    estimates["draft_time_ratio_jakiro_eagle2"] = ratio_of_sums(greedy["jakiro"], greedy["eagle2"], "draft_time",
                                                                "cycles")
    estimates["speedup_jakiro_plain_greedy"] = ratio_of_sums(greedy["jakiro"], greedy["plain"], "new_tokens",
                                                             "wall_time")
    if "jakiro_nocepd" in greedy:
        estimates["speedup_ratio_jakiro_nocepd_greedy"] = ratio_of_sums(greedy["jakiro"], greedy["jakiro_nocepd"],
                                                                        "new_tokens", "wall_time")
    estimates["lossless_greedy"] = mismatch_rate([greedy[v] for v in plan.greedy_variants], greedy["plain"])
    sampled = evals.get("t1", {}).get("records", {})
    if "jakiro" in sampled and "eagle2" in sampled:
        estimates["tau_ratio_jakiro_eagle2_t1"] = ratio_of_sums(sampled["jakiro"], sampled["eagle2"],
                                                                "cycle_tokens", "cycles")
        estimates["speedup_ratio_jakiro_eagle2_t1"] = ratio_of_sums(sampled["jakiro"], sampled["eagle2"],
                                                                    "new_tokens", "wall_time")
    budgets = {m: t["budget"] for m, t in training.items()}
    estimates = {k: e if k == "lossless_greedy" else dataclasses.replace(e, details={**e.details,
                                                                                    "head_budgets": budgets})
                 for k, e in estimates.items()}
    summary = evals["greedy"]["summary"]
    forwards = {v: summary[v]["draft_forwards_per_cycle"] for v in plan.greedy_variants}
    speed = {v: {"tokens_per_s": s["tokens_per_s"], "tree": dataclasses.asdict(TreeConfig(
        top_k=plan.top_k, depth=plan.depth, total_tokens=plan.total_tokens))} for v, s in summary.items()}
    break_even = {v: summary[v]["tau"] / summary[v]["cost_model_speedup"] for v in plan.greedy_variants
                  if summary[v].get("cost_model_speedup")}
    facts = {
        "draft_forwards_saved_per_cycle": (forwards["eagle2"] - forwards["jakiro"], {"per_cycle": forwards}),
        "trainable_params_jakiro": (bench["trainable_params"]["jakiro"], {"by_head": bench["trainable_params"]}),
        "train_steps_per_head": (training["jakiro"]["steps"], {m: t["steps"] for m, t in training.items()}),
        "tau_eagle2_greedy": summary["eagle2"]["tau"],
        "heldout_top1_eagle2": (training["eagle2"]["final"].get("eval_top1"), training["eagle2"]["budget"]),
        "heldout_top1_jakiro": (training["jakiro"]["final"].get("eval_acc0"), training["jakiro"]["budget"]),
        "tokens_per_s_plain_greedy": (summary["plain"]["tokens_per_s"], {"by_method": speed}),
        "break_even_tau_jakiro": (break_even.get("jakiro"), {"by_method": break_even, "costs_s":
                                                              evals["greedy"]["costs"]}),
        "tau_jakiro_greedy": (summary["jakiro"]["tau"], {v: summary[v]["tau"] for v in plan.greedy_variants}),
        "bench_draft_time_ratio_jakiro_eagle2": (bench["ratio_to_eagle2"]["jakiro"],
                                                 {"ms_per_tree": bench["ms_per_tree"]}),
    }
    return estimates, facts


REPRODUCTION = Reproduction(
    paper="jakiro", title="Jakiro: MoE draft head with a contrastive parallel last level, against EAGLE-2",
    paper_table=PAPER_TABLE, plans={"smoke": SMOKE, "tiny": TINY, "full": FULL}, claims=CLAIMS, facts=FACTS,
    run=run, add_arguments=add_arguments, configure=configure, prepare=prepare)
