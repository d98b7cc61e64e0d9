"""``kerneldna reproduce``: KernelDNA's claims in miniature on the CPU (``smoke``) or with the official ImageNet
recipe (``full``), on the :mod:`effrepro.reproduce` skeleton.

smoke (real digits): the mini baseline, the static net of KernelDNA's depth, a static net of its depth and
parameter count, KernelDNA, static-only and CondConv trained with one recipe and the same 8 pilot seeds on
digits-in-clutter at 16 px (accuracy paired by seed; the first seed's per-epoch curve), a pre-registered
confirmatory replication of three accuracy claims on new seeds and a larger test set, a second one on further new
seeds of the one claim the first left undecided (two arms), the interleaved throughput
of the folded nets (mini nets and the official ResNet-18 family, intervals over rounds), the official zoo's
parameter / MAC counts, and the CKA premise. Stages: ``main`` and ``det`` (Mask R-CNN).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

from effrepro import stats
from effrepro.errors import UsageError
from effrepro.mm.miniature import STAGES
from effrepro.report import seed_span
from effrepro.reproduce import Context, Plan, Reproduction, Results, require_new_seeds, run_stages

from kerneldna import reproduce_full as full
from kerneldna import reproduce_parts as parts
from kerneldna.claims import CLAIMS, CONFIRM2_CLAIMS, CONFIRM_CLAIMS, FACTS, PILOT_CLAIMS
from kerneldna.train import TrainConfig


@dataclass(frozen=True, kw_only=True)
class KernelDNAPlan(Plan):
    seeds: tuple[int, ...] = tuple(range(8))  # the pilot: every arm
    arms: tuple[str, ...] = ("baseline", "samedepth", "parammatched", "kerneldna", "static_only", "condconv")
    # the pre-registered confirmatory replication (README): new seeds, the arms its three claims pair, a larger test
    # set (the paired item noise of 2,000 images is ~0.72 points per seed); n from a power analysis of the pilot
    confirm_seeds: tuple[int, ...] = tuple(range(8, 40))
    confirm_arms: tuple[str, ...] = ("kerneldna", "samedepth", "parammatched", "static_only")
    confirm_test_size: int = 20_000
    # a second pre-registered replication (README) of the one claim the first left undecided: disjoint new seeds,
    # only the two arms it pairs, the same test set; n from a power analysis of seeds 8-39, capped by CPU
    confirm2_seeds: tuple[int, ...] = tuple(range(40, 85))
    confirm2_arms: tuple[str, ...] = ("kerneldna", "parammatched")
    workers: int = 2  # one-thread training processes for the runs not yet cached
    tasks: tuple[str, ...] = ("clutter16",)  # the first carries the accuracy claims; also: clutter, mnist100
    clutter16: tuple[int, int, int] = (4000, 2000, 12)  # train images, test images, epochs (750 steps)
    clutter: tuple[int, int, int] = (4000, 2000, 10)
    mnist100: tuple[int, int, int] = (5000, 2000, 10)
    stem_stride: int = 2
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)
    mini_bench: tuple[int, int] = (64, 601)  # batch, interleaved rounds (601: sized on a pilot, README)
    zoo_bench: tuple[int, int, int] = (8, 15, 224)  # batch, rounds, image size
    cka_images: int = 512
    # det: train images, val images, epochs (batch 4). ResNet-18 arms cost 1.8 s per training iteration on 2 cores
    # (PartialNet-T0: ~1.4 s): 240 images x 3 epochs = 180 iterations per arm instead of the shared 300.
    det_images: tuple[int, int, int] = (240, 80, 3)
    # --scale full: the user's data and the official recipe
    data: str | None = None
    coco: str | None = None
    arch: str = "resnet18"
    variants: tuple[str, ...] = ("baseline", "kerneldna")
    epochs: int | None = None
    backbone_checkpoints: tuple[str, ...] = ()


PLANS = {
    "smoke": KernelDNAPlan(),  # det is opt-in at this scale (--stages main,det): it would exceed 30 min
    "tiny": KernelDNAPlan(name="tiny", stages=STAGES if importlib.util.find_spec("mmdet") else ("main",),
                          seeds=(0, 1), confirm_seeds=(2, 3), confirm2_seeds=(4, 5), confirm_test_size=256,
                          clutter16=(256, 128, 2), widths=(8, 16, 16), mini_bench=(8, 3), zoo_bench=(2, 2, 64),
                          cka_images=64, det_images=(8, 4, 1)),
    "full": KernelDNAPlan(name="full", seeds=(0,), confirm_seeds=(), confirm2_seeds=()),
}


def arm_config(plan: KernelDNAPlan, ctx: Context, task: str, arm: str, seed: int) -> TrainConfig:
    """The mini training of one arm and seed: a pilot seed on the task's test split, a confirmatory seed on
    ``confirm_test_size`` test images; the first pilot seed is evaluated after every epoch (the curve)."""
    train_size, test_size, epochs = getattr(plan, task)
    confirm = seed in plan.confirm_seeds or seed in plan.confirm2_seeds
    return TrainConfig(arch="mini", variant=arm, dataset=task, epochs=epochs, batch_size=plan.batch_size, lr=plan.lr,
                       weight_decay=plan.weight_decay, schedule_per="step", seed=seed, train_size=train_size,
                       test_size=plan.confirm_test_size if confirm else test_size, mini_widths=list(plan.widths),
                       mini_stem_stride=plan.stem_stride, out=str(ctx.runs / task / arm / f"seed{seed}"),
                       progress=False, log_every=10_000, eval_every=1 if seed == plan.seeds[0] else epochs)


def train_arms(plan: KernelDNAPlan, ctx: Context, task: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (arm, seed) mini training, each cached as ``runs/<task>_<arm>_seed<k>.json``: the pilot (every arm on
    ``seeds``) and the two confirmatory replications (``confirm_arms``, ``confirm2_arms``); missing ones run in
    ``plan.workers`` processes."""
    runs = [(a, s) for a in plan.arms for s in plan.seeds]
    if task == plan.tasks[0]:
        runs += [(a, s) for a in plan.confirm_arms for s in plan.confirm_seeds]
        runs += [(a, s) for a in plan.confirm2_arms for s in plan.confirm2_seeds]
    jobs, keys = {}, {}
    for arm, seed in runs:
        cfg = arm_config(plan, ctx, task, arm, seed)
        cka = plan.cka_images if arm == "baseline" and task == plan.tasks[0] and seed in plan.seeds else None
        jobs[arm, seed] = (cfg, seed == plan.seeds[0], cka, ctx.resume)
        key = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k == "init" and v is None)}  # pre-init caches
        keys[arm, seed] = key | ({"cka": cka} if cka else {})
    name = {job: f"{task}_{job[0]}_seed{job[1]}" for job in jobs}
    rows = {job: row for job, row, _ in ctx.cached_jobs(parts.train_row, jobs, name, keys, plan.workers)}
    for job in jobs:
        ctx.log.log(kind="mini_run", task=task, arm=job[0], seed=job[1], top1=rows[job]["top1"])
        print(f"  {task:9s} {job[0]:12s} seed {job[1]}: top-1 {rows[job]['top1']:.2f} %", flush=True)
    return rows


