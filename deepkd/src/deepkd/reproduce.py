"""``deepkd reproduce``: DeepKD's claims in miniature on MNIST-100 (smoke) or the CIFAR-100 recipe (full).

Smoke (CPU, real images): a teacher MLP is trained on MNIST-100 pairs; students (a much smaller MLP) are
trained on a subset of the same pairs with every arm below, with the same seeds, initialisations, data
order and budget, so the differences between arms are paired per seed:

    ce            cross-entropy only                     kd            Hinton KD, one SGD buffer
    dkd           DKD, one SGD buffer (mu 0.9)           dkd_dot       DKD + DOT (task 0.825 / KD 0.975)
    dkd_reweight  DKD, one buffer, losses re-weighted by (1 - 0.9) / (1 - mu_k): DeepKD's steady-state step
                  sizes without separate buffers (separates re-weighting from temporal decoupling)
    deepkd        DKD + DeepKD, released momentum assignment (TOG 0.825, TCG 0.825, NCG 0.95)
    deepkd_paper  DKD + DeepKD as the paper describes it (TOG 0.975, TCG 0.825, NCG 0.95)
    deepkd_dtm    deepkd + dynamic top-k mask (K 10 -> 100 over the first 60 % of training)
    *_noisy       dkd / deepkd / deepkd_dtm with a noisy-tail teacher (Gaussian noise on the logits outside the
                  teacher's top-10, fixed per sample): where the mask should help

GSNR of the three gradient components (TOG / TCG / NCG of the DKD loss) is measured during the dkd and
deepkd runs at fixed epochs; the step-time ratio DeepKD / DKD is measured in-process with paired repeats.
The teacher is frozen and the student inputs are not augmented, so its logits are computed once and cached.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.optim import GSNRAccumulator, component_grads, sum_grads
from effrepro.report import Claim, results_dir, save_figure, write_claims, write_report
from effrepro.train import MetricsLogger, load_checkpoint, save_checkpoint
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from deepkd.config import TrainConfig
from deepkd.distillers import warmup_factor
from deepkd.losses import dkd_parts

PAPER_TABLE = """CIFAR-100 top-1 (%), best epoch, mean of runs; KD / DKD / MLKD baselines from the anchor repositories
(logit-standardization-KD, DKD, MLKD papers), DOT from mdistiller. The DeepKD columns (+DeepKD) could not be
read here: the paper body was not retrievable (spec: TO-FILL from arXiv 2505.15133, Tables 1-4).

| teacher -> student | KD | +DeepKD | DKD | +DeepKD | MLKD | +DeepKD | DOT |
|---|---|---|---|---|---|---|---|
| resnet32x4 (79.42) -> resnet8x4 (72.50) | 73.33 | TO-FILL | 76.32 | TO-FILL | 77.08 | TO-FILL | 75.12 |
| vgg13 (74.64) -> vgg8 (70.36) | 72.98 | TO-FILL | 74.68 | TO-FILL | 75.18 | TO-FILL | 73.77 |
| wrn_40_2 (75.61) -> wrn_40_1 (71.98) | 73.54 | TO-FILL | 74.81 | TO-FILL | 75.35 | TO-FILL | – |
| wrn_40_2 -> wrn_16_2 (73.26) | 74.92 | TO-FILL | 76.24 | TO-FILL | 76.63 | TO-FILL | – |
| resnet56 (72.34) -> resnet20 (69.06) | 70.66 | TO-FILL | 71.97 | TO-FILL | 72.19 | TO-FILL | – |
| resnet32x4 -> ShuffleV2 (71.82) | 74.45 | TO-FILL | 77.07 | TO-FILL | 78.44 | TO-FILL | 75.55 |

