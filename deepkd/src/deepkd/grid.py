"""The paper's teacher -> student grid at full scale: pairs, bases, variants, and each arm's training config.

An arm is (dataset, pair, base, variant): base is the distillation loss (KD, DKD, MLKD, CRLD), variant how its
gradients reach the optimizer: ``base`` (one SGD buffer, the published method), ``deepkd`` (three buffers,
released momenta), ``dtm`` (DeepKD + the dynamic top-k mask) or ``dot`` (DOT's two buffers).

Configs: DKD uses each pair's released DeepKD config (``configs/<dataset>/dkd/...``: per-pair LR, beta, momenta,
epochs); KD, MLKD and CRLD use their shipped resnet32x4 -> resnet8x4 config (CIFAR-100) or the pair's ImageNet
config of that base, with the pair's models, and LR 0.01 for ShuffleNet / MobileNet students on CIFAR-100 (the
mdistiller recipe; the released per-pair configs of these bases are not all runnable). The base and its +DeepKD
arms share every loss weight, so a gain is the optimizer's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from effrepro.config import find_config
from effrepro.errors import UsageError

BASES = ("kd", "dkd", "mlkd", "crld")
VARIANTS = ("base", "deepkd", "dtm", "dot")
DEFAULT_VARIANTS = ("base", "deepkd", "dtm")
VARIANT_OVERRIDES = {
    "base": {"solver": {"method": "sgd"}},
    "deepkd": {"solver": {"method": "deepkd"}},
    "dtm": {"solver": {"method": "deepkd"}, "mask": {"mode": "dynamic"}},
    "dot": {"solver": {"method": "dot"}},
}
VARIANT_LABEL = {"base": "", "deepkd": " + DeepKD", "dtm": " + DeepKD + DTM", "dot": " + DOT"}
LIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # CIFAR LR 0.01 (mdistiller)


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair and the published top-1 (%) of the baselines on it (None: not published / not
    retrievable here)."""

    teacher: str
    student: str
    dkd_config: str
    paper: dict[str, float | None]


def _cifar(teacher: str, student: str, kd: float, dkd: float, mlkd: float, dot: float | None = None) -> Pair:
    return Pair(teacher, student, f"cifar100/dkd/{teacher}_{student}.yaml",
                {"kd": kd, "dkd": dkd, "mlkd": mlkd, "crld": None, "kd_dot": dot})


# KD / DKD / MLKD: the anchor repositories' numbers (logit-standardization-KD README, DKD and MLKD papers), which
# the DeepKD tables reuse; DOT (KD base): mdistiller. CRLD and every +DeepKD number: not retrievable here.
PAIRS: dict[str, dict[str, Pair]] = {
    "cifar100": {
        "resnet32x4_resnet8x4": _cifar("resnet32x4", "resnet8x4", 73.33, 76.32, 77.08, 75.12),
        "vgg13_vgg8": _cifar("vgg13", "vgg8", 72.98, 74.68, 75.18, 73.77),
        "wrn_40_2_wrn_40_1": _cifar("wrn_40_2", "wrn_40_1", 73.54, 74.81, 75.35),
        "wrn_40_2_wrn_16_2": _cifar("wrn_40_2", "wrn_16_2", 74.92, 76.24, 76.63),
        "resnet56_resnet20": _cifar("resnet56", "resnet20", 70.66, 71.97, 72.19),
        "resnet110_resnet32": _cifar("resnet110", "resnet32", 73.08, 74.11, 74.11),
        "resnet110_resnet20": _cifar("resnet110", "resnet20", 70.67, 71.06, 71.89),
        "resnet32x4_ShuffleV2": _cifar("resnet32x4", "ShuffleV2", 74.45, 77.07, 78.44, 75.55),
        "resnet32x4_wrn_16_2": _cifar("resnet32x4", "wrn_16_2", 74.90, 75.70, 76.52),
        "resnet32x4_wrn_40_2": _cifar("resnet32x4", "wrn_40_2", 77.70, 78.46, 79.26),
        "wrn_40_2_resnet8x4": _cifar("wrn_40_2", "resnet8x4", 73.97, 75.56, 77.33),
        "wrn_40_2_MobileNetV2": _cifar("wrn_40_2", "MobileNetV2", 68.36, 69.28, 70.78),
        "vgg13_MobileNetV2": _cifar("vgg13", "MobileNetV2", 67.37, 69.71, 70.57),
        "ResNet50_MobileNetV2": _cifar("ResNet50", "MobileNetV2", 67.35, 70.35, 71.04),
        "resnet32x4_ShuffleV1": _cifar("resnet32x4", "ShuffleV1", 74.07, 76.45, 77.18),
        "wrn_40_2_ShuffleV1": _cifar("wrn_40_2", "ShuffleV1", 74.83, 76.70, 77.44),
    },
    "imagenet": {
        "r34_r18": Pair("ResNet34", "ResNet18", "imagenet/r34_r18/deepkd_dkd.yaml",
                        {"kd": 71.03, "dkd": 71.70, "mlkd": 71.90, "crld": None, "kd_dot": 71.72}),
        "r50_mv1": Pair("ResNet50", "MobileNetV1", "imagenet/r50_mv1/deepkd_dkd.yaml",
                        {"kd": 70.50, "dkd": 72.05, "mlkd": 73.01, "crld": None, "kd_dot": 73.09}),
    },
}
# published teacher top-1 (%): CRD / mdistiller CIFAR teachers, torchvision V1 ImageNet weights
PAPER_TEACHER = {"cifar100": {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "ResNet50": 79.34,
                              "wrn_40_2": 75.61, "vgg13": 74.64},
                 "imagenet": {"ResNet34": 73.31, "ResNet50": 76.13}}
