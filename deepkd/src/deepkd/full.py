"""``deepkd reproduce --scale full``: the paper's teacher -> student grid on your data and GPUs.

For every pair of the dataset's grid (:data:`deepkd.grid.PAIRS`; ``--set pairs=[...]`` picks some), it finds each
teacher under the teachers folder (``<dir>/<arch>/teacher.pt``, mdistiller's ``<dir>/<arch>_vanilla/
ckpt_epoch_240.pth``, or the torchvision file for ImageNet) or trains it with cross-entropy when absent, and says
so; then it trains every base (KD, DKD, MLKD, CRLD) with and without DeepKD and with DeepKD + the dynamic top-k
mask, for each seed. With ``nproc`` > 1 each run is a ``torchrun --nproc_per_node=<nproc>`` job (DDP, one GPU per
process); the driver itself stays one process. Every run resumes from its folder and its result is cached, so an
interrupted grid continues where it stopped.

Claims: the gain of + DeepKD over its base, and of the mask over DeepKD, per pair (paired by seed: one seed per arm
gives no interval) and pooled over the pairs run (t-interval over pairs, n = pairs). Facts: every arm's best-epoch
top-1 beside the published number where one is known, and each teacher's top-1 (and whether it was trained here).
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from effrepro import stats
from effrepro.config import config_to_dict, find_config, load_config, save_config
from effrepro.errors import UsageError
from effrepro.reproduce import ClaimSpec, Context, FactSpec, Results
from effrepro.train import require_single_process, run_torchrun

from deepkd.config import TrainConfig
from deepkd.grid import (
    BASES,
    PAIRS,
    PAPER_TEACHER,
    TEACHER_CONFIG,
    TORCHVISION_FILES,
    Pair,
    arm_config,
    arm_label,
    check_choices,
    pairs_of,
    paper_top1,
)

GAINS = (("deepkd", "deepkd", "base"), ("dtm", "dtm", "deepkd"), ("dtm_over_base", "dtm", "base"))  # id, arm, vs
TEACHER_KEYS = {"solver.epochs", "solver.lr", "solver.decay_epochs", "device", "amp"}  # and every data.* key


# ---- declared claims and facts (every id the grid can produce) ------------------------------------------------
def _claim(cid: str, what: str, arm: str, base: str, unit_of: str, headline: bool = False) -> ClaimSpec:
    return ClaimSpec(id=cid, description=f"{what}: best-epoch top-1 of {arm} minus {base}, {unit_of}", paper=None,
                     unit="top-1 points", baseline=base, expect="> 0", headline=headline)


def full_specs() -> tuple[list[ClaimSpec], list[FactSpec]]:
    """Claims and facts of the full grid (the paper's +DeepKD numbers are not retrievable here: paper=None)."""
    claims, facts = [], []
    for dataset, table in PAIRS.items():
        for base in BASES:
            b, d, m = arm_label(base, "base"), arm_label(base, "deepkd"), arm_label(base, "dtm")
            pooled = f"mean over the {dataset} pairs run of the per-pair mean over seeds, t-interval over pairs"
            claims.append(_claim(f"gain_{dataset}_{base}_deepkd", f"DeepKD improves {b} on {dataset}", d, b,
                                 pooled, headline=True))
            claims.append(_claim(f"gain_{dataset}_{base}_dtm", f"the dynamic top-k mask adds to {d} on {dataset}",
                                 m, d, pooled))
            claims.append(_claim(f"gain_{dataset}_{base}_dtm_over_base", f"DeepKD with the mask improves {b} on "
                                 f"{dataset}", m, b, pooled))
        for name, pair in table.items():
            where = f"{pair.teacher} -> {pair.student} ({dataset})"
            for base in BASES:
                b, d, m = arm_label(base, "base"), arm_label(base, "deepkd"), arm_label(base, "dtm")
                by_seed = "paired by seed (n = seeds per arm; one seed gives no interval: inconclusive)"
                claims.append(_claim(f"gain_{dataset}_{name}_{base}_deepkd", f"{where}", d, b, by_seed))
                claims.append(_claim(f"gain_{dataset}_{name}_{base}_dtm", f"{where}", m, d, by_seed))
                claims.append(_claim(f"gain_{dataset}_{name}_{base}_dtm_over_base", f"{where}", m, b, by_seed))
                for variant in ("base", "deepkd", "dtm", "dot"):
                    facts.append(FactSpec(id=f"top1_{dataset}_{name}_{base}_{variant}", unit="%", exact=False,
                                          description=f"{arm_label(base, variant)} on {where}: best-epoch top-1, "
                                          "mean over seeds", paper=paper_top1(pair, base, variant)))
        for arch, published in PAPER_TEACHER[dataset].items():
            facts.append(FactSpec(id=f"teacher_{dataset}_{arch}", description=f"teacher {arch} top-1 on the "
                                  f"{dataset} test split (details: trained here or found)", unit="%", exact=False,
                                  paper=published))
    return claims, facts


# ---- checks before anything runs ------------------------------------------------------------------------------
def _overrides(plan: Any) -> list[str]:
    return ([f"data.root={plan.data}"] if plan.data else []) + list(plan.overrides or ())


def check_full(plan: Any) -> None:
    """Grid choices, config keys and the dataset folder, checked before the output folder is made: a mistake is
    one error line and leaves nothing behind."""
    require_single_process("--set nproc=<GPUs per run>")
    pairs = pairs_of(plan.dataset, tuple(plan.pairs))
    check_choices(tuple(plan.bases), tuple(plan.variants))
    if not any(arm in plan.variants and vs in plan.variants for _, arm, vs in GAINS):
        raise UsageError(f"variants {list(plan.variants)} compare nothing: run at least two of base, deepkd, dtm")
    if plan.nproc < 1 or not plan.seeds:
        raise UsageError("nproc must be >= 1 and seeds must name at least one seed")
    from deepkd.config import validate
    from deepkd.data import build_dataset

    for pair in pairs.values():  # every run's config (keys, choices, mask schedule) before any run starts
        for base in plan.bases:
            for variant in plan.variants:
                cfg = validate(load_config(arm_config(plan.dataset, pair, base, variant), TrainConfig,
                                           _overrides(plan)))

    build_dataset(cfg, train=False)  # no data path / no dataset there: one clear error now


# ---- running ----------------------------------------------------------------------------------------------------
def _launch(cfg: TrainConfig, out: Path, nproc: int) -> dict[str, Any]:
    """Train ``cfg`` into ``out`` (resuming), in this process or as a torchrun job; returns its metrics."""
    from deepkd.train import train

    if nproc == 1:
        result = train(cfg, out, progress=False)
        return {k: result[k] for k in ("top1", "best_top1", "epochs", "seconds")}
    config = save_config(cfg, out / "config.yaml")
    run_torchrun(nproc, "deepkd.cli", ["train", "--config", str(config), "--out", str(out), "--quiet"], out / "last.pt")
    metrics = torch.load(out / "student.pt", map_location="cpu", weights_only=True)["metrics"]
    return {k: metrics[k] for k in ("top1", "best_top1", "epochs", "seconds")}


def _teacher_candidates(dataset: str, arch: str, folder: Path) -> list[Path]:
    paths = [folder / arch / "teacher.pt"]
    if dataset == "cifar100":
        paths.append(folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth")
    if arch in TORCHVISION_FILES:
        paths.append(folder / TORCHVISION_FILES[arch])
    return paths


def _teacher_config(dataset: str, pair: Pair, overrides: list[str]) -> TrainConfig:
    """Cross-entropy training of ``pair.teacher``: the CIFAR-100 teacher recipe, or on ImageNet the pair's recipe.

    Of the user's overrides the teacher takes the data, device, AMP, epochs and LR ones (so a shortened test
    grid shortens the teacher too)."""
    if TEACHER_CONFIG[dataset]:
        data = yaml.safe_load(find_config(TEACHER_CONFIG[dataset], "deepkd").read_text())
    else:
        data = {k: v for k, v in arm_config(dataset, pair, "dkd", "base").items() if k not in ("distiller", "mask")}
    kept = [o for o in overrides if o.startswith("data.") or o.partition("=")[0] in TEACHER_KEYS]
    fixed = [f"student={pair.teacher}", "teacher=null", "distiller.name=none", "solver.method=sgd",
             f"data.dataset={dataset}"]
    return load_config(data, TrainConfig, kept + fixed)


def _teacher(ctx: Context, plan: Any, pair: Pair, overrides: list[str]) -> dict[str, Any]:
    """The teacher of ``pair``: a checkpoint found in the teachers folder, or one trained now (and said so)."""
    from deepkd.eval import evaluate_checkpoint

    folder = Path(plan.teachers) if plan.teachers else ctx.runs / "teachers"
    arch, dataset = pair.teacher, plan.dataset
    cfg = _teacher_config(dataset, pair, overrides)
    candidates = _teacher_candidates(dataset, arch, folder)
    out, trained_key = folder / arch, {"config": config_to_dict(cfg)}
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None and not ctx.is_cached(f"teacher_{dataset}_{arch}", trained_key):
        key = {"path": str(found), "size": found.stat().st_size, "mtime": found.stat().st_mtime}
        top1 = ctx.cached(f"teacher_{dataset}_{arch}_eval",
                          lambda: evaluate_checkpoint(found, cfg, arch)["top1"], key=key)
        print(f"[deepkd] teacher {arch}: using {found} (top-1 {top1:.2f})", flush=True)
        return {"path": str(found), "trained_here": False, "top1": top1}
    if not ctx.is_cached(f"teacher_{dataset}_{arch}", trained_key):
        print(f"[deepkd] teacher {arch}: no checkpoint (looked for {', '.join(map(str, candidates))}); training it "
              f"with cross-entropy for {cfg.solver.epochs} epochs into {out}", flush=True)
    result = ctx.cached(f"teacher_{dataset}_{arch}", lambda: _launch(cfg, out, plan.nproc), key=trained_key)
    if not (out / "teacher.pt").is_file():
        shutil.copyfile(out / "student.pt", out / "teacher.pt")
    return {"path": str(out / "teacher.pt"), "trained_here": True, "top1": result["top1"]}


def _teachers(ctx: Context, plan: Any, pairs: dict[str, Pair], overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Each distinct teacher once, by architecture."""
    by_arch: dict[str, dict[str, Any]] = {}
    for pair in pairs.values():
        if pair.teacher not in by_arch:
            by_arch[pair.teacher] = _teacher(ctx, plan, pair, overrides)
    return by_arch


def run_full(plan: Any, ctx: Context) -> Results:
    """Every (pair, base, variant, seed) of the plan's grid; see the module docstring."""
    check_full(plan)
    overrides = _overrides(plan)
    pairs = pairs_of(plan.dataset, tuple(plan.pairs))
    with ctx.stage("teachers"):
        teachers = _teachers(ctx, plan, pairs, overrides)
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    with ctx.stage("students"):
        for seed in plan.seeds:
            for name, pair in pairs.items():
                for base in plan.bases:
                    for variant in plan.variants:
                        cfg = load_config(arm_config(plan.dataset, pair, base, variant), TrainConfig, overrides + [
                            f"seed={seed}", f"teacher_ckpt={teachers[pair.teacher]['path']}"])
                        arm = f"{plan.dataset}_{name}_{base}_{variant}_seed{seed}"
                        print(f"[deepkd] {arm}: {arm_label(base, variant)}, {cfg.solver.epochs} epochs", flush=True)
                        run = ctx.cached(arm, lambda c=cfg, a=arm: _launch(c, ctx.runs / a, plan.nproc),
                                         key={"config": config_to_dict(cfg)})
                        results.setdefault((name, base, variant), []).append(run)
    return Results(estimates=_estimates(plan, results), facts=_facts(plan, pairs, teachers, results),
                   tables_md=_table(plan, pairs, teachers, results))


# ---- estimates, facts, table ------------------------------------------------------------------------------------


def _best(runs: list[dict[str, Any]]) -> list[float]:
    return [r["best_top1"] for r in runs]


def _estimates(plan: Any, results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> dict[str, stats.Estimate]:
    estimates: dict[str, stats.Estimate] = {}
    pairs = pairs_of(plan.dataset, tuple(plan.pairs))
    for base in plan.bases:
        for suffix, arm, against in GAINS:
            per_pair: dict[str, tuple[float, float]] = {}
            for name in pairs:
                a, b = results.get((name, base, arm)), results.get((name, base, against))
                if not a or not b:
                    continue
                estimates[f"gain_{plan.dataset}_{name}_{base}_{suffix}"] = stats.paired_diff(
                    _best(a), _best(b), seeds=list(plan.seeds), paper_arm=paper_top1(pairs[name], base, arm),
                    paper_baseline=paper_top1(pairs[name], base, against),
                    last_epoch_diff=statistics.fmean(x["top1"] - y["top1"] for x, y in zip(a, b)))
                per_pair[name] = (statistics.fmean(_best(a)), statistics.fmean(_best(b)))
            if per_pair:
                estimates[f"gain_{plan.dataset}_{base}_{suffix}"] = stats.paired_diff(
                    [v[0] for v in per_pair.values()], [v[1] for v in per_pair.values()], pairs=list(per_pair),
                    seeds_per_pair=len(plan.seeds))
    return estimates


def _facts(plan: Any, pairs: dict[str, Pair], teachers: dict[str, dict[str, Any]],
           results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for (name, base, variant), runs in results.items():
        facts[f"top1_{plan.dataset}_{name}_{base}_{variant}"] = (
            round(statistics.fmean(_best(runs)), 2),
            {"seeds": list(plan.seeds), "best_top1": _best(runs), "last_top1": [r["top1"] for r in runs],
             "epochs": runs[0]["epochs"], "seconds": [r["seconds"] for r in runs]})
    for arch, teacher in teachers.items():
        facts[f"teacher_{plan.dataset}_{arch}"] = (round(teacher["top1"], 2), {
            "trained_here": teacher["trained_here"], "checkpoint": teacher["path"]})
    return facts


def _cell(runs: list[dict[str, Any]] | None, paper: float | None = None) -> str:
    if not runs:
        return "–"
    text = f"{statistics.fmean(_best(runs)):.2f}"
    return text + (f" ({paper:.2f})" if paper is not None else "")


def _table(plan: Any, pairs: dict[str, Pair], teachers: dict[str, dict[str, Any]],
           results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str:
    rows = [f"{plan.dataset}, best-epoch top-1 (%), mean over {len(plan.seeds)} seed(s); the published number in "
            "brackets where one is known here (the paper's +DeepKD numbers are not).", "",
            "| pair | teacher | base | base (paper) | + DeepKD | gain | + DeepKD + DTM | + DOT |",
            "|---|---|---|---|---|---|---|---|"]
    for name, pair in pairs.items():
        teacher = teachers[pair.teacher]
        origin = "trained here" if teacher["trained_here"] else "found"
        for base in plan.bases:
            cells = {v: results.get((name, base, v)) for v in ("base", "deepkd", "dtm", "dot")}
            gain = "–"
            if cells["base"] and cells["deepkd"]:
                gain = f"{statistics.fmean(_best(cells['deepkd'])) - statistics.fmean(_best(cells['base'])):+.2f}"
            rows.append(f"| {pair.teacher} -> {pair.student} | {teacher['top1']:.2f} ({origin}) | {base.upper()} | "
                        f"{_cell(cells['base'], pair.paper.get(base))} | {_cell(cells['deepkd'])} | {gain} | "
                        f"{_cell(cells['dtm'])} | {_cell(cells['dot'], pair.paper.get(f'{base}_dot'))} |")
    return "\n".join(rows)