ImageNet top-1 (%): ResNet34 (73.31) -> ResNet18 (69.76): KD 71.03, DKD 71.70, DOT 71.72, MLKD 71.90, DeepKD
TO-FILL; ResNet50 (76.16) -> MobileNet-V1 (68.87): KD 70.50, DKD 72.05, DOT 73.09, MLKD 73.01, DeepKD TO-FILL.
Paper's qualitative claims: DeepKD improves every base (KD, DKD, MLKD, CRLD) and beats DOT; the best momentum
of each component grows with its GSNR (mu: TOG 0.975 >= NCG 0.95 > TCG 0.825); DeepKD has higher GSNR than
KD / DKD / DOT; the dynamic top-k mask adds a further gain."""

REWEIGHT = {"loss_ce": 0.1 / 0.175, "loss_tckd": 0.1 / 0.175, "loss_nckd": 0.1 / 0.05}
ARMS: dict[str, dict[str, Any]] = {
    "ce": {"distiller": "none", "method": "sgd"},
    "kd": {"distiller": "kd", "method": "sgd"},
    "dkd": {"distiller": "dkd", "method": "sgd", "gsnr": True},
    "dkd_dot": {"distiller": "dkd", "method": "dot"},
    "dkd_reweight": {"distiller": "dkd", "method": "sgd", "loss_weights": REWEIGHT},
    "deepkd": {"distiller": "dkd", "method": "deepkd", "gsnr": True},
    "deepkd_paper": {"distiller": "dkd", "method": "deepkd", "mode": "paper"},
    "deepkd_dtm": {"distiller": "dkd", "method": "deepkd", "mask": True},
    "dkd_noisy": {"distiller": "dkd", "method": "sgd", "noisy": True},
    "deepkd_noisy": {"distiller": "dkd", "method": "deepkd", "noisy": True},
    "deepkd_dtm_noisy": {"distiller": "dkd", "method": "deepkd", "mask": True, "noisy": True},
}


@dataclass(frozen=True)
class SmokePlan:
    """Budget and sizes of the miniature (a scaled copy of the CIFAR recipe)."""

    teacher_arch: str = "mlp_teacher"        # MLP 1568-512-512-100
    teacher_train: int = 30000
    teacher_epochs: int = 4
    teacher_lr: float = 0.1
    teacher_batch: int = 128
    student_arch: str = "mlp_student"        # MLP 1568-64-100
    student_train: int = 5000                # the first pairs of the teacher's training set
    test_size: int = 10000
    epochs: int = 24
    batch: int = 64
    lr: float = 0.05
    seeds: int = 3
    noise_sigma: float = 2.0                 # noisy-tail teacher: N(0, sigma^2) on logits outside its top-10
    noise_topk: int = 10
    gsnr_batches: int = 16                   # M mini-batches of `batch` per GSNR measurement
    gsnr_fractions: tuple[float, ...] = (0.125, 0.5, 1.0)  # end of warm-up, mid, end of training
    bench_repeats: int = 30
    arms: tuple[str, ...] = tuple(ARMS)

    @property
    def warmup(self) -> float:
        return max(self.epochs / 12, 1.0)    # 20 of 240 epochs

    @property
    def decay_epochs(self) -> list[int]:
        return [round(self.epochs * f) for f in (150 / 240, 180 / 240, 210 / 240)]

    @property
    def gsnr_epochs(self) -> list[int]:
        return sorted({max(1, round(self.epochs * f)) for f in self.gsnr_fractions})


SMOKE = SmokePlan()
TINY = SmokePlan(teacher_train=2000, teacher_epochs=1, student_train=384, test_size=500, epochs=3, seeds=2,
                 gsnr_batches=3, gsnr_fractions=(0.5, 1.0), bench_repeats=5,
                 arms=("ce", "kd", "dkd", "dkd_dot", "deepkd", "deepkd_noisy", "deepkd_dtm_noisy"))


# ---- data -------------------------------------------------------------------------------------------------
class CachedTeacherSet(Dataset):
    """MNIST-100 pairs as ``(image [1,28,56] in [0,1], label, teacher logits)``."""

    def __init__(self, images: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        self.images, self.labels, self.logits = images, labels, logits

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        image = self.images[index].unsqueeze(0).float().div_(255.0)
        if self.logits is None:
            return image, self.labels[index]
        return image, self.labels[index], self.logits[index]


def noisy_tail(logits: Tensor, sigma: float, keep: int, seed: int = 1234) -> Tensor:
    """Add fixed N(0, sigma^2) noise to every logit outside each row's top-``keep`` (the top stays clean)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(logits.shape, generator=gen) * sigma
    top = logits.topk(keep, dim=1).indices
    tail = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top, False)
    return logits + noise * tail


