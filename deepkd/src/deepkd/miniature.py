"""The pieces of DeepKD's CPU miniature: teacher and cached logits, one student run, the GSNR probe, the
flatness probe of the final student and the paired step-time measurement. ``deepkd.reproduce`` holds the
experiment that combines them.

The teacher is frozen and the student inputs are not augmented, so its logits on the training pairs are
computed once and cached with the images (``data.pt``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from effrepro.optim import GSNRAccumulator, component_grads, sum_grads
from effrepro.train import save_checkpoint
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from deepkd.config import TrainConfig
from deepkd.distillers import warmup_factor
from deepkd.losses import dkd_parts, teacher_target_prob

KD_LOSS = {"ce_weight": 0.5, "kd_weight": 0.5, "temperature": 4.0}  # the released KD + DeepKD config
ARMS: dict[str, dict[str, Any]] = {
    "ce": {"distiller": "none", "method": "sgd"},
    "kd": {"distiller": "kd", "method": "sgd", "gsnr": True},
    "kd_dot": {"distiller": "kd", "method": "dot", "gsnr": True},
    "kd_deepkd": {"distiller": "kd", "method": "deepkd", "delta_ncg": 0.075, "gsnr": True},
    "dkd": {"distiller": "dkd", "method": "sgd", "gsnr": True},
    "dkd_deepkd": {"distiller": "dkd", "method": "deepkd", "gsnr": True},
    "dkd_deepkd_dtm": {"distiller": "dkd", "method": "deepkd", "mask": True},
}
ARM_LABEL = {
    "ce": "CE only", "kd": "KD (one SGD buffer)", "kd_dot": "KD + DOT", "kd_deepkd": "KD + DeepKD",
    "dkd": "DKD (one SGD buffer)", "dkd_deepkd": "DKD + DeepKD", "dkd_deepkd_dtm": "DKD + DeepKD + dynamic top-k mask",
}


class CachedTeacherSet(Dataset):
    """MNIST-100 pairs as ``(image [1,28,56] in [0,1], label[, teacher logits])``; a slice gives a batch."""

    def __init__(self, images: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        self.images, self.labels, self.logits = images, labels, logits

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | slice) -> tuple[Tensor, ...]:
        images = self.images[index]
        images = (images.unsqueeze(1) if isinstance(index, slice) else images.unsqueeze(0)).float().div_(255.0)
        if self.logits is None:
            return images, self.labels[index]
        return images, self.labels[index], self.logits[index]


def schedule(epochs: int) -> tuple[float, list[int]]:
    """KD warm-up and LR decay epochs of the CIFAR recipe (20 / 150, 180, 210 of 240) scaled to ``epochs``."""
    return max(epochs / 12, 1.0), [round(epochs * f) for f in (150 / 240, 180 / 240, 210 / 240)]


def student_config(plan: Any, arm: str, seed: int, teacher_ckpt: str) -> TrainConfig:
    spec = ARMS[arm]
    warmup, decay = schedule(plan.epochs)
    cfg = TrainConfig(student=plan.student_arch, teacher=plan.teacher_arch, teacher_ckpt=teacher_ckpt, seed=seed)
    cfg.data.dataset, cfg.data.batch_size, cfg.data.test_batch_size, cfg.data.workers = "mnist100", plan.batch, 1000, 0
    cfg.distiller.name = spec["distiller"]
    if spec["distiller"] == "none":
        cfg.teacher = cfg.teacher_ckpt = None
    if spec["distiller"] == "kd":
        for key, value in KD_LOSS.items():
            setattr(cfg.distiller, key, value)
    if spec["distiller"] == "dkd":
        cfg.distiller.warmup = warmup
    s = cfg.solver
    s.method, s.epochs, s.lr, s.decay_epochs = spec["method"], plan.epochs, plan.lr, decay
    s.delta_ncg = spec.get("delta_ncg", s.delta_ncg)
    s.grad_method = "backward"  # the faster gradient method on CPU for this model
    if spec.get("mask"):
        cfg.mask.mode, cfg.mask.k0, cfg.mask.start_epoch, cfg.mask.end_epoch = "dynamic", 10, 0, 0.6 * plan.epochs
    return cfg


# ---- teacher and cached data ------------------------------------------------------------------------------
def prepare_data(plan: Any, runs: Path) -> dict[str, Any]:
    """Train (or resume) the teacher and cache its logits on the student's pairs; returns paths and accuracy."""
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
    images, labels = mnist100("train", size=plan.teacher_train, seed=0)
    images, labels = images[:plan.student_train], labels[:plan.student_train]
    test_images, test_labels = mnist100("test", size=plan.test_size, seed=0)
    teacher = load_teacher(teacher_ckpt, plan.teacher_arch, 100, "mnist").eval()
    with torch.no_grad():
        logits = torch.cat([teacher(images[i:i + 1000].unsqueeze(1).float() / 255)
                            for i in range(0, len(images), 1000)])
    data_path = runs / "data.pt"
    save_checkpoint(data_path, {"train_images": images, "train_labels": labels, "train_logits": logits,
                                "test_images": test_images, "test_labels": test_labels})
    return {"data": str(data_path), "teacher": teacher_ckpt, "teacher_top1": result["top1"],
            "teacher_train_top1": float((logits.argmax(1) == labels).float().mean() * 100),
            "teacher_params": sum(p.numel() for p in teacher.parameters())}


