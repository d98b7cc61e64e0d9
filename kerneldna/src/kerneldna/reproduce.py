"""``kerneldna reproduce``: KernelDNA's claims in miniature on the CPU (``smoke``) or with the official ImageNet
recipe (``full``), on the :mod:`effrepro.reproduce` skeleton.

smoke (real digits): the mini baseline, the static net of KernelDNA's depth, a static net of its depth and
parameter count, KernelDNA, static-only and CondConv trained with one recipe and the same 8 seeds on
digits-in-clutter at 16 px (accuracy paired by seed; the first seed's per-epoch curve), the interleaved throughput
of the folded nets (mini nets and the official ResNet-18 family, intervals over rounds), the official zoo's
parameter / MAC counts, and the CKA premise. Stages: ``main`` and ``det`` (Mask R-CNN).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro import stats
from effrepro.errors import UsageError
from effrepro.mm.miniature import STAGES, det_fact_specs, det_miniature_stage
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Plan, Reproduction, Results, run_stages

from kerneldna import reproduce_parts as parts
from kerneldna.train import TrainConfig, train

DET_DEPTH = 18  # the det miniature: KernelDNA ResNet-18 vs the torchvision ResNet-18 baseline, random init
DET_ARMS = [f"kerneldna_resnet{DET_DEPTH}", f"baseline_resnet{DET_DEPTH}"]
DET_FULL_ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "mobilenetv2_050")  # COCO Mask R-CNN backbones


@dataclass(frozen=True, kw_only=True)
class KernelDNAPlan(Plan):
    seeds: tuple[int, ...] = tuple(range(8))
    arms: tuple[str, ...] = ("baseline", "samedepth", "parammatched", "kerneldna", "static_only", "condconv")
    tasks: tuple[str, ...] = ("clutter16",)  # the first carries the accuracy claims; also: clutter, mnist100
    clutter16: tuple[int, int, int] = (4000, 2000, 12)  # train images, test images, epochs (750 steps)
    clutter: tuple[int, int, int] = (4000, 2000, 10)
    mnist100: tuple[int, int, int] = (5000, 2000, 10)
    stem_stride: int = 2
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)
    mini_bench: tuple[int, int] = (64, 101)  # batch, interleaved rounds
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
                          seeds=(0, 1), clutter16=(256, 128, 2), widths=(8, 16, 16), mini_bench=(8, 3),
                          zoo_bench=(2, 2, 64), cka_images=64, det_images=(8, 4, 1)),
    "full": KernelDNAPlan(name="full", seeds=(0,)),
}

_SAMEDEPTH = "the static net of KernelDNA's depth"
_PAIRED = "test top-1 difference, paired by seed"
CLAIMS = [
    ClaimSpec(id="top1_gain", description=f"KernelDNA minus the static baseline ({_PAIRED}; smoke: digits-in-clutter "
              "miniature, fewer parameters, more depth; full: ImageNet)", paper=None, unit="points",
              baseline="baseline", expect="> 0", headline=True),
    ClaimSpec(id="top1_vs_samedepth", description=f"KernelDNA minus {_SAMEDEPTH} (1.9x its parameters, same MACs "
              f"but the gates): on par, i.e. at most 0.5 points worse ({_PAIRED})", paper=None, unit="points",
              baseline="samedepth", expect="> -0.5", headline=True),
    ClaimSpec(id="top1_vs_parammatched", description=f"KernelDNA minus a static net of its depth and parameter count "
              f"(stages 2-3 narrowed): sharing spends parameters better ({_PAIRED})", paper=None, unit="points",
              baseline="parammatched", expect="> 0"),
    ClaimSpec(id="dynamic_gate_gain", description=f"KernelDNA minus static-only (the input-dependent gates off, "
              f"{_PAIRED})", paper=None, unit="points", baseline="static_only", expect="> 0"),
    ClaimSpec(id="top1_vs_condconv", description="KernelDNA minus CondConv (4 experts at the same positions; see "
              f"mini_throughput_vs_condconv for its cost): on par, at most 0.5 points worse ({_PAIRED})", paper=None,
              unit="points", baseline="condconv", expect="> -0.5", headline=True),
    ClaimSpec(id="resnet18_throughput_vs_samedepth", description="throughput of folded KernelDNA ResNet-18 / "
              f"{_SAMEDEPTH} (CPU, interleaved; paper: > 90 %)", paper=None, unit="x", baseline=_SAMEDEPTH,
              expect=">= 0.9", headline=True, timing=True),
    ClaimSpec(id="resnet18_throughput_vs_baseline", description="throughput folded KernelDNA ResNet-18 / ResNet-18 "
              "(shallower: KernelDNA adds a block per shared stage)", paper=None, unit="x", baseline="ResNet-18",
              expect=">= 0.9", timing=True),
    ClaimSpec(id="resnet18_throughput_vs_condconv", description="throughput folded KernelDNA ResNet-18 / CondConv "
              "(4 experts at the same positions)", paper=None, unit="x", baseline="CondConv", expect="> 1.0",
              timing=True),
    ClaimSpec(id="mini_throughput_vs_samedepth", description=f"throughput folded mini KernelDNA / {_SAMEDEPTH}",
              paper=None, unit="x", baseline=_SAMEDEPTH, expect=">= 0.9", timing=True),
    ClaimSpec(id="mini_throughput_vs_condconv", description="throughput folded mini KernelDNA / mini CondConv",
              paper=None, unit="x", baseline="CondConv", expect="> 1.0", timing=True),
    ClaimSpec(id="cka_adjacent_within_minus_across", description="trained baseline: CKA of adjacent 3x3 convs inside "
              "a stage minus across a stage boundary (equal layer distance), per seed", paper=None, unit="CKA",
              baseline="adjacent pairs across stages", expect="> 0"),
]
ACCURACY_CLAIMS = {"top1_gain": "baseline", "top1_vs_samedepth": "samedepth", "top1_vs_parammatched": "parammatched",
                   "dynamic_gate_gain": "static_only", "top1_vs_condconv": "condconv"}
FACTS = [
    FactSpec(id="zoo_official_counts_match", description="params and MACs of our 8 zoo builds equal to the official "
             "code's (of 16 integers)", unit="integers"),
    *[FactSpec(id=f"{arch}_params_ratio", description=f"unique parameters KernelDNA {arch} / baseline", unit="x")
      for arch in parts.ZOO_ARCHS],
    *[FactSpec(id=f"{arch}_macs_ratio", description=f"MACs (224²) KernelDNA {arch} / baseline", unit="x")
      for arch in parts.ZOO_ARCHS],
    FactSpec(id="mini_params_ratio", description="parameters mini KernelDNA / mini baseline", unit="x"),
    FactSpec(id="mini_params_ratio_vs_parammatched", description="parameters mini KernelDNA / the parameter-matched "
             "static net", unit="x"),
    FactSpec(id="mini_macs_ratio_vs_samedepth", description=f"MACs mini KernelDNA / {_SAMEDEPTH} (the gates' cost)",
             unit="x"),
    FactSpec(id="curve_last_epoch_change", description="largest change of test top-1 over the last epoch among the "
             "arms (the per-epoch curve of the first seed): how close training is to its plateau", unit="points",
             exact=False),
    *det_fact_specs(DET_ARMS, DET_ARMS[1]),
    FactSpec(id="det_coco_bbox_ap_delta", description="COCO val2017 Mask R-CNN 1x bbox AP KernelDNA minus baseline "
             "(one run each)", unit="AP", exact=False),
    FactSpec(id="det_coco_mask_ap_delta", description="COCO val2017 Mask R-CNN 1x mask AP KernelDNA minus baseline "
             "(one run each)", unit="AP", exact=False),
]


def run_arm(plan: KernelDNAPlan, ctx: Context, task: str, arm: str, seed: int) -> dict[str, Any]:
    """One mini training (cached under runs/): test top-1, the per-epoch curve for the first seed, and for a
    baseline of the first task its CKA summary."""
    train_size, test_size, epochs = getattr(plan, task)
    curve = seed == plan.seeds[0]
    cfg = TrainConfig(arch="mini", variant=arm, dataset=task, epochs=epochs, batch_size=plan.batch_size, lr=plan.lr,
                      weight_decay=plan.weight_decay, schedule_per="step", seed=seed, train_size=train_size,
                      test_size=test_size, mini_widths=list(plan.widths), mini_stem_stride=plan.stem_stride,
                      out=str(ctx.runs / task / arm / f"seed{seed}"), progress=False, log_every=10_000,
                      eval_every=1 if curve else epochs)
    cka = arm == "baseline" and task == plan.tasks[0]

    def compute() -> dict[str, Any]:
        start = time.perf_counter()
        result = train(cfg, resume=ctx.resume)
        row: dict[str, Any] = {"top1": result["final"]["eval_top1"], "seconds": time.perf_counter() - start,
                               "steps": result["global_step"]}
        if curve:
            row["curve"] = [h["eval_top1"] for h in result["history"]]
        if cka:
            row["cka"] = parts.cka_summary(result["model"], task, plan.cka_images)
        return row

    key = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k == "init" and v is None)}  # pre-init caches
    row = ctx.cached(f"{task}_{arm}_seed{seed}", compute, key=key | ({"cka": plan.cka_images} if cka else {}))
    ctx.log.log(kind="mini_run", task=task, arm=arm, seed=seed, top1=row["top1"])
    print(f"  {task:9s} {arm:12s} seed {seed}: top-1 {row['top1']:.2f} %", flush=True)
    return row


def main_smoke(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    task = plan.tasks[0]
    with ctx.stage("counts"):
        counts = parts.zoo_counts()
        sizes = {t: parts.mini_sizes(plan.widths, plan.stem_stride, t, (*plan.arms, "samedepth")) for t in plan.tasks}
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
        rows = {t: {a: [run_arm(plan, ctx, t, a, s) for s in plan.seeds] for a in plan.arms} for t in plan.tasks}
    top1 = {t: {a: [r["top1"] for r in rows[t][a]] for a in plan.arms} for t in plan.tasks}
    seeds = {"seeds": list(plan.seeds), "task": task}
    for claim_id, other in ACCURACY_CLAIMS.items():
        if {"kerneldna", other} <= set(plan.arms):
            res.estimates[claim_id] = stats.paired_diff(top1[task]["kerneldna"], top1[task][other], **seeds)
    curves = {a: rows[task][a][0]["curve"] for a in plan.arms}
    if all(len(c) > 1 for c in curves.values()):
        changes = {a: c[-1] - c[-2] for a, c in curves.items()}
        res.facts["curve_last_epoch_change"] = (max(changes.values(), key=abs), {"per_arm": changes})
    res.plots.append(parts.plot_accuracy(top1, ctx.out / "accuracy.png"))
    res.plots.append(parts.plot_curves(curves, task, ctx.out / "accuracy_curve.png"))
    cka = [r["cka"] for r in rows[task].get("baseline", [])]
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
    res.tables_md = "\n\n".join([
        "### Accuracy (test split; every arm with the same recipe and seeds)\n\n" + parts.accuracy_table(top1, sizes),
        f"### Throughput: mini nets ({'x'.join(map(str, shape))})\n\n" + parts.bench_table(mini_bench),
        "### Throughput: ResNet-18 family\n\n" + parts.bench_table(zoo_bench)])
    steps = rows[task]["kerneldna"][0]["steps"]
    res.notes_md = (f"{len(plan.seeds)} seeds; " + "; ".join(
        f"{t}: {getattr(plan, t)[0]} train / {getattr(plan, t)[1]} test images, {getattr(plan, t)[2]} epochs"
        for t in plan.tasks) + f" ({steps} steps); batch {plan.batch_size}; SGD lr {plan.lr} (the official "
        f"ResNet-18 recipe's), cosine per iteration, wd {plan.weight_decay} on all parameters; widths "
        f"{list(plan.widths)}, stem stride {plan.stem_stride}. Accuracy intervals: t over the paired per-seed "
        "differences; throughput intervals: percentile bootstrap of the median per-round ratio.")


def main_full(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    """The official ImageNet recipe per variant and seed, then the paired gain and the throughput ratios."""
    from kerneldna.recipes import recipe_config

    top1: dict[str, list[float]] = {v: [] for v in plan.variants}
    with ctx.stage("train"):
        for seed in plan.seeds:
            for variant in plan.variants:
                overrides = [f"variant={variant}", f"data={plan.data}", f"seed={seed}",
                             f"out={ctx.runs / f'{variant}_seed{seed}'}"] + ([f"epochs={plan.epochs}"]
                                                                              if plan.epochs else [])
                top1[variant].append(train(recipe_config(plan.arch, overrides), resume=ctx.resume)["final"]
                                     ["eval_top1"])
    if {"baseline", "kerneldna"} <= set(top1):
        res.estimates["top1_gain"] = stats.paired_diff(top1["kerneldna"], top1["baseline"], arch=plan.arch,
                                                       seeds=list(plan.seeds))
    if plan.arch == "resnet18":
        with ctx.stage("throughput"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            bench = parts.throughput_rounds("resnet18", 64, 15, 2, 224, device=device)
        for ref in ("samedepth", "condconv", "baseline"):
            res.estimates[f"resnet18_throughput_vs_{ref}"] = parts.throughput_ratio(bench, "kerneldna", ref)
        res.tables_md = parts.bench_table(bench)


def det_stage(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    try:
        from effrepro.mm import DetArm, train_and_evaluate

        from kerneldna import mm
    except ImportError as exc:
        raise UsageError(f"the det stage needs the OpenMMLab extra (mmengine, mmdet, mmsegmentation): {exc}") from None
    if plan.name == "full":
        tag = f"r{plan.arch[6:]}" if plan.arch.startswith("resnet") else plan.arch
        ckpts = plan.backbone_checkpoints or tuple(str(ctx.runs / f"{v}_seed{plan.seeds[0]}" / "last.pt")
                                                   for v in mm.BACKBONE_VARIANTS)
        with ctx.stage("det"):
            metrics = {v: train_and_evaluate(mm.coco_config(plan.coco, ctx.runs / f"mask-rcnn_{v}_{tag}_1x_coco",
                                                            plan.arch, v, c))
                       for v, c in zip(mm.BACKBONE_VARIANTS, ckpts, strict=True)}
        for kind, key in (("bbox", "bbox"), ("mask", "segm")):
            res.facts[f"det_coco_{kind}_ap_delta"] = (metrics["kerneldna"][f"coco/{key}_mAP"]
                                                      - metrics["baseline"][f"coco/{key}_mAP"], metrics)
        return
    arms = [DetArm(f"{v}_resnet{DET_DEPTH}", mm.backbone(DET_DEPTH, v, frozen_stages=-1, norm_eval=False),
                   mm.stage_channels(DET_DEPTH)) for v in mm.BACKBONE_VARIANTS]
    det_miniature_stage(ctx, res, arms, DET_ARMS[1], plan.det_images,
                        f"KernelDNA ResNet-{DET_DEPTH} vs the torchvision ResNet-{DET_DEPTH} baseline (every stage "
                        "trained, BatchNorm in train mode; KernelDNA unfolded)")


def main_stage(plan: KernelDNAPlan, ctx: Context, res: Results) -> None:
    (main_full if plan.name == "full" else main_smoke)(plan, ctx, res)


run = run_stages({"main": main_stage, "det": det_stage})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="ImageNet root for --scale full (or KERNELDNA_DATA)")
    parser.add_argument("--arch", default=None, help="architecture for --scale full (default resnet18)")
    parser.add_argument("--variants", help="variants for --scale full (default baseline,kerneldna)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (--scale full)")
    parser.add_argument("--coco", help="COCO 2017 root for the det stage at --scale full")
    parser.add_argument("--backbone-checkpoints", help="det at --scale full: KERNELDNA.pt,BASELINE.pt ImageNet "
                        "checkpoints (default: the main stage's runs/<variant>_seed<s>/last.pt)")


def configure(plan: KernelDNAPlan, args: argparse.Namespace) -> KernelDNAPlan:
    """Map the full-scale flags onto the plan and check the user's paths before any work."""
    import os

    unknown = [t for t in plan.tasks if t not in parts.INPUT_SHAPES]
    if unknown or not plan.tasks:
        raise UsageError(f"tasks: use some of {', '.join(parts.INPUT_SHAPES)}, not {unknown or '()'}")
    ckpts = tuple(c for c in (args.backbone_checkpoints or "").split(",") if c)
    full_only = (args.data, args.arch, args.variants, args.epochs, args.coco, ckpts)
    if plan.name != "full":
        if any(full_only):
            raise UsageError("--data, --arch, --variants, --epochs, --coco and --backbone-checkpoints are for "
                             "--scale full")
        return plan
    variants = tuple(v for v in (args.variants or "").split(",") if v) or plan.variants
    plan = dataclasses.replace(plan, data=args.data or os.environ.get("KERNELDNA_DATA"), coco=args.coco,
                               arch=args.arch or plan.arch, variants=variants, epochs=args.epochs,
                               backbone_checkpoints=ckpts,
                               stages=plan.stages if args.stages else (STAGES if args.coco else ("main",)))
    if "main" in plan.stages and not plan.data:
        raise UsageError("--scale full trains on ImageNet: pass --data /path/to/imagenet (train/ and val/ inside) "
                         "or set KERNELDNA_DATA")
    if "det" in plan.stages:
        if not plan.coco:
            raise UsageError("the det stage at --scale full trains on COCO 2017: pass --coco /path/to/coco "
                             "(train2017/, val2017/, annotations/instances_{train,val}2017.json)")
        if plan.arch not in DET_FULL_ARCHS:
            raise UsageError(f"the det stage has KernelDNA backbones {', '.join(DET_FULL_ARCHS)}, not {plan.arch!r}")
        from effrepro.mm.runner import detection_config

        detection_config({}, plan.coco, Path("."), 1, 0.0, train_split="train2017", val_split="val2017")
        if ckpts and (len(ckpts) != 2 or not all(Path(c).is_file() for c in ckpts)):
            raise UsageError("--backbone-checkpoints takes two existing files: KernelDNA's,baseline's")
    return plan


REPRODUCTION = Reproduction(
    paper="kerneldna", title="KernelDNA: dynamic kernel sharing", paper_table=parts.PAPER_TABLE, plans=PLANS,
    claims=CLAIMS, facts=FACTS, run=run, stages=STAGES, add_arguments=add_arguments, configure=configure)