def _student_config(plan: SmokePlan, arm: str, seed: int, teacher_ckpt: str) -> TrainConfig:
    spec = ARMS[arm]
    cfg = TrainConfig(student=plan.student_arch, teacher=plan.teacher_arch, teacher_ckpt=teacher_ckpt, seed=seed)
    cfg.data.dataset, cfg.data.batch_size, cfg.data.test_batch_size, cfg.data.workers = "mnist100", plan.batch, 1000, 0
    cfg.distiller.name = spec["distiller"]
    if spec["distiller"] == "none":
        cfg.teacher = cfg.teacher_ckpt = None
    if spec["distiller"] == "dkd":
        cfg.distiller.warmup = plan.warmup
    s = cfg.solver
    s.method, s.epochs, s.lr, s.decay_epochs = spec["method"], plan.epochs, plan.lr, plan.decay_epochs
    s.momentum_mode = spec.get("mode", "code")
    s.grad_method = "backward"  # the faster one on CPU for this model (see the step-time claim)
    s.loss_weights = spec.get("loss_weights")
    if spec.get("mask"):
        cfg.mask.mode, cfg.mask.k0, cfg.mask.start_epoch, cfg.mask.end_epoch = "dynamic", 10, 0, 0.6 * plan.epochs
    return cfg


# ---- GSNR probe ---------------------------------------------------------------------------------------------
def gsnr_probe(plan: SmokePlan, probe_set: CachedTeacherSet) -> Any:
    """GSNR of TOG / TCG / NCG (and their sum) of the DKD loss, over ``gsnr_batches`` fixed mini-batches."""
    batches = [probe_set[i * plan.batch:(i + 1) * plan.batch] for i in range(plan.gsnr_batches)]

    def probe(distiller: Any, finished: int) -> dict[str, float]:
        if finished not in plan.gsnr_epochs:
            return {}
        student = distiller.student
        params = list(student.parameters())
        acc = GSNRAccumulator()
        ramp = warmup_factor(finished, plan.warmup)
        for images, labels, teacher in batches:
            logits = student(images)
            tckd, nckd = dkd_parts(logits, teacher, labels, 4.0)
            losses = {"tog": F.cross_entropy(logits, labels), "tcg": ramp * tckd.mean(),
                      "ncg": 8.0 * ramp * nckd.mean()}
            grads = component_grads(losses, params)
            grads["total"] = sum_grads(grads)
            acc.update(grads)
        return {f"gsnr_{k}": v for k, v in acc.summary().items()}

    return probe


class _Slice(Dataset):
    def __init__(self, base: CachedTeacherSet) -> None:
        self.base = base

    def __getitem__(self, s: slice) -> tuple[Tensor, ...]:
        images = self.base.images[s].unsqueeze(1).float().div_(255.0)
        return images, self.base.labels[s], self.base.logits[s]