# ---- GSNR probe ---------------------------------------------------------------------------------------------
def probe_losses(base: str, logits: Tensor, teacher: Tensor, labels: Tensor, ramp: float) -> dict[str, Tensor]:
    """TOG / TCG / NCG terms of the base's loss, whose gradients the GSNR probe measures: DKD's (CE, r TCKD,
    8 r NCKD) or KD's exact split (0.5 CE, 0.5 TCKD, 0.5 (1 - p_t) NCKD, which sums to the KD loss per sample).
    Every run of a base is probed on this one loss, whatever its optimizer: KD + DeepKD trains on the released
    KD-style split (TCKD + NCKD without the 0.5), but its GSNR is that of the KD loss, as for KD and KD + DOT."""
    tckd, nckd = dkd_parts(logits, teacher, labels, KD_LOSS["temperature"])
    if base == "dkd":
        return {"tog": F.cross_entropy(logits, labels), "tcg": ramp * tckd.mean(), "ncg": 8.0 * ramp * nckd.mean()}
    weight = KD_LOSS["kd_weight"]
    rest = 1.0 - teacher_target_prob(teacher, labels, KD_LOSS["temperature"])
    return {"tog": KD_LOSS["ce_weight"] * F.cross_entropy(logits, labels), "tcg": weight * tckd.mean(),
            "ncg": weight * (rest * nckd).mean()}


def gsnr_probe(plan: Any, probe_set: CachedTeacherSet, base: str, epochs: list[int] | None = None) -> Any:
    """GSNR of TOG / TCG / NCG (and their sum) of the ``base`` loss (:func:`probe_losses`) over ``gsnr_batches``
    fixed mini-batches, at the ends of ``epochs`` (default: the epochs ``plan.gsnr_fractions`` of training)."""
    batches = [probe_set[i * plan.batch:(i + 1) * plan.batch] for i in range(plan.gsnr_batches)]
    epochs = gsnr_epochs(plan) if epochs is None else epochs
    warmup, _ = schedule(plan.epochs)

    def probe(distiller: Any, finished: int) -> dict[str, float]:
        if finished not in epochs:
            return {}
        params = list(distiller.student.parameters())
        acc = GSNRAccumulator()
        ramp = warmup_factor(finished, warmup)
        for images, labels, teacher in batches:
            losses = probe_losses(base, distiller.student(images), teacher, labels, ramp)
            grads = component_grads(losses, params)
            grads["total"] = sum_grads(grads)
            acc.update(grads)
        return {f"gsnr_{k}": v for k, v in acc.summary().items()}

    return probe


def gsnr_epochs(plan: Any) -> list[int]:
    return sorted({max(1, round(plan.epochs * f)) for f in plan.gsnr_fractions})


def gsnr_window(plan: Any) -> list[int]:
    """The epochs mid-training +- ``plan.gsnr_window`` (mid: the middle of :func:`gsnr_epochs`). The GSNR of one
    iterate swings from epoch to epoch far more than between probe batches, so the confirmatory runs average
    the probes over this window."""
    epochs = gsnr_epochs(plan)
    mid = epochs[len(epochs) // 2]
    return list(range(max(1, mid - plan.gsnr_window), min(plan.epochs, mid + plan.gsnr_window) + 1))


# ---- one student run ----------------------------------------------------------------------------------------
def run_student(job: dict[str, Any]) -> dict[str, Any]:
    """One arm and seed (picklable: runs in a worker process too). Returns accuracies, curve, GSNR, times.
    ``job["gsnr_epochs"]``, if given, replaces the plan's GSNR epochs."""
    torch.set_num_threads(1)
    from deepkd.train import train

    plan = job["plan"]
    data = torch.load(job["data"], weights_only=True)
    train_set = CachedTeacherSet(data["train_images"], data["train_labels"], data["train_logits"])
    test_set = CachedTeacherSet(data["test_images"], data["test_labels"])
    cfg = student_config(plan, job["arm"], job["seed"], job["teacher"])
    spec = ARMS[job["arm"]]
    probe = gsnr_probe(plan, train_set, spec["distiller"], job.get("gsnr_epochs")) if spec.get("gsnr") else None
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train(cfg, job["out"], progress=False, datasets=(train_set, test_set), probe=probe)
    gsnr = {str(row["epoch"]): {k[len("eval_gsnr_"):]: v for k, v in row.items() if k.startswith("eval_gsnr_")}
            for row in result["history"] if any(k.startswith("eval_gsnr_") for k in row)}
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"arm": job["arm"], "seed": job["seed"], "top1": result["top1"], "best_top1": result["best_top1"],
            "curve": [row["eval_top1"] for row in result["history"]], "gsnr": gsnr,
            "flatness": student_flatness(plan, job), "seconds": seconds, "cpu_seconds": cpu_seconds}


