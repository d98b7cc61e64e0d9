"""``double_rounding reproduce``: the paper's claims in miniature (smoke, CPU, MNIST) or its pipeline (full).

Smoke: per seed, one FP32 model and the arms of :mod:`double_rounding.miniature` trained from it with the same
data order, each evaluated from its exported int8 file on the whole MNIST test set (10,000 images: the ALRS gain
is a fraction of a point, and 2,000 images put about 0.5 points of evaluation noise on each paired difference).
The ALRS ablation (joint with and without ALRS) runs on every seed, the separate-LSQ and accumulate arms on
``sep_seeds``, the floor-shift and post-hoc arms (effects of tens of points) on ``ablation_seeds``, the paper's
"Ours*" (unshared per-precision weight steps) with its shared-scale partner on ``unshared_seeds``. The joint
model steps the optimizer once per precision per batch, so each separate LSQ model gets as many optimizer steps
in all (the joint run's epochs x the number of precisions): the joint-vs-separate comparisons are at equal
optimizer steps. Every comparison is paired by seed. The mixed-precision stage (``mixed_pilot_seeds`` and the
disjoint ``mixed_confirm_seeds``) trains a {4,3,2} SuperNet per seed and compares the ILP sub-nets with uniform
and random ones at equal average bits (:mod:`double_rounding.reproduce_mixed`). Seeds run in ``workers``
processes, one thread each. The claims and facts are declared in :mod:`double_rounding.reproduce_claims`.

The training-time ratio (paper Table 5: the joint run costs less than the separate models) is reported as a
timing fact, not a claim: at equal optimizer steps on in-memory data the two do the same work, so the ratio sits
at 1 within the between-run drift of CPU time on a shared machine; the paper's saving (one data pipeline for all
precisions on GPUs) does not exist in the miniature.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

from effrepro import stats
from effrepro.reproduce import Context, Plan, Reproduction, Results

from double_rounding.full import DEFAULT_FULL_ARMS
from double_rounding.miniature import run_seeds
from double_rounding.reproduce_claims import CLAIMS, FACTS
from double_rounding.reproduce_mixed import mixed_estimates, mixed_jobs, mixed_notes, mixed_tables
from double_rounding.reproduce_report import PAPER_TABLE, arm_table, notes, plots, resnet18_storage


@dataclass(frozen=True, kw_only=True)
class DoubleRoundingPlan(Plan):
    """The miniature's task and budget; for ``full``, the run config and its overrides."""

    dataset: str = "mnist"
    train_size: int = 4096
    test_size: int = 10000               # the whole MNIST test set
    width: int = 8
    batch_size: int = 128
    fp_epochs: int = 6
    fp_lr: float = 5e-3
    q_epochs: int = 3                    # the joint runs; the separate ones get len(bits) x as many
    q_lr: float = 5e-4                   # the paper's LR
    bits: tuple[int, ...] = (8, 6, 4, 2)
    sep_bits: tuple[int, ...] = (8, 4, 2)
    seeds: tuple[int, ...] = tuple(range(24))      # FP32 + joint with / without ALRS (16 left the w2 gain undecided)
    sep_seeds: tuple[int, ...] = tuple(range(16))  # separate LSQ and accumulate arms (a subset of seeds)
    ablation_seeds: tuple[int, ...] = tuple(range(8))  # floor shift and post-hoc switching (a subset of seeds)
    mixed_pilot_seeds: tuple[int, ...] = tuple(range(60))  # the {4,3,2} SuperNet: the pilot (three looks)
    mixed_confirm_seeds: tuple[int, ...] = tuple(range(60, 210))  # the confirmatory run; pre-registered, see README
    unshared_seeds: tuple[int, ...] = tuple(range(32))  # Ours* and ours (+ FP32); pre-registered, see the README
    mixed_bits: tuple[int, ...] = (4, 3, 2)
    mixed_epochs: int = 3                # SuperNet epochs (the sigma ramp reaches sigma0 in the last one)
    mixed_budgets: tuple[float, ...] = (2.6, 3.0, 3.4)  # average bits over the 5 layers (sums 13, 15, 17)
    mixed_random: int = 8                # random sub-nets per budget
    hessian_probes: int = 32
    hessian_batches: int = 4             # training batches for the Hessian traces (512 images)
    workers: int = 2                     # seeds run in parallel processes (one thread each)
    # full scale
    config: str | None = None
    init: str | None = None
    config_overrides: tuple[str, ...] = ()
    full_arms: tuple[str, ...] = DEFAULT_FULL_ARMS  # ours, ours_unshared (also: separate, no_alrs, kd, mixed)
    nproc: int = 1                       # processes per training job (> 1: a torchrun job, DDP; one GPU each)