# ---- one student run (in a worker process) ---------------------------------------------------------------------
def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    from deepkd.train import train

    plan = SmokePlan(**job["plan"])
    data = torch.load(job["data"], weights_only=True)
    logits = data["train_logits_noisy"] if ARMS[job["arm"]].get("noisy") else data["train_logits"]
    train_set = CachedTeacherSet(data["train_images"], data["train_labels"], logits)
    test_set = CachedTeacherSet(data["test_images"], data["test_labels"])
    cfg = _student_config(plan, job["arm"], job["seed"], job["teacher"])
    probe = gsnr_probe(plan, _Slice(train_set)) if ARMS[job["arm"]].get("gsnr") else None
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train(cfg, job["out"], progress=False, datasets=(train_set, test_set), probe=probe)
    gsnr = {row["epoch"]: {k[len("eval_gsnr_"):]: v for k, v in row.items() if k.startswith("eval_gsnr_")}
            for row in result["history"] if any(k.startswith("eval_gsnr_") for k in row)}
    return {"arm": job["arm"], "seed": job["seed"], "top1": result["top1"], "best_top1": result["best_top1"],
            "curve": [row["eval_top1"] for row in result["history"]], "gsnr": gsnr,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


# ---- orchestration ----------------------------------------------------------------------------------------------
def _prepare(plan: SmokePlan, runs: Path) -> tuple[Path, str, float]:
    """Train (or reuse) the teacher, cache its logits on the student's training pairs; returns paths + accuracy."""
    from effrepro.data import mnist100

    from deepkd.train import load_teacher, train

    teacher_dir = runs / "teacher"
    cfg = TrainConfig(student=plan.teacher_arch, teacher=None, seed=0)
    cfg.distiller.name, cfg.solver.method = "none", "sgd"
    cfg.data.dataset, cfg.data.batch_size, cfg.data.workers = "mnist100", plan.teacher_batch, 0
    cfg.data.test_batch_size = 1000
    cfg.data.train_size, cfg.data.test_size = plan.teacher_train, plan.test_size
    cfg.solver.epochs, cfg.solver.lr = plan.teacher_epochs, plan.teacher_lr
    cfg.solver.decay_epochs = [max(plan.teacher_epochs - 1, 1)] if plan.teacher_epochs > 1 else []
    result = train(cfg, teacher_dir, progress=False)
    teacher_ckpt = str(teacher_dir / "student.pt")
    data_path = runs / "data.pt"
    if not data_path.is_file():
        images, labels = mnist100("train", size=plan.teacher_train, seed=0)
        images, labels = images[:plan.student_train], labels[:plan.student_train]
        test_images, test_labels = mnist100("test", size=plan.test_size, seed=0)
        teacher = load_teacher(teacher_ckpt, plan.teacher_arch, 100, "mnist").eval()
        with torch.no_grad():
            logits = torch.cat([teacher(images[i:i + 1000].unsqueeze(1).float() / 255)
                                for i in range(0, len(images), 1000)])
            test_logits = torch.cat([teacher(test_images[i:i + 1000].unsqueeze(1).float() / 255)
                                     for i in range(0, len(test_images), 1000)])
        noisy = noisy_tail(logits, plan.noise_sigma, plan.noise_topk)
        save_checkpoint(data_path, {
            "train_images": images, "train_labels": labels, "train_logits": logits, "train_logits_noisy": noisy,
            "test_images": test_images, "test_labels": test_labels,
            "teacher_test_top1": float((test_logits.argmax(1) == test_labels).float().mean() * 100),
            "noisy_train_top1": float((noisy.argmax(1) == labels).float().mean() * 100),
            "train_top1": float((logits.argmax(1) == labels).float().mean() * 100),
        })
    return data_path, teacher_ckpt, result["top1"]


def _run_all(jobs: list[dict[str, Any]], workers: int, log: MetricsLogger) -> list[dict[str, Any]]:
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_run_job(job))
            log.log(**{k: v for k, v in results[-1].items() if k != "curve"})
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for result in pool.map(_run_job, jobs):
            results.append(result)
            log.log(**{k: v for k, v in result.items() if k != "curve"})
    return results


def _bench(plan: SmokePlan) -> dict[str, Any]:
    from deepkd.bench import step_benchmark

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return step_benchmark(plan.student_arch, None, "mnist", plan.batch, 100, "cpu", repeats=plan.bench_repeats)
    finally:
        torch.set_num_threads(threads)


def reproduce(scale: str = "smoke", tiny: bool = False, out: str | None = None, data: str | None = None,
              seeds: int | None = None, workers: int = 2, config: str | None = None,
              overrides: list[str] | None = None, arms: list[str] | None = None) -> Path:
    """Run the miniature (or the full CIFAR-100 comparison) and write claims.json, report.md, plots."""
    if scale == "full":
        from deepkd.full import reproduce_full

        return reproduce_full(out=out, data=data, seeds=seeds, config=config, overrides=overrides or [], tiny=tiny)
    plan = TINY if tiny else SMOKE
    if seeds is not None:
        if seeds < 1:
            raise UsageError("--seeds must be >= 1")
        plan = replace(plan, seeds=seeds)
    if arms:
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            raise UsageError(f"unknown arm(s) {unknown}; choose from: {', '.join(ARMS)}")
        plan = replace(plan, arms=tuple(a for a in ARMS if a in arms or a == "ce"))
    out_dir = results_dir("deepkd", "smoke", out)
    runs = out_dir / "runs"
    start = time.perf_counter()
    data_path, teacher_ckpt, teacher_top1 = _prepare(plan, runs)
    plan_dict = {k: v for k, v in asdict(plan).items()}
    jobs = [{"arm": arm, "seed": seed, "plan": plan_dict, "data": str(data_path), "teacher": teacher_ckpt,
             "out": str(runs / arm / f"seed{seed}")} for seed in range(plan.seeds) for arm in plan.arms]
    log = MetricsLogger(out_dir / "metrics.jsonl")
    results = _run_all(jobs, workers, log)
    bench = _bench(plan)
    log.log(kind="bench", **{f"median_s_{k}": v for k, v in bench["median_s"].items()})
    cached = load_checkpoint(data_path)
    summary = summarise(plan, results, bench, cached, teacher_top1)
    claims = build_claims(summary)
    plots = _plots(summary, out_dir)
    write_claims(out_dir, claims)
    elapsed = time.perf_counter() - start
    write_report(out_dir, "DeepKD: miniature reproduction on MNIST-100" + (" (tiny budget)" if tiny else ""),
                 PAPER_TABLE, claims, notes_md=_notes(plan, summary, elapsed, workers), plots=plots)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return out_dir