TORCHVISION_FILES = {"ResNet34": "resnet34-333f7ec4.pth", "ResNet50": "resnet50-19c8e357.pth"}
TEACHER_CONFIG = {"cifar100": "cifar100/teacher.yaml", "imagenet": None}  # ImageNet: the pair's recipe, CE only


def pairs_of(dataset: str, names: tuple[str, ...] = ()) -> dict[str, Pair]:
    """The pairs of ``dataset`` (all when ``names`` is empty); unknown names list the valid ones."""
    if dataset not in PAIRS:
        raise UsageError(f"dataset={dataset!r}: the full-scale grid runs one of {', '.join(PAIRS)}")
    table = PAIRS[dataset]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UsageError(f"unknown {dataset} pair(s) {unknown}; choose from: {', '.join(table)}")
    return {n: table[n] for n in (names or tuple(table))}


def check_choices(bases: tuple[str, ...], variants: tuple[str, ...]) -> None:
    for kind, given, valid in (("base", bases, BASES), ("variant", variants, VARIANTS)):
        bad = [g for g in given if g not in valid]
        if bad or not given:
            raise UsageError(f"{kind}s {list(given)}: choose one or more of {', '.join(valid)}")


def _read(name: str) -> dict[str, Any]:
    return yaml.safe_load(find_config(name, "deepkd").read_text()) or {}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def base_config(dataset: str, pair: Pair, base: str) -> dict[str, Any]:
    """The training config (a dict) of ``base`` on ``pair``, before the variant and the user's overrides."""
    if base == "dkd":
        data = _read(pair.dkd_config)
    elif dataset == "cifar100":
        data = _read(f"cifar100/{base}/resnet32x4_resnet8x4.yaml")
        if base == "kd" and (pair.teacher, pair.student) != ("resnet32x4", "resnet8x4"):
            # released DeepKD KD configs set CE 0.5 only for this pair (default 0.1); KD 0.9 is mdistiller's
            data = _merge(data, {"distiller": {"ce_weight": 0.1, "kd_weight": 0.9}})
        if pair.student in LIGHT_STUDENTS:
            data = _merge(data, {"solver": {"lr": 0.01}})
    else:
        data = _read(str(Path(pair.dkd_config).parent / f"deepkd_{base}.yaml"))
    data = _merge(data, {"student": pair.student, "teacher": pair.teacher})
    data.pop("teacher_ckpt", None)  # set by the driver (found or trained)
    return data


def arm_config(dataset: str, pair: Pair, base: str, variant: str) -> dict[str, Any]:
    """``base_config`` with the variant's optimizer (and mask) settings."""
    return _merge(base_config(dataset, pair, base), VARIANT_OVERRIDES[variant])


def arm_label(base: str, variant: str) -> str:
    return base.upper() + VARIANT_LABEL[variant]


def paper_top1(pair: Pair, base: str, variant: str) -> float | None:
    """The published number of an arm, where one is known here (the bases, and DOT on KD)."""
    if variant == "base":
        return pair.paper.get(base)
    if variant == "dot":
        return pair.paper.get(f"{base}_dot")
    return None
