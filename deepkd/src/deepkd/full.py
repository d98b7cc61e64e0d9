"""``deepkd reproduce --scale full``: the paper's CIFAR-100 comparison on your data and GPUs.

For one teacher -> student pair (default resnet32x4 -> resnet8x4, ``configs/cifar100/dkd/resnet32x4_resnet8x4.yaml``)
it trains the teacher if no checkpoint is given (240 epochs, cross-entropy), then DKD (one SGD buffer),
DKD + DOT and DKD + DeepKD (released momenta) with the same seeds, and writes the claims: DeepKD's paired
gain over DKD and over DOT (last and best epoch, as the papers report best). Each run resumes from its
folder, so an interrupted reproduction continues where it stopped. For multi-GPU runs launch the individual
``deepkd train`` commands under ``torchrun`` (the arms are independent); this driver runs them one after
another in the current process.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.report import Claim, results_dir, write_claims, write_report

from deepkd.config import TrainConfig, data_root

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cifar100" / "dkd" / "resnet32x4_resnet8x4.yaml"
FULL_ARMS = {"dkd": ["solver.method=sgd"], "dkd_dot": ["solver.method=dot"], "deepkd": ["solver.method=deepkd"]}
PAPER_DKD = {"resnet32x4->resnet8x4": 76.32, "vgg13->vgg8": 74.68, "wrn_40_2->wrn_40_1": 74.81,
             "wrn_40_2->wrn_16_2": 76.24, "resnet56->resnet20": 71.97, "resnet110->resnet32": 74.11}


def _teacher(cfg: TrainConfig, runs: Path, overrides: list[str], tiny: bool) -> str:
    from deepkd.train import train

    if cfg.teacher_ckpt and Path(cfg.teacher_ckpt).is_file():
        return cfg.teacher_ckpt
    print(f"teacher checkpoint {cfg.teacher_ckpt} not found: training {cfg.teacher} first (240 epochs)", flush=True)
    extra = ["solver.epochs=1", "solver.decay_epochs=[]"] if tiny else []
    teacher_cfg = load_config(None, TrainConfig, [
        f"student={cfg.teacher}", "teacher=null", "distiller.name=none", "solver.method=sgd",
        f"data.dataset={cfg.data.dataset}", f"data.root={data_root(cfg)}", f"data.workers={cfg.data.workers}",
        *[o for o in overrides if o.startswith("data.") or o.startswith("device")], *extra])
    train(teacher_cfg, runs / f"teacher_{cfg.teacher}")
    return str(runs / f"teacher_{cfg.teacher}" / "student.pt")


def reproduce_full(out: str | None, data: str | None, seeds: int | None, config: str | None, overrides: list[str],
                   tiny: bool = False) -> Path:
    from deepkd.train import train

    source = config or str(DEFAULT_CONFIG)
    base = [f"data.root={data}"] if data else []
    cfg = load_config(source, TrainConfig, base + overrides)
    if cfg.data.dataset != "cifar100":
        raise UsageError("the full reproduction driver runs the CIFAR-100 table; for ImageNet use `deepkd train "
                         "--config imagenet/...` per arm (see the README)")
    from deepkd.data import build_dataset

    build_dataset(cfg, train=False)  # a clear error before anything runs when the data is missing
    out_dir = results_dir("deepkd", "full", out)
    runs = out_dir / "runs"
    teacher_ckpt = _teacher(cfg, runs, base + overrides, tiny)
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds or 3):
        for arm, arm_overrides in FULL_ARMS.items():
            extra = ["solver.epochs=1"] if tiny else []
            arm_cfg = load_config(source, TrainConfig, base + overrides + arm_overrides + extra +
                                  [f"seed={seed}", f"teacher_ckpt={teacher_ckpt}"])
            results.setdefault(arm, []).append(train(arm_cfg, runs / arm / f"seed{seed}"))
    claims = _claims(cfg, results)
    write_claims(out_dir, claims)
    write_report(out_dir, f"DeepKD full-scale: {cfg.teacher} -> {cfg.student} on CIFAR-100", _table(cfg, results),
                 claims)
    return out_dir


def _claims(cfg: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> list[Claim]:
    claims = []
    pair = f"{cfg.teacher}->{cfg.student}"
    for arm, base in (("deepkd", "dkd"), ("deepkd", "dkd_dot")):
        for key in ("top1", "best_top1"):
            gains = [a[key] - b[key] for a, b in zip(results[arm], results[base])]
            claims.append(Claim(f"gain_{arm}_over_{base}_{key}", f"{pair}: paired gain of DKD+DeepKD over {base} "
                                f"({'best epoch' if key == 'best_top1' else 'last epoch'})", None,
                                statistics.fmean(gains), "top-1 points", base, "> 0",
                                {"gains": gains, arm: [r[key] for r in results[arm]],
                                 base: [r[key] for r in results[base]]}))
    dkd = statistics.fmean(r["best_top1"] for r in results["dkd"])
    claims.append(Claim("dkd_best_top1", f"{pair}: our DKD baseline (best epoch) vs the published DKD number",
                        PAPER_DKD.get(pair), dkd, "%", "published DKD", "> 0" if pair not in PAPER_DKD
                        else f"between {PAPER_DKD[pair] - 1.0} {PAPER_DKD[pair] + 1.0}", {}))
    return claims


def _table(cfg: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    rows = ["| arm | top-1 last (mean) | top-1 best (mean) | seeds |", "|---|---|---|---|"]
    for arm, runs in results.items():
        rows.append(f"| {arm} | {statistics.fmean(r['top1'] for r in runs):.2f} | "
                    f"{statistics.fmean(r['best_top1'] for r in runs):.2f} | {len(runs)} |")
    return "\n".join(rows)