# ---- analysis -----------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(plan: SmokePlan, results: list[dict[str, Any]], bench: dict[str, Any], cached: dict[str, Any],
              teacher_top1: float) -> dict[str, Any]:
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    arms = {}
    for arm, seeds in by_arm.items():
        final = [seeds[s]["top1"] for s in sorted(seeds)]
        best = [seeds[s]["best_top1"] for s in sorted(seeds)]
        arms[arm] = {"top1": final, "best_top1": best, "mean": _mean_std(final)[0], "std": _mean_std(final)[1],
                     "best_mean": _mean_std(best)[0], "seconds": sum(seeds[s]["seconds"] for s in seeds),
                     "cpu_seconds": sum(seeds[s].get("cpu_seconds", 0.0) for s in seeds),
                     "curve": [statistics.fmean(c) for c in zip(*(seeds[s]["curve"] for s in sorted(seeds)))]}
    gsnr: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ("dkd", "deepkd"):
        if arm not in by_arm:
            continue
        per_epoch: dict[str, dict[str, list[float]]] = {}
        for r in by_arm[arm].values():
            for epoch, values in r["gsnr"].items():
                for comp, value in values.items():
                    per_epoch.setdefault(str(epoch), {}).setdefault(comp, []).append(value)
        gsnr[arm] = {e: {c: statistics.fmean(v) for c, v in comps.items()} for e, comps in per_epoch.items()}
    return {"plan": asdict(plan), "teacher_top1": teacher_top1, "teacher_train_top1": cached["train_top1"],
            "noisy_teacher_train_top1": cached["noisy_train_top1"], "arms": arms, "gsnr": gsnr, "bench": bench}


def _paired(summary: dict[str, Any], arm: str, base: str) -> dict[str, Any] | None:
    arms = summary["arms"]
    if arm not in arms or base not in arms:
        return None
    gains = [a - b for a, b in zip(arms[arm]["top1"], arms[base]["top1"])]
    err_ratio = [(100 - a) / (100 - b) for a, b in zip(arms[arm]["top1"], arms[base]["top1"])]
    mean, std = _mean_std(gains)
    gap = summary["teacher_top1"] - arms[base]["mean"]
    return {"gain_mean": mean, "gain_std": std, "gains": gains, "wins": sum(g > 0 for g in gains),
            "seeds": len(gains), "acc_ratio": arms[arm]["mean"] / arms[base]["mean"],
            "err_ratio_mean": statistics.fmean(err_ratio),
            "gap_closed": (mean / gap) if gap > 0 else math.nan,
            "best_epoch_gain": arms[arm]["best_mean"] - arms[base]["best_mean"],
            f"{arm}": f"{arms[arm]['mean']:.2f} ± {arms[arm]['std']:.2f}",
            f"{base}": f"{arms[base]['mean']:.2f} ± {arms[base]['std']:.2f}"}


