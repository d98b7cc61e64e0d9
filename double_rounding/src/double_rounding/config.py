"""The run configuration: one YAML file describes the whole pipeline (FP32 -> multi-precision -> SuperNet)."""

from __future__ import annotations

from dataclasses import dataclass, field

from effrepro.errors import UsageError
from effrepro.quant import TIE_MODES, WEIGHT_SCALE_MODES, check_bits

from double_rounding.double_rounding import ALRS_MODES, SAMPLERS
from double_rounding.models import ModelConfig
from double_rounding.search import OBJECTIVES, WEIGHTINGS

DATASETS = ("mnist", "mnist100", "imagenet", "cifar10")
UPDATE_MODES = ("per_precision", "accumulate")
KD_MODES = ("none", "from_highest", "recursive")


@dataclass
class DataConfig:
    dataset: str = "mnist"
    root: str | None = None  # ImageNet folder (train/, val/) or CIFAR-10's parent of cifar-10-batches-py/; env
    # DOUBLE_ROUNDING_DATA also works
    train_size: int | None = None  # MNIST / MNIST-100: first N training images (None: all)
    test_size: int | None = None
    batch_size: int = 128  # per process
    eval_batch_size: int = 500
    workers: int = 8  # ImageNet / CIFAR-10 loader workers


@dataclass
class QuantConfig:
    bits: list[int] = field(default_factory=lambda: [8, 6, 4, 2])
    tie_mode: str = "half_up"
    scale_init: str = "mse"  # mse | lsq (reconstruction: the paper does not state it)
    lsq_grad_scale: bool = False  # LSQ's g = 1/sqrt(N Qp) on the scale gradients (paper silent)
    calib_images: int = 256  # images used to initialise the activation scales
    weight_scales: str = "shared"  # shared (double rounding) | unshared (one weight step per bit: "Ours*")


@dataclass
class TrainConfig:
    epochs: int = 90
    lr: float = 5e-4
    weight_decay: float = 5e-5
    alrs: str = "simple"  # literal | simple | off (the printed equation reads two ways: see double_rounding.py)
    update_mode: str = "per_precision"  # per_precision (Alg. A.2) | accumulate (Alg. A.1, the ablation)
    kd: str = "none"  # none | from_highest | recursive (the paper does not specify its KD)
    train_bits: list[int] | None = None  # subset of quant.bits that is trained (None: all)
    log_every: int = 50


@dataclass
class MixedConfig:
    sampler: str = "hasb"  # hasb | uniform
    sigma0: float = 1.0
    sandwich: bool = True  # the highest and lowest bit-widths stay uniform every step ("{8, random, 2}")
    hessian_images: int = 1000
    hessian_probes: int = 100
    hessian_batch: int = 250
    objective: str = "hawq_perturbation"  # hawq_perturbation | paper_literal
    weighting: str = "layers"  # layers (paper) | params
    budgets: list[float] = field(default_factory=lambda: [2.5, 3.0, 3.5])
    enumerate: bool = True  # the paper's fix-one-layer re-solves for more Pareto points
    bn_recalib_batches: int = 0  # 0 = the paper (no fine-tuning, no re-calibration)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    fp32: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, alrs="off"))
    multi: TrainConfig = field(default_factory=TrainConfig)
    supernet: TrainConfig = field(default_factory=lambda: TrainConfig(alrs="off"))
    mixed: MixedConfig = field(default_factory=MixedConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise UsageError(f"{key}={value!r} is not supported; use one of: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    _choice(cfg.data.dataset, DATASETS, "data.dataset")
    _choice(cfg.quant.tie_mode, TIE_MODES, "quant.tie_mode")
    _choice(cfg.quant.scale_init, ("mse", "lsq"), "quant.scale_init")
    _choice(cfg.quant.weight_scales, WEIGHT_SCALE_MODES, "quant.weight_scales")
    if not cfg.quant.bits:
        raise UsageError("quant.bits is empty; give e.g. [8, 6, 4, 2]")
    for b in cfg.quant.bits:
        check_bits(b, what="quant.bits entry")
    for name in ("fp32", "multi", "supernet"):
        tc: TrainConfig = getattr(cfg, name)
        _choice(tc.alrs, ALRS_MODES, f"{name}.alrs")
        _choice(tc.update_mode, UPDATE_MODES, f"{name}.update_mode")
        _choice(tc.kd, KD_MODES, f"{name}.kd")
        if tc.epochs < 1 or tc.lr <= 0:
            raise UsageError(f"{name}.epochs must be >= 1 and {name}.lr > 0")
        for b in tc.train_bits or []:
            check_bits(b, cfg.quant.bits, what=f"{name}.train_bits entry")
    _choice(cfg.mixed.sampler, SAMPLERS, "mixed.sampler")
    _choice(cfg.mixed.objective, OBJECTIVES, "mixed.objective")
    _choice(cfg.mixed.weighting, WEIGHTINGS, "mixed.weighting")
    if not 0.0 <= cfg.mixed.sigma0 <= 1.0:
        raise UsageError(f"mixed.sigma0 must lie in [0, 1], got {cfg.mixed.sigma0}")