SMOKE = DoubleRoundingPlan()
TINY = DoubleRoundingPlan(name="tiny", train_size=512, test_size=300, width=4, batch_size=64, fp_epochs=1,
                          q_epochs=1, seeds=(0, 1, 2), sep_seeds=(0, 1), ablation_seeds=(0,), mixed_pilot_seeds=(0, 1),
                          mixed_confirm_seeds=(2, 3), unshared_seeds=(0, 1, 3), mixed_epochs=2, mixed_random=2,
                          hessian_probes=4, hessian_batches=1)
FULL = DoubleRoundingPlan(name="full", stages=("main",))
MAIN_ARMS = ("fp32", "ours", "ours_noalrs")
ABLATION_ARMS = ("floor", "posthoc")


def run(plan: DoubleRoundingPlan, ctx: Context) -> Results:
    if plan.name == "full":
        from double_rounding.full import run_full

        return run_full(plan, ctx)
    results: dict[str, list[dict[str, Any]]] = {}
    with ctx.stage("train"):
        jobs = {}
        for seed in sorted({*plan.seeds, *plan.unshared_seeds}):
            arms = MAIN_ARMS if seed in plan.seeds else ("fp32", "ours")
            arms += ("ours_accum", *(f"sep{b}" for b in plan.sep_bits)) if seed in plan.sep_seeds else ()
            arms += ABLATION_ARMS if seed in plan.ablation_seeds else ()
            jobs[seed] = arms + (("ours_unshared",) if seed in plan.unshared_seeds else ())
        run_seeds(plan, ctx, jobs, results)
    with ctx.stage("mixed"):
        run_seeds(plan, ctx, mixed_jobs(plan), results)
    with ctx.stage("resnet18_storage"):
        storage = ctx.cached("resnet18_storage", lambda: resnet18_storage(ctx.runs), key={"bits": plan.bits})
    mixed = results.pop("mixed", [])
    return Results(estimates={**_estimates(plan, results), **mixed_estimates(plan, mixed)},
                   facts=_facts(plan, results, storage), tables_md=arm_table(plan, results) + mixed_tables(plan, mixed),
                   notes_md=notes(plan) + mixed_notes(plan, mixed),
                   plots=plots(plan, results, ctx.out))


def _acc(results: dict[str, list[dict[str, Any]]], arm: str, bits: int | str) -> list[float]:
    return [r["acc"][str(bits)] for r in results[arm]]


def _pairs(results: dict[str, list[dict[str, Any]]], arm: str, base: str, bits: int
           ) -> tuple[list[int], list[float], list[float]]:
    """The seeds both ``arm`` and ``base`` ran, and their top-1 at ``bits`` on those seeds."""
    a = {r["seed"]: r["acc"][str(bits)] for r in results[arm]}
    b = {r["seed"]: r["acc"][str(bits)] for r in results[base]}
    seeds = [s for s in a if s in b]
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def _paired(results: dict[str, list[dict[str, Any]]], arm: str, base: str, bits: int) -> stats.Estimate:
    """``arm`` minus ``base`` at ``bits``, over the seeds both ran."""
    seeds, a, b = _pairs(results, arm, base, bits)
    return stats.paired_diff(a, b, seeds=seeds, **{arm: a, base: b})


def _ratio(results: dict[str, list[dict[str, Any]]], bits: int) -> stats.Estimate:
    seeds, ours, separate = _pairs(results, "ours", f"sep{bits}", bits)
    return stats.paired_ratio(ours, separate, seeds=seeds, ours=ours, separate=separate)


def _traintime(plan: DoubleRoundingPlan, results: dict[str, list[dict[str, Any]]]) -> tuple[float, dict[str, Any]]:
    """Joint CPU seconds / the mean over the separate models, over the seeds that ran both (a timing fact)."""
    joint = {r["seed"]: r["cpu_seconds"] for r in results["ours"]}
    seeds = [r["seed"] for r in results[f"sep{plan.sep_bits[0]}"]]
    separate = [statistics.fmean(next(r["cpu_seconds"] for r in results[f"sep{b}"] if r["seed"] == s)
                                 for b in plan.sep_bits) for s in seeds]
    est = stats.paired_ratio([joint[s] for s in seeds], separate, seeds=seeds)
    return est.value, {"n": est.n, "ci": list(est.ci), "interval": est.method, "seeds": seeds,
                       "joint_cpu_s": [joint[s] for s in seeds], "separate_cpu_s": separate,
                       "steps": results["ours"][0]["optimizer_steps"]}