ARM_LABEL = {
    "ce": "CE only", "kd": "KD", "dkd": "DKD", "dkd_dot": "DKD + DOT", "dkd_reweight": "DKD, re-weighted single buffer",
    "deepkd": "DKD + DeepKD (released momenta)", "deepkd_paper": "DKD + DeepKD (paper momenta)",
    "deepkd_dtm": "DKD + DeepKD + dynamic top-k mask", "dkd_noisy": "DKD, noisy-tail teacher",
    "deepkd_noisy": "DKD + DeepKD, noisy-tail teacher", "deepkd_dtm_noisy": "DKD + DeepKD + mask, noisy-tail teacher",
}
GAINS = [  # (id, arm, baseline, description, expect)
    ("gain_deepkd_over_dkd", "deepkd", "dkd", "DeepKD's three buffers beat DKD's single SGD buffer (paired)", "> 0"),
    ("gain_deepkd_over_dot", "deepkd", "dkd_dot", "DeepKD beats DOT's two buffers on the same DKD losses", "> 0"),
    ("gain_deepkd_over_reweight", "deepkd", "dkd_reweight",
     "DeepKD beats a single buffer with the same steady-state step sizes (re-weighted losses)", "> 0"),
    ("gain_deepkd_paper_over_dkd", "deepkd_paper", "dkd", "DeepKD with the paper's momenta (mu_TOG 0.975) beats DKD",
     "> 0"),
    ("gain_mask_clean", "deepkd_dtm", "deepkd", "the dynamic top-k mask adds to DeepKD (clean teacher)", "> 0"),
    ("gain_mask_noisy", "deepkd_dtm_noisy", "deepkd_noisy",
     "the dynamic top-k mask adds to DeepKD when the teacher's low-confidence tail is noisy", "> 0"),
    ("gain_deepkd_over_dkd_noisy", "deepkd_noisy", "dkd_noisy", "DeepKD beats DKD with the noisy-tail teacher", "> 0"),
    ("gain_dkd_over_kd", "dkd", "kd", "the base method: DKD beats KD", "> 0"),
    ("gain_kd_over_ce", "kd", "ce", "distillation helps in the miniature: KD beats CE-only", "> 0"),
]


def build_claims(summary: dict[str, Any]) -> list[Claim]:
    arms = summary["arms"]
    claims = [Claim("teacher_top1", "teacher MLP top-1 on 10k MNIST-100 test pairs", None, summary["teacher_top1"],
                    "%", "the student arms", f"> {arms['ce']['mean']:.4f}" if "ce" in arms else "> 0",
                    {"train_top1": summary["teacher_train_top1"],
                     "noisy_tail_train_top1": summary["noisy_teacher_train_top1"]})]
    ce = arms.get("ce", {}).get("mean")
    for arm, stats in arms.items():
        expect = f"> {ce:.4f}" if ce is not None and arm != "ce" else f"< {summary['teacher_top1']:.4f}"
        baseline = "CE-only student (mean)" if arm != "ce" else "the teacher"
        claims.append(Claim(f"top1_{arm}", f"student top-1, {ARM_LABEL[arm]} (mean over seeds, last epoch)", None,
                            stats["mean"], "%", baseline, expect,
                            {"std": stats["std"], "per_seed": stats["top1"], "best_epoch_mean": stats["best_mean"],
                             "best_epoch_per_seed": stats["best_top1"]}))
    for cid, arm, base, description, expect in GAINS:
        paired = _paired(summary, arm, base)
        if paired is not None:
            claims.append(Claim(cid, description, None, paired["gain_mean"], "top-1 points", base, expect, paired))
    claims += _gsnr_claims(summary)
    bench = summary["bench"]
    ratio = bench["ratio_to_dkd"]
    best_deepkd = min(ratio["deepkd_backward"], ratio["deepkd_batched"])
    claims.append(Claim("step_time_deepkd_over_dkd",
                        "DeepKD step time / DKD step time, same model and batch (the faster gradient method)", None,
                        best_deepkd, "x", "DKD step (one backward, SGD)", "<= 1.3",
                        {"ratios": ratio, "median_s": bench["median_s"], "device": bench["device"],
                         "threads": bench["threads"], "batch": bench["batch_size"]}))
    return claims