def main_smoke(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    task = plan.tasks[0]
    with ctx.stage("counts"):
        counts = parts.zoo_counts()
        arms = (*plan.arms, *plan.confirm_arms, *plan.confirm2_arms, "samedepth")
        sizes = {t: parts.mini_sizes(plan.widths, plan.stem_stride, t, arms) for t in plan.tasks}
    matches, per = parts.zoo_parity(counts)
    res.facts["zoo_official_counts_match"] = (matches, per)
    for arch in parts.ZOO_ARCHS:
        k, b = counts[f"{arch}/kerneldna"], counts[f"{arch}/baseline"]
        res.facts[f"{arch}_params_ratio"] = (k["params"] / b["params"], {"kerneldna": k["params"],
                                                                         "baseline": b["params"]})
        res.facts[f"{arch}_macs_ratio"] = (k["macs"] / b["macs"], {"kerneldna": k["macs"], "baseline": b["macs"]})
    mini = sizes[task]
    res.facts["mini_params_ratio"] = (mini["kerneldna"]["params"] / mini["baseline"]["params"], mini)
    if "parammatched" in mini:
        res.facts["mini_params_ratio_vs_parammatched"] = mini["kerneldna"]["params"] / mini["parammatched"]["params"]
    res.facts["mini_macs_ratio_vs_samedepth"] = mini["kerneldna"]["macs"] / mini["samedepth"]["macs"]
    with ctx.stage("train"):
        rows = {t: train_arms(plan, ctx, t) for t in plan.tasks}
    top1 = {t: {a: [rows[t][a, s]["top1"] for s in plan.seeds] for a in plan.arms} for t in plan.tasks}
    confirm = {a: [rows[task][a, s]["top1"] for s in plan.confirm_seeds] for a in plan.confirm_arms}
    confirm2 = {a: [rows[task][a, s]["top1"] for s in plan.confirm2_seeds] for a in plan.confirm2_arms}
    seeds = {"seeds": list(plan.seeds), "task": task}
    for claim_id, other in PILOT_CLAIMS.items():
        if {"kerneldna", other} <= set(plan.arms):
            res.estimates[claim_id] = stats.paired_diff(top1[task]["kerneldna"], top1[task][other], **seeds,
                                                        test_images=getattr(plan, task)[1])
    for claims, seeds_, top1_ in ((CONFIRM_CLAIMS, plan.confirm_seeds, confirm),
                                  (CONFIRM2_CLAIMS, plan.confirm2_seeds, confirm2)):
        for claim_id, other in claims.items():
            if seeds_ and {"kerneldna", other} <= set(top1_):
                res.estimates[claim_id] = stats.paired_diff(top1_["kerneldna"], top1_[other], task=task,
                                                            seeds=list(seeds_), test_images=plan.confirm_test_size)
    curves = {a: rows[task][a, plan.seeds[0]]["curve"] for a in plan.arms}
    if all(len(c) > 1 for c in curves.values()):
        changes = {a: c[-1] - c[-2] for a, c in curves.items()}
        res.facts["curve_last_epoch_change"] = (max(changes.values(), key=abs), {"per_arm": changes})
    panels = {f"{t}, pilot": arms for t, arms in top1.items()}
    if plan.confirm_seeds:
        panels[f"{task}, confirmatory 1"] = confirm
    if plan.confirm2_seeds:
        panels[f"{task}, confirmatory 2"] = confirm2
    res.plots.append(parts.plot_accuracy(panels, ctx.out / "accuracy.png"))
    res.plots.append(parts.plot_curves(curves, task, ctx.out / "accuracy_curve.png"))
    cka = [rows[task]["baseline", s]["cka"] for s in plan.seeds if "baseline" in plan.arms]
    if cka:
        res.estimates["cka_adjacent_within_minus_across"] = stats.mean_ci(
            [c["adjacent_within"] - c["adjacent_across"] for c in cka], pairs=cka[0]["pairs"], **seeds)
        res.plots.append(parts.plot_cka_matrix(cka[0], task, ctx.out / "cka_baseline.png"))
    with ctx.stage("throughput"):
        batch, repeats = plan.mini_bench
        shape = parts.INPUT_SHAPES[task]
        mini_bench = parts.throughput_rounds("mini", batch, repeats, 3, shape[1], in_chans=shape[0], num_classes=10,
                                             widths=plan.widths, stem_stride=plan.stem_stride)
        batch, repeats, size = plan.zoo_bench
        zoo_bench = parts.throughput_rounds("resnet18", batch, repeats, 1, size)
    ctx.log.log(kind="throughput", mini=mini_bench, resnet18=zoo_bench)
    declared = {c.id for c in CLAIMS}
    for label, bench in (("mini", mini_bench), ("resnet18", zoo_bench)):
        for ref in ("samedepth", "condconv", "baseline"):
            if f"{label}_throughput_vs_{ref}" in declared:
                res.estimates[f"{label}_throughput_vs_{ref}"] = parts.throughput_ratio(bench, "kerneldna", ref)
    tables = ["### Accuracy, pilot (every arm with the same recipe and seeds)\n\n" + parts.accuracy_table(top1, sizes)]
    for label, seeds_, top1_ in (("1", plan.confirm_seeds, confirm), ("2", plan.confirm2_seeds, confirm2)):
        if seeds_:
            tables.append(f"### Accuracy, confirmatory {label} (seeds {seed_span(seeds_)}, "
                          f"{plan.confirm_test_size:,} test images)\n\n"
                          + parts.accuracy_table({task: top1_}, sizes, ref="kerneldna"))
    res.tables_md = "\n\n".join([
        *tables,
        f"### Throughput: mini nets ({'x'.join(map(str, shape))})\n\n" + parts.bench_table(mini_bench),
        "### Throughput: ResNet-18 family\n\n" + parts.bench_table(zoo_bench)])
    steps = rows[task]["kerneldna", plan.seeds[0]]["steps"]
    data = "; ".join(f"{t}: {getattr(plan, t)[0]} train / {getattr(plan, t)[1]} test images, {getattr(plan, t)[2]} "
                     "epochs" for t in plan.tasks)
    res.notes_md = (
        f"pilot: {len(plan.seeds)} seeds, every arm; confirmatory 1: seeds {seed_span(plan.confirm_seeds)} "
        f"({', '.join(plan.confirm_arms)}); confirmatory 2: seeds {seed_span(plan.confirm2_seeds)} "
        f"({', '.join(plan.confirm2_arms)}); both on {plan.confirm_test_size} test images; {data} ({steps} steps); "
        f"batch {plan.batch_size}; SGD lr {plan.lr} (the official ResNet-18 recipe's), cosine per iteration, wd "
        f"{plan.weight_decay} on all parameters; widths {list(plan.widths)}, stem stride {plan.stem_stride}. Accuracy "
        "intervals: t over the paired per-seed differences; throughput intervals: percentile bootstrap of the median "
        "per-round ratio.")



def main_stage(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    (full.main_full if plan.name == "full" else main_smoke)(plan, ctx, res)


run = run_stages({"main": main_stage, "det": full.det_stage})


def configure(plan: KernelDNAPlan, args: argparse.Namespace) -> KernelDNAPlan:
    """Check the plan; at ``--scale full`` map the flags onto it and check the user's paths before any work."""
    unknown = [t for t in plan.tasks if t not in parts.INPUT_SHAPES]
    if unknown or not plan.tasks:
        raise UsageError(f"tasks: use some of {', '.join(parts.INPUT_SHAPES)}, not {unknown or '()'}")
    require_new_seeds(seeds=plan.seeds, confirm_seeds=plan.confirm_seeds, confirm2_seeds=plan.confirm2_seeds)
    if plan.workers < 1:
        raise UsageError(f"workers: at least 1, not {plan.workers}")
    return full.configure_full(plan, args)


REPRODUCTION = Reproduction(
    paper="kerneldna", title="KernelDNA: dynamic kernel sharing", paper_table=parts.PAPER_TABLE, plans=PLANS,
    claims=CLAIMS, facts=FACTS, run=run, stages=STAGES, add_arguments=full.add_arguments, configure=configure)
