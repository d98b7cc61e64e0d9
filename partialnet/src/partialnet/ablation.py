"""The ``ablation`` stage of ``partialnet reproduce``: the per-component ladder PConv (= FasterNet at PartialNet's
width) -> +PAT_ch -> +PAT_sp -> +PAT_sf, each rung the main stage's PartialNet-T2-mini with the switches of
``partialnet.models.ABLATION_LADDER``, trained with the same recipe, data and seeds, and each rung compared with
the one below it, paired by seed. Opt-in at smoke scale (``--stages main,ablation``): 4 models per seed roughly
doubles the main stage's training time."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import timm
import torch
from effrepro import stats
from effrepro.bench import count_flops, count_params
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Results

from partialnet import reproduce_parts as parts
from partialnet.models import ABLATION_LADDER
from partialnet.train import TrainConfig

RUNGS = tuple(ABLATION_LADDER)  # pconv, pat_ch, pat_ch_sp, pat_ch_sp_sf
COMPONENTS = {"pat_ch": "PAT_ch", "pat_ch_sp": "PAT_sp", "pat_ch_sp_sf": "PAT_sf"}  # the component a rung adds

ABLATION_CLAIMS = [
    ClaimSpec(id=f"ablation_{label.lower()}_gain", description=f"top-1 gain of adding {label} (rung {rung} minus "
              f"rung {RUNGS[i]}; T2-mini on MNIST-100, paired by seed)", paper=None, unit="points",
              baseline=f"rung {RUNGS[i]}", expect="> 0")
    for i, (rung, label) in enumerate(COMPONENTS.items())
]
ABLATION_FACTS = [
    FactSpec(id=f"ablation_top1_{rung}", description=f"top-1 of ladder rung {rung} (mean over seeds; per seed, "
             "parameters and FLOPs in details)", unit="%", exact=False)
    for rung in RUNGS
]


def rung_config(rung: str, seed: int, plan: Any, ctx: Context) -> TrainConfig:
    """The main stage's PartialNet-T2-mini recipe with the rung's switches."""
    cfg = parts.mini_train_config("partialnet", seed, plan, ctx.runs / f"ablation_{rung}_seed{seed}")
    return dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, **ABLATION_LADDER[rung]})


def rung_size(cfg: TrainConfig) -> dict[str, int]:
    model = timm.create_model(cfg.model, num_classes=100, **cfg.model_kwargs).eval()
    return {"params": count_params(model), "flops": count_flops(model, torch.zeros(parts.MINI_INPUT))}


def ablation_stage(plan: Any, ctx: Context, res: Results) -> None:
    top1: dict[str, list[float]] = {rung: [] for rung in RUNGS}
    seeds = plan.seeds[:plan.ablation_seeds]
    with ctx.stage("ablation"):
        for seed in seeds:
            for rung in RUNGS:
                cfg = rung_config(rung, seed, plan, ctx)
                start = time.perf_counter()
                history = parts.train_mini(ctx, f"ablation_{rung}_seed{seed}", cfg)
                top1[rung].append(history[-1]["eval_top1"])
                ctx.log.log(kind="ablation_run", rung=rung, seed=seed, top1=top1[rung][-1],
                            seconds=time.perf_counter() - start)
                print(f"  ablation {rung} seed {seed}: top-1 {top1[rung][-1]:.2f} %", flush=True)
    setup = {"seeds": list(seeds), "epochs": plan.epochs, "train_images": plan.train_size}
    for rung in RUNGS:
        values = top1[rung]
        sizes = rung_size(rung_config(rung, seeds[0], plan, ctx))
        res.facts[f"ablation_top1_{rung}"] = (sum(values) / len(values), {"per_seed": values, **sizes, **setup})
    for spec, (rung, lower) in zip(ABLATION_CLAIMS, zip(RUNGS[1:], RUNGS, strict=False), strict=True):
        res.estimates[spec.id] = stats.paired_diff(top1[rung], top1[lower], **setup)
    res.notes_md += "\n\n" + ablation_notes(plan)


def ablation_notes(plan: Any) -> str:
    return ("- Ablation ladder: PConv (every attention off, exactly FasterNet's blocks at PartialNet's width) -> "
            "+PAT_ch (stages 1-3) -> +PAT_sp (every MLP) -> +PAT_sf (stage 4, with its own residual); each rung "
            f"the T2-mini trained as the main arms ({len(plan.seeds[:plan.ablation_seeds])} seeds, {plan.epochs} "
            f"epochs x {plan.train_size} images), each gain paired by seed with the rung below.")