def _gsnr_claims(summary: dict[str, Any]) -> list[Claim]:
    gsnr = summary["gsnr"]
    if "dkd" not in gsnr or not gsnr["dkd"]:
        return []
    epochs = sorted(gsnr["dkd"], key=int)
    mid = epochs[len(epochs) // 2]
    dkd = gsnr["dkd"][mid]
    claims = [
        Claim("gsnr_ncg_over_tcg", f"GSNR(NCG) / GSNR(TCG) during DKD training (epoch {mid}); the paper's momenta "
              "imply NCG > TCG", None, dkd["ncg"] / dkd["tcg"], "x", "GSNR of TCG", "> 1",
              {"by_epoch": {e: gsnr["dkd"][e] for e in epochs}}),
        Claim("gsnr_tog_over_tcg", f"GSNR(TOG) / GSNR(TCG) during DKD training (epoch {mid}); the paper's momenta "
              "imply TOG > TCG", None, dkd["tog"] / dkd["tcg"], "x", "GSNR of TCG", "> 1",
              {"by_epoch": {e: gsnr["dkd"][e] for e in epochs}}),
    ]
    if "deepkd" in gsnr and mid in gsnr["deepkd"]:
        ratios = {e: gsnr["deepkd"][e]["total"] / gsnr["dkd"][e]["total"] for e in epochs if e in gsnr["deepkd"]}
        claims.append(Claim("gsnr_total_deepkd_over_dkd", f"GSNR of the total DKD gradient, DeepKD run / DKD run "
                            f"(epoch {mid}); the paper reports higher GSNR for DeepKD", None, ratios[mid], "x",
                            "DKD run at the same epoch", "> 1", {"by_epoch": ratios}))
    return claims


def _plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, stats in summary["arms"].items():
        ax.plot(range(1, len(stats["curve"]) + 1), stats["curve"], label=arm)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    plots.append(save_figure(fig, out_dir / "accuracy_curves.png"))
    if summary["gsnr"].get("dkd"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, style in (("dkd", "-"), ("deepkd", "--")):
            data = summary["gsnr"].get(arm, {})
            epochs = sorted(data, key=int)
            for comp in ("tog", "tcg", "ncg", "total"):
                ax.plot([int(e) for e in epochs], [data[e][comp] for e in epochs], style, marker="o",
                        label=f"{arm} {comp}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("median GSNR (mini-batch of 64)")
        ax.legend(fontsize=7, ncol=2)
        plots.append(save_figure(fig, out_dir / "gsnr.png"))
    return plots


def _notes(plan: SmokePlan, summary: dict[str, Any], elapsed: float, workers: int) -> str:
    rows = ["| arm | top-1 last (mean ± std) | top-1 best epoch | per seed (last) |", "|---|---|---|---|"]
    unstable = []
    for arm, stats in summary["arms"].items():
        per_seed = ", ".join(f"{v:.2f}" for v in stats["top1"])
        rows.append(f"| {ARM_LABEL[arm]} | {stats['mean']:.2f} ± {stats['std']:.2f} | {stats['best_mean']:.2f} | "
                    f"{per_seed} |")
        if stats["best_mean"] - stats["mean"] > 5.0:
            unstable.append(f"{ARM_LABEL[arm]} (best epoch {stats['best_mean']:.2f}, last {stats['mean']:.2f})")
    if unstable:
        rows += ["", "Unstable arms (last epoch more than 5 points below the best epoch; training diverged): "
                 + "; ".join(unstable) + ". Their paired gains are listed with `best_epoch_gain` in the claim "
                 "details as well."]
    return "\n".join([
        f"Miniature: teacher {plan.teacher_arch} trained on {plan.teacher_train} MNIST-100 pairs for "
        f"{plan.teacher_epochs} epochs (test top-1 {summary['teacher_top1']:.2f} %); students {plan.student_arch} "
        f"trained on the first {plan.student_train} of those pairs for {plan.epochs} epochs, batch {plan.batch}, "
        f"LR {plan.lr} x0.1 at epochs {plan.decay_epochs}, wd 5e-4, T 4, alpha 1, beta 8, KD warm-up "
        f"{plan.warmup:.1f} epochs; {plan.seeds} seeds per arm (same init, data order, budget per seed); test set "
        f"{plan.test_size} pairs. Noisy-tail teacher: N(0, {plan.noise_sigma}^2) added to the logits outside its "
        f"top-{plan.noise_topk}.", "",
        *rows, "",
        f"Wall time {elapsed / 60:.1f} min with {workers} worker processes (1 thread each); the student runs used "
        f"{sum(a.get('cpu_seconds', 0.0) for a in summary['arms'].values()) / 60:.1f} CPU-minutes in all (wall time "
        f"above that / {workers} means other processes shared the cores).",
    ])
