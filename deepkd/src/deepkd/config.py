"""Training configuration (YAML + ``key=value`` overrides via ``effrepro.config``).

One schema for every distiller / pair / dataset, replacing the released yacs tree (several of whose
files do not load). Defaults are the CIFAR-100 DKD+DeepKD recipe for resnet32x4 -> resnet8x4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from effrepro.errors import UsageError

METHODS = ("sgd", "dot", "deepkd")
LR_SCHEDULES = ("step", "cosine")
MASK_MODES = ("off", "static", "dynamic")
DEFAULT_CLASSES = {"cifar100": 100, "imagenet": 1000, "mnist100": 100}
DATA_ENV = {"cifar100": "CIFAR100_ROOT", "imagenet": "IMAGENET_ROOT"}


@dataclass
class DataConfig:
    dataset: str = "cifar100"          # cifar100 | imagenet | mnist100
    root: str | None = None            # data folder; else $CIFAR100_ROOT / $IMAGENET_ROOT
    batch_size: int = 64               # per process; DDP's global batch is batch_size x world size
    test_batch_size: int = 64
    workers: int = 2
    two_views: bool | None = None      # weak + strong view; None = on for MLKD / CRLD
    augment: bool = True               # the dataset's standard training augmentation
    image_size: int = 224              # imagenet only: crop side (evaluation: resize to 256/224 of it, centre crop)
    train_size: int | None = None      # mnist100 only: number of training pairs (None = 50k)
    test_size: int | None = None       # mnist100 only: number of test pairs (None = 10k)


@dataclass
class DistillerConfig:
    """Loss options; ``None`` keeps the distiller's default (KD: CE 0.1 / KD 0.9, DKD: CE 1, alpha 1, beta 8)."""

    name: str = "dkd"                  # none | kd | dkd | mlkd | crld
    ce_weight: float | None = None
    kd_weight: float | None = None
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    warmup: float | None = None        # KD warm-up epochs (linear ramp r(e) = min(e / warmup, 1))
    plugin: str | None = None          # decoupled split for MLKD / CRLD: dkd (alpha, beta, warm-up) or kd
    wv_weight: float | None = None     # CRLD within-view weight
    cv_weight: float | None = None     # CRLD cross-view weight
    tau_w: float | None = None
    tau_s: float | None = None
    release_quirks: bool | None = None  # None: on in DeepKD "code" mode, off in "paper" mode

    def options(self) -> dict:
        skip = {"name"}
        return {k: v for k, v in self.__dict__.items() if k not in skip and v is not None}


@dataclass
class SolverConfig:
    method: str = "deepkd"             # sgd (one buffer) | dot (two) | deepkd (three)
    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9              # base momentum; DOT / DeepKD add their deltas to it
    weight_decay: float = 5e-4
    lr_schedule: str = "step"          # step: x decay_rate after each decay epoch; cosine: warm-up + cosine
    decay_epochs: list[int] = field(default_factory=lambda: [150, 180, 210])
    decay_rate: float = 0.1
    warmup_epochs: int = 20            # cosine only (released default)
    warmup_factor: float = 0.1         # cosine only: warm-up starts at warmup_factor x lr
    min_lr: float = 5e-5               # cosine only
    dot_delta: float = 0.075
    delta_tog: float = 0.075
    delta_tcg: float = -0.075
    delta_ncg: float = 0.05
    momentum_mode: str = "code"        # code (as released: TOG uses mu_TCG) | paper (TOG uses mu_TOG)
    weight_decay_on: str = "tcg"       # DeepKD buffer that carries the weight decay (released: tcg)
    grad_method: str = "backward"      # backward (one pass per component) | batched (one batched VJP)
    loss_weights: dict[str, float] | None = None  # optional multipliers per loss name (re-weighting control)


@dataclass
class MaskConfig:
    mode: str = "off"                  # off | static (k) | dynamic (k0 -> C between start and end epoch)
    k: int = 0
    k0: int | None = None              # default ceil(0.1 C)
    start_epoch: float | None = None   # default: end of the KD warm-up
    end_epoch: float | None = None     # default: first LR decay epoch (cosine: 60 % of training)
    curve: str = "linear"              # linear | cosine | step


@dataclass
class TrainConfig:
    student: str = "resnet8x4"
    teacher: str | None = "resnet32x4"
    teacher_ckpt: str | None = None
    num_classes: int | None = None     # default from the dataset
    seed: int = 42
    amp: bool = False                  # bf16 autocast on CUDA
    device: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    distiller: DistillerConfig = field(default_factory=DistillerConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)

    @property
    def classes(self) -> int:
        return self.num_classes or DEFAULT_CLASSES[self.data.dataset]


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject unknown choices with the list of valid ones (before anything heavy is built)."""
    choices = [
        ("data.dataset", cfg.data.dataset, tuple(DEFAULT_CLASSES)),
        ("solver.method", cfg.solver.method, METHODS),
        ("solver.lr_schedule", cfg.solver.lr_schedule, LR_SCHEDULES),
        ("solver.momentum_mode", cfg.solver.momentum_mode, ("code", "paper")),
        ("solver.grad_method", cfg.solver.grad_method, ("backward", "batched")),
        ("solver.weight_decay_on", cfg.solver.weight_decay_on, ("tog", "tcg", "ncg")),
        ("mask.mode", cfg.mask.mode, MASK_MODES),
    ]
    for key, value, valid in choices:
        if value not in valid:
            raise UsageError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    if cfg.solver.epochs < 1 or cfg.data.batch_size < 1 or cfg.data.image_size < 8:
        raise UsageError("solver.epochs and data.batch_size must be >= 1, data.image_size >= 8")
    if cfg.distiller.name.lower() != "none" and not cfg.teacher:
        raise UsageError(f"distiller {cfg.distiller.name!r} needs a teacher: set teacher=<model name>")
    if cfg.mask.mode != "off":
        from deepkd.deepkd import topk_schedule

        topk_schedule(cfg)  # the mask's K (and schedule) checked now, not at the first distillation step
    return cfg


def data_root(cfg: TrainConfig) -> str | None:
    """``data.root``, else the dataset's environment variable; ``None`` for the embedded MNIST-100."""
    if cfg.data.dataset == "mnist100":
        return None
    root = cfg.data.root or os.environ.get(DATA_ENV[cfg.data.dataset])
    if not root:
        raise UsageError(f"{cfg.data.dataset} needs a data path: pass --data /path (or data.root=..., or set "
                         f"${DATA_ENV[cfg.data.dataset]})")
    return root
