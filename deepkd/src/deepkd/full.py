"""``deepkd reproduce --scale full``: the paper's CIFAR-100 comparison on your data and GPUs.

For one teacher -> student pair (default resnet32x4 -> resnet8x4, ``configs/cifar100/dkd/resnet32x4_resnet8x4.yaml``)
it trains the teacher if no checkpoint is given (240 epochs, cross-entropy), then DKD (one SGD buffer),
DKD + DOT and DKD + DeepKD (released momenta) with the same seeds, and returns the claims: DeepKD's paired
gain over DKD (last and best epoch, as the papers report best) and over DOT (best epoch). Each run resumes from its
folder, so an interrupted reproduction continues where it stopped. For multi-GPU runs launch the individual
``deepkd train`` commands under ``torchrun`` (the arms are independent); this driver runs them one after
another in the current process.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from effrepro import stats
from effrepro.config import find_config, load_config
from effrepro.errors import UsageError
from effrepro.reproduce import Context, Results

from deepkd.config import TrainConfig, data_root

DEFAULT_CONFIG = "cifar100/dkd/resnet32x4_resnet8x4.yaml"  # a shipped config (deepkd/configs, package data)
FULL_ARMS = {"dkd": ["solver.method=sgd"], "dkd_dot": ["solver.method=dot"], "dkd_deepkd": ["solver.method=deepkd"]}
PAPER_DKD = {"resnet32x4->resnet8x4": 76.32, "vgg13->vgg8": 74.68, "wrn_40_2->wrn_40_1": 74.81,
             "wrn_40_2->wrn_16_2": 76.24, "resnet56->resnet20": 71.97, "resnet110->resnet32": 74.11}


def _teacher(cfg: TrainConfig, runs: Path, overrides: list[str]) -> str:
    from deepkd.train import train

    if cfg.teacher_ckpt and Path(cfg.teacher_ckpt).is_file():
        return cfg.teacher_ckpt
    print(f"teacher checkpoint {cfg.teacher_ckpt} not found: training {cfg.teacher} first (240 epochs)", flush=True)
    teacher_cfg = load_config(None, TrainConfig, [
        f"student={cfg.teacher}", "teacher=null", "distiller.name=none", "solver.method=sgd",
        f"data.dataset={cfg.data.dataset}", f"data.root={data_root(cfg)}", f"data.workers={cfg.data.workers}",
        *[o for o in overrides if o.startswith("data.") or o.startswith("device")]])
    train(teacher_cfg, runs / f"teacher_{cfg.teacher}")
    return str(runs / f"teacher_{cfg.teacher}" / "student.pt")


def check_full(plan: Any) -> tuple[str, list[str], TrainConfig]:
    """The full run's config source, overrides and config, checked (config, CIFAR-100 data) before the output
    folder is made: a mistake is one error line and leaves nothing behind."""
    source = str(find_config(plan.config or DEFAULT_CONFIG, "deepkd"))  # a path, or one of the shipped configs
    base = [f"data.root={plan.data}"] if plan.data else []
    overrides = base + list(plan.overrides or ())
    cfg = load_config(source, TrainConfig, overrides)
    if cfg.data.dataset != "cifar100":
        raise UsageError("the full reproduction driver runs the CIFAR-100 table; for ImageNet use `deepkd train "
                         "--config imagenet/...` per arm (see the README)")
    from deepkd.data import build_dataset

    build_dataset(cfg, train=False)  # a clear error before anything runs when the data is missing
    return source, overrides, cfg


def run_full(plan: Any, ctx: Context) -> Results:
    """DKD, DKD + DOT and DKD + DeepKD on one CIFAR-100 pair, ``plan.seeds`` paired seeds each."""
    from deepkd.train import train

    source, overrides, cfg = check_full(plan)
    with ctx.stage("teacher"):
        teacher_ckpt = _teacher(cfg, ctx.runs, overrides)
    results: dict[str, list[dict[str, Any]]] = {}
    with ctx.stage("students"):
        for seed in plan.seeds:
            for arm, arm_overrides in FULL_ARMS.items():
                arm_cfg = load_config(source, TrainConfig, overrides + arm_overrides +
                                      [f"seed={seed}", f"teacher_ckpt={teacher_ckpt}"])
                out = ctx.runs / arm / f"seed{seed}"
                run = ctx.cached(f"{arm}_seed{seed}", lambda c=arm_cfg, o=out: _summary(train(c, o)),
                                 key={"config": source, "overrides": overrides + arm_overrides, "seed": seed})
                results.setdefault(arm, []).append(run)
    return Results(estimates=_estimates(results, list(plan.seeds)), facts=_facts(cfg, results),
                   tables_md=_table(cfg, results))


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"top1": result["top1"], "best_top1": result["best_top1"]}


def _estimates(results: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, stats.Estimate]:
    def values(arm: str, key: str) -> list[float]:
        return [r[key] for r in results[arm]]

    return {
        "gain_dkd_deepkd_over_dkd": stats.paired_diff(values("dkd_deepkd", "top1"), values("dkd", "top1"),
                                                      seeds=seeds),
        "gain_dkd_deepkd_over_dkd_best": stats.paired_diff(values("dkd_deepkd", "best_top1"),
                                                           values("dkd", "best_top1"), seeds=seeds),
        "gain_dkd_deepkd_over_dkd_dot_best": stats.paired_diff(values("dkd_deepkd", "best_top1"),
                                                               values("dkd_dot", "best_top1"), seeds=seeds),
    }


def _facts(cfg: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    pair = f"{cfg.teacher}->{cfg.student}"
    dkd = statistics.fmean(r["best_top1"] for r in results["dkd"])
    return {"dkd_best_top1": (dkd, {"pair": pair, "published_dkd": PAPER_DKD.get(pair)})}


def _table(cfg: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    published = PAPER_DKD.get(f"{cfg.teacher}->{cfg.student}", "–")
    rows = [f"{cfg.teacher} -> {cfg.student} on CIFAR-100 (published DKD: {published})", "",
            "| arm | top-1 last (mean) | top-1 best (mean) | seeds |", "|---|---|---|---|"]
    for arm, runs in results.items():
        rows.append(f"| {arm} | {statistics.fmean(r['top1'] for r in runs):.2f} | "
                    f"{statistics.fmean(r['best_top1'] for r in runs):.2f} | {len(runs)} |")
    return "\n".join(rows)