# ---- flatness ---------------------------------------------------------------------------------------------
def filter_normalised_directions(model: torch.nn.Module, seed: int, count: int) -> list[list[Tensor]]:
    """``count`` random directions in weight space (Li et al., 2018): a Gaussian tensor per weight, each
    filter / output neuron (row) rescaled to the norm of that row of the weights; 1-d tensors (biases, BN)
    get zero. The raw Gaussians depend on ``seed`` only, so every arm of a seed is probed along the same
    draws (the rescaling follows each model's own weights)."""
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        direction = []
        for p in model.parameters():
            raw = torch.randn(p.shape, generator=generator)
            if p.dim() < 2:
                direction.append(torch.zeros_like(p))
                continue
            rows, weight = raw.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            scale = weight.norm(dim=1, keepdim=True) / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            direction.append((rows * scale).reshape(p.shape))
        directions.append(direction)
    return directions


@torch.no_grad()
def flatness(model: torch.nn.Module, images: Tensor, labels: Tensor, seed: int, radii: tuple[float, ...],
             directions: int) -> dict[str, float]:
    """Mean increase of the CE loss on ``(images, labels)`` when the weights move by ``+-r`` along each
    filter-normalised direction, per radius ``r`` (eval mode: BN uses its running statistics)."""
    model.eval()
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    loss0 = float(F.cross_entropy(model(images), labels))
    result = {"loss": loss0}
    draws = filter_normalised_directions(model, seed, directions)
    try:
        for radius in radii:
            rises = []
            for direction in draws:
                for sign in (1.0, -1.0):
                    for p, p0, d in zip(params, base, direction):
                        p.copy_(p0).add_(d, alpha=sign * radius)
                    rises.append(float(F.cross_entropy(model(images), labels)) - loss0)
            result[f"rise_{radius:g}"] = sum(rises) / len(rises)
    finally:
        for p, p0 in zip(params, base):
            p.copy_(p0)
    return result


def student_flatness(plan: Any, job: dict[str, Any]) -> dict[str, float]:
    """:func:`flatness` of one trained student (``<out>/student.pt``, the last epoch) on the first
    ``plan.flat_samples`` of its training pairs, along directions drawn from the job's seed."""
    from deepkd.models import build_model

    data = torch.load(job["data"], weights_only=True)
    images = data["train_images"][:plan.flat_samples].unsqueeze(1).float().div_(255.0)
    labels = data["train_labels"][:plan.flat_samples]
    model = build_model(plan.student_arch, 100, "mnist")
    state = torch.load(Path(job["out"]) / "student.pt", weights_only=True)
    model.load_state_dict(state["model"])
    return flatness(model, images, labels, 1000 + job["seed"], plan.flat_radii, plan.flat_directions)


# ---- step time ----------------------------------------------------------------------------------------------
def step_times(plan: Any) -> dict[str, list[float]]:
    """Seconds per block of ``plan.bench_block`` training steps of DKD (one SGD buffer) and DKD + DeepKD (three
    buffers, one reverse pass per component), interleaved round by round on the miniature's student, batch and
    cached teacher logits, so each round's pair sees the same machine state."""
    from effrepro.bench import paired_benchmark

    from deepkd.deepkd import build_optimizer
    from deepkd.distillers import build_distiller
    from deepkd.engine import DistillStep, StepCounter
    from deepkd.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        student = build_model(plan.student_arch, 100, "mnist")
        batch = (torch.rand(plan.batch, 1, 28, 56), torch.randint(0, 100, (plan.batch,)),
                 torch.randn(plan.batch, 100) * 3)
        fns = {}
        for name, method in (("dkd", "sgd"), ("dkd_deepkd", "deepkd")):
            cfg = TrainConfig(student=plan.student_arch, teacher=plan.teacher_arch)
            cfg.solver.method, cfg.solver.grad_method = method, "backward"
            distiller = build_distiller("dkd", copy.deepcopy(student), torch.nn.Identity(),
                                        decoupled=method == "deepkd", warmup=1).train()
            optimizer = build_optimizer(distiller.learnable_parameters(), cfg.solver)
            step = DistillStep(cfg, StepCounter(10**9), lambda epoch: 0)

            def block(s: Any = step, d: Any = distiller, o: Any = optimizer) -> None:
                for _ in range(plan.bench_block):
                    s(d, batch, o)

            fns[name] = block
        stats = paired_benchmark(fns, warmup=2, repeats=plan.bench_rounds)
        return {name: list(value.samples) for name, value in stats.items()}
    finally:
        torch.set_num_threads(threads)
