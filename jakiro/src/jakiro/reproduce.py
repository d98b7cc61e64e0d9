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

from effrepro.errors import UsageError
from effrepro.reproduce import Context, Plan, Reproduction, Results
from effrepro.specdec import EvalConfig, TargetAdapter, TreeConfig
from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, SMOKE_HEAD_TRAIN
from effrepro.train import seed_everything

from jakiro.claims import CLAIMS, FACTS, measure
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


REPRODUCTION = Reproduction(
    paper="jakiro", title="Jakiro: MoE draft head with a contrastive parallel last level, against EAGLE-2",
    paper_table=PAPER_TABLE, plans={"smoke": SMOKE, "tiny": TINY, "full": FULL}, claims=CLAIMS, facts=FACTS,
    run=run, add_arguments=add_arguments, configure=configure, prepare=prepare)
