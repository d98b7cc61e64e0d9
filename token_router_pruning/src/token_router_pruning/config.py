"""Experiment configuration (YAML in ``configs/``; ``key=value`` overrides with dotted keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from effrepro.config import package_configs
from effrepro.errors import UsageError

from token_router_pruning.ftp import SCOPES
from token_router_pruning.scheduler import GAConfig
from token_router_pruning.train import RouterTrainConfig

CONFIG_DIR = package_configs("token_router_pruning")  # configs/ shipped in the package (smoke.yaml, full.yaml)


@dataclass
class DataConfig:
    calib_per_family: int = 8  # GA-fitness items per family (calibration split)
    test_per_family: int = 16  # reported items per family (test split), via lm-eval
    text_len: int = 128  # tokens per text window (router training, redundancy, perplexity)
    redundancy_windows: int = 16
    ppl_windows: int = 4
    train_windows: int = 200  # corpus windows of router_text_len tokens in the router's training set
    router_text_len: int = 128
    router_prompts: int = 0  # generated train-split prompts per family in the router's training set
    router_heldout: int = 0  # further train-split prompts per family: the per-epoch held-out KL
    secondary_per_family: int | None = None  # test items per family for the non-headline arms (None: all)
    # test items per family for every arm at the budgets after the first (the first budget is the headline one)
    other_budget_per_family: int | None = None
    blockpruner_windows: int = 2
    blockpruner_len: int = 96
    fitness_batch_size: int = 8
    calib_task: str = "winogrande"  # full scale: GA fitness on this task's train split (paper: WinoGrande)
    calib_limit: int = 256  # full scale: items of that split used for the fitness


@dataclass
class FinetuneConfig:
    """Stage 3: the GA again, seeded with the stage-1 best and its mutants, the trained router in the loop."""

    population: int = 8
    generations: int = 10


@dataclass
class BenchConfig:
    seq_len: int = 512
    batch_size: int = 1
    warmup: int = 1
    repeats: int = 5


@dataclass
class ReproduceConfig:
    target: str = "smollm2-135m"
    budgets: tuple[float, ...] = (0.25, 0.40)
    scope: str = "block"
    seed: int = 0
    ga: GAConfig = field(default_factory=GAConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    router: RouterTrainConfig = field(default_factory=RouterTrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    blockpruner_lazy_top: int | None = 6
    allocations: tuple[str, ...] = ("uniform", "bi")  # extra static-router allocations compared in E1
    # ablation arm: the trained router on the stage-1 (static-router) schedule, before the stage-3 fine-tune
    dynamic_stage1: bool = True
    latency_methods: tuple[str, ...] = ("ftp", "ftp_static", "shortgpt", "blockpruner")
    # ablation arm: a router distilled on every position instead of the scored ones, both on the stage-1 schedule
    distill_ablation: bool = False

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise UsageError(f"scope {self.scope!r} unknown; use one of {', '.join(SCOPES)}")
        if self.router.gate == "ste_all" and self.scope != "block":
            raise UsageError("router.gate=ste_all needs scope block (its dense pass replaces whole blocks)")
        if not self.budgets:
            raise UsageError("give at least one target sparsity in budgets")
        for budget in self.budgets:
            if not 0.0 < float(budget) < 1.0:
                raise UsageError(f"budget {budget} is outside (0, 1); give the target token sparsity, e.g. 0.25")
            if float(budget) > self.ga.s_max:
                raise UsageError(f"budget {budget} cannot be met with per-block sparsity at most "
                                 f"ga.s_max={self.ga.s_max}")
        unknown = sorted(set(self.allocations) - {"uniform", "bi"})
        if unknown:
            raise UsageError(f"allocations {unknown} unknown; use uniform and/or bi")


def window_needs(cfg: ReproduceConfig) -> list[tuple[str, int, int, str]]:
    """Every set of text windows a run cuts from the corpus: (split, tokens, count, the config key that asks)."""
    data, bench = cfg.data, cfg.bench
    return [("calib", data.text_len, data.redundancy_windows, "data.redundancy_windows"),
            ("calib", data.blockpruner_len, data.blockpruner_windows, "data.blockpruner_windows"),
            ("eval", data.text_len, data.ppl_windows, "data.ppl_windows"),
            ("eval", bench.seq_len, bench.batch_size, "bench.batch_size"),
            ("train", data.router_text_len, data.train_windows, "data.train_windows")]


def config_path(scale: str) -> Path:
    return CONFIG_DIR / f"{scale}.yaml"