def _estimates(plan: DoubleRoundingPlan, results: dict[str, list[dict[str, Any]]]) -> dict[str, stats.Estimate]:
    estimates = {f"ratio_vs_separate_w{b}": _ratio(results, b) for b in plan.sep_bits if b in (8, 4, 2)}
    estimates["alrs_gain_w2"] = _paired(results, "ours", "ours_noalrs", 2)
    estimates["alrs_gain_w4"] = _paired(results, "ours", "ours_noalrs", 4)
    estimates["per_precision_minus_accumulate_w2"] = _paired(results, "ours", "ours_accum", 2)
    for arm in ABLATION_ARMS:
        if arm in results:
            estimates[f"ours_minus_{arm}_w2"] = _paired(results, "ours", arm, 2)
    if "ours_unshared" in results:
        for b in (2, 4):
            estimates[f"unshared_minus_shared_w{b}"] = _paired(results, "ours_unshared", "ours", b)
    return estimates


def _facts(plan: DoubleRoundingPlan, results: dict[str, list[dict[str, Any]]], storage: dict[str, Any]
           ) -> dict[str, Any]:
    ours, sep = results["ours"][0], next(results[k][0] for k in results if k.startswith("sep"))
    fp32 = results["fp32"][0]
    unshared = {"storage_unshared_over_shared": (
        results["ours_unshared"][0]["payload"]["total"] / ours["payload"]["total"],
        {"unshared_payload": results["ours_unshared"][0]["payload"], "shared_payload": ours["payload"]})
        } if "ours_unshared" in results else {}
    return {**unshared,
        "optimizer_steps_joint": ours["optimizer_steps"], "optimizer_steps_separate": sep["optimizer_steps"],
        "traintime_joint_over_separate": _traintime(plan, results),
        "fp32_top1": (statistics.fmean(_acc(results, "fp32", 32)), {"per_seed": _acc(results, "fp32", 32)}),
        "storage_int8_over_four_fp32": (ours["payload"]["total"] / (4 * fp32["fp32_payload"]),
                                        {"int8_payload": ours["payload"], "fp32_payload": fp32["fp32_payload"]}),
        "resnet18_storage_int8_over_fp32": (storage["ratio"], storage),
    }


# ---- command line (full scale) ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="full scale: the run config YAML, e.g. "
                        "double_rounding/configs/resnet18_imagenet.yaml")
    parser.add_argument("--init", default=None, help="full scale: FP32 weights to start from (skips FP32 training)")
    parser.add_argument("--config-set", dest="config_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="full scale: run-config override; `double_rounding reproduce --set KEY=VALUE` takes "
                             "run-config keys too (e.g. --set data.root=/data/imagenet)")


def configure(plan: DoubleRoundingPlan, args: argparse.Namespace) -> DoubleRoundingPlan:
    from effrepro.errors import UsageError
    from effrepro.train import require_single_process

    given = {k: v for k, v in (("config", args.config), ("init", args.init),
                               ("config_overrides", tuple(args.config_overrides))) if v}
    if plan.name != "full":
        if plan.nproc != 1:
            raise UsageError("nproc: only for --scale full (the miniature runs its seeds in --set workers=N "
                             "processes)")
        if given:
            named = "; ".join(f"{k} {' '.join(v) if isinstance(v, tuple) else v}" for k, v in given.items())
            raise UsageError(f"{named}: only for --scale full (the miniature builds its own configs; its plan "
                             "fields are set with --set FIELD=VALUE)")
        return plan
    require_single_process("--set nproc=<GPUs per training job>")
    if not (given.get("config") or plan.config):
        raise UsageError("--scale full needs --config (e.g. double_rounding/configs/resnet18_imagenet.yaml) and "
                         "--config-set data.root=/path/to/imagenet (or DOUBLE_ROUNDING_DATA)")
    return dataclasses.replace(plan, **given)


REPRODUCTION = Reproduction(
    paper="double_rounding", title="Double Rounding: nearly lossless adaptive bit switching", paper_table=PAPER_TABLE,
    plans={"smoke": SMOKE, "tiny": TINY, "full": FULL}, claims=CLAIMS, facts=FACTS, run=run,
    add_arguments=add_arguments, configure=configure)


def main(argv: list[str] | None = None) -> int:
    return REPRODUCTION.main(argv)
