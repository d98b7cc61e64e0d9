"""The ``dpconv`` stage of ``partialnet reproduce``: the DPConv workflow as a claim. Per seed, a DPConv search
(the main stage's PartialNet miniature with every mixer a DPConv, its splits held at 1/4 for a warm-up and then
learnt under a budget of the fixed 1/4 split's convolved weights) writes its per-layer splits to a splits file;
the PATConv miniature built from that file (``--set splits=<file>``) is retrained with the main stage's recipe and
compared with the same model at the fixed 1/4 split (the main stage's PartialNet arm), paired by seed."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import timm
import torch
from effrepro import stats
from effrepro.bench import count_flops
from effrepro.report import atomic_write_text
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Results

from partialnet import reproduce_parts as parts
from partialnet.splits import load_splits
from partialnet.train import TrainConfig, train

DPCONV_CLAIMS = [
    ClaimSpec(id="dpconv_learnt_split_gain", description="top-1 of the PartialNet miniature retrained with the "
              "per-layer splits its DPConv search learnt (budget: the fixed 1/4 split's convolved weights) minus "
              "the same model at the fixed 1/4 split (the main stage's PartialNet arm), same recipe and data order, "
              "paired by seed", paper=None, unit="points", baseline="fixed split 1/4", expect="> 0"),
]
DPCONV_FACTS = [
    FactSpec(id="dpconv_flops_ratio", description="FLOPs of the retrained learnt-split miniature / fixed 1/4 split "
             "(mean over seeds; per seed and the learnt n_div per block in details)", unit="x", exact=False),
    FactSpec(id="dpconv_top1_learnt", description="top-1 of the learnt-split miniature (mean over seeds; per seed "
             "in details)", unit="%", exact=False),
]


def search_config(seed: int, plan: Any, ctx: Context) -> TrainConfig:
    cfg = parts.mini_train_config("partialnet", seed, plan, ctx.runs / f"dpconv_search_seed{seed}")
    return dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "dynamic_split": True},
                               epochs=plan.dpconv_search_epochs, dpconv_warmup_epochs=plan.dpconv_warmup_epochs)


def search(seed: int, plan: Any, ctx: Context) -> dict[str, Any]:
    """The search run (cached): its splits document and history. The document is written to
    ``runs/dpconv_splits_seed<s>.json``, the file the retrain reads."""
    cfg = search_config(seed, plan, ctx)

    def compute() -> dict[str, Any]:
        result = train(cfg, resume=ctx.resume, progress=False)
        return {"splits": json.loads(Path(result["splits_file"]).read_text()), "history": result["history"]}

    found = ctx.cached(f"dpconv_search_seed{seed}", compute, key=parts.cache_key(cfg))
    path = ctx.runs / f"dpconv_splits_seed{seed}.json"
    atomic_write_text(path, json.dumps(found["splits"], indent=2) + "\n")
    return {**found, "file": str(path)}


def mini_flops(cfg: TrainConfig) -> int:
    model = timm.create_model(cfg.model, num_classes=100, **cfg.model_kwargs).eval()
    return count_flops(model, torch.zeros(parts.MINI_INPUT))


def dpconv_stage(plan: Any, ctx: Context, res: Results) -> None:
    learnt: list[float] = []
    fixed: list[float] = []
    per_seed: list[dict[str, Any]] = []
    with ctx.stage("dpconv"):
        for seed in plan.seeds[:plan.dpconv_seeds]:
            start = time.perf_counter()
            found = search(seed, plan, ctx)
            base_cfg = parts.mini_train_config("partialnet", seed, plan, ctx.runs / f"partialnet_mini_seed{seed}")
            cfg = dataclasses.replace(base_cfg, out_dir=str(ctx.runs / f"dpconv_retrain_seed{seed}"),
                                      splits=found["file"])
            divs = load_splits(cfg.splits, cfg.model)
            learnt.append(parts.train_mini(ctx, f"dpconv_retrain_seed{seed}", cfg, layer_n_div=divs)[-1]["eval_top1"])
            fixed.append(parts.train_mini(ctx, f"partialnet_mini_seed{seed}", base_cfg)[-1]["eval_top1"])
            flops = mini_flops(dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "layer_n_div": divs}))
            per_seed.append({"seed": seed, "layer_n_div": divs, "flops_ratio": flops / mini_flops(base_cfg),
                             "search_top1": found["history"][-1]["eval_top1"]})
            ctx.log.log(kind="dpconv_run", **per_seed[-1], top1=learnt[-1], fixed_top1=fixed[-1],
                        seconds=time.perf_counter() - start)
            print(f"  dpconv seed {seed}: n_div {divs}, top-1 {learnt[-1]:.2f} % (fixed 1/4: {fixed[-1]:.2f} %)",
                  flush=True)
    setup = {"seeds": [r["seed"] for r in per_seed], "search_epochs": plan.dpconv_search_epochs,
             "warmup_epochs": plan.dpconv_warmup_epochs, "epochs": plan.epochs, "train_images": plan.train_size}
    res.estimates["dpconv_learnt_split_gain"] = stats.paired_diff(learnt, fixed, **setup)
    ratios = [r["flops_ratio"] for r in per_seed]
    res.facts["dpconv_flops_ratio"] = (sum(ratios) / len(ratios), {"per_seed": per_seed})
    res.facts["dpconv_top1_learnt"] = (sum(learnt) / len(learnt), {"per_seed": learnt, **setup})
    res.notes_md += "\n\n" + dpconv_notes(plan, ratios)


def dpconv_notes(plan: Any, ratios: list[float]) -> str:
    return (f"- DPConv: per seed a {plan.dpconv_search_epochs}-epoch search (splits held at 1/4 for the first "
            f"{plan.dpconv_warmup_epochs:g} epoch(s), then learnt under the 1/4 budget), its splits file, and the "
            f"PATConv miniature rebuilt from that file and retrained as the main arms; learnt / fixed FLOPs "
            f"{min(ratios):.2f}-{max(ratios):.2f}.")

