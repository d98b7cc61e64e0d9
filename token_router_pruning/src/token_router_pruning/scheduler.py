"""The search-based sparsity scheduler (FTP §3.2): a genetic algorithm over per-block sparsities.

Known from the paper: a GA searches ``s in [0, 1)^N`` under a global budget with the static router in the
loop (stage 1) and is fine-tuned with the trained router (stage 3). Everything else is a
[RECONSTRUCTION] (the paper names the GA, not its operators or hyper-parameters), kept as named options of
:class:`GAConfig`:

* genome ``s_i in [0, s_max]``; budget ``mean(s) = S*`` (``budget="token"``, paper default) or analytic
  block FLOPs ``= (1 - S*)`` x dense (``budget="flops"``);
* repair after every operator: ``s <- clip(c * s, 0, s_max)`` with the scale ``c`` found by bisection so
  the budget holds to 1e-9 (the limit of "iterated rescale and clip");
* init: the uniform vector, a U-shaped prior (first/last ``u_edge`` blocks dense) and Dirichlet vectors;
* tournament selection (3), elitism (2), per-gene BLX-alpha (0.3) or uniform crossover (p = 0.8),
  Gaussian mutation (sigma 0.05, per-gene probability 1/N).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from effrepro.errors import UsageError

from token_router_pruning.flops import ModelDims, block_flops

CROSSOVERS = ("blx", "uniform")
BUDGETS = ("token", "flops")


@dataclass
class GAConfig:
    population: int = 32
    generations: int = 30
    tournament: int = 3
    elitism: int = 2
    crossover: str = "blx"
    crossover_prob: float = 0.8
    blx_alpha: float = 0.3
    mutation_sigma: float = 0.05
    mutation_prob: float | None = None  # default 1 / N
    s_max: float = 0.95
    u_edge: int = 2
    budget: str = "token"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crossover not in CROSSOVERS:
            raise UsageError(f"GA crossover {self.crossover!r} unknown; use one of {', '.join(CROSSOVERS)}")
        if self.budget not in BUDGETS:
            raise UsageError(f"GA budget {self.budget!r} unknown; use one of {', '.join(BUDGETS)}")
        if self.population < 2 or self.generations < 0 or not 0 <= self.elitism < self.population:
            raise UsageError("GA needs population >= 2, generations >= 0 and 0 <= elitism < population")
        if not 0.0 < self.s_max < 1.0:
            raise UsageError(f"GA s_max {self.s_max} is outside (0, 1)")


class Budget:
    """The global constraint ``measure(s) == target`` (monotone in a common scale of ``s``)."""

    def __init__(self, target: float, kind: str = "token", dims: ModelDims | None = None,
                 seq_len: int = 128, s_max: float = 0.95) -> None:
        if not (0.0 <= target < 1.0) or math.isnan(target):
            raise UsageError(f"target sparsity {target!r} is outside [0, 1)")
        if target > s_max:
            raise UsageError(f"target sparsity {target} cannot be met with per-block sparsity at most s_max={s_max}; "
                             "lower the target or raise s_max")
        if kind == "flops" and dims is None:
            raise UsageError("a FLOPs budget needs the model dimensions")
        self.target, self.kind, self.dims, self.seq_len, self.s_max = float(target), kind, dims, seq_len, s_max

    def measure(self, s: np.ndarray) -> float:
        """Token budget: mean sparsity. FLOPs budget: 1 - block FLOPs / dense block FLOPs (continuous k)."""
        if self.kind == "token":
            return float(np.mean(s))
        dense = block_flops(self.dims, self.seq_len)
        kept = [(1.0 - float(v)) * self.seq_len for v in s]
        return 1.0 - sum(block_flops(self.dims, k) for k in kept) / (len(s) * dense)

    def repair(self, s: np.ndarray) -> np.ndarray:
        """Scale and clip so that the budget holds: exact for the token budget, bisection for FLOPs."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.s_max)
        if self.target == 0.0:
            return np.zeros_like(s)
        if self.measure(np.where(s > 0, self.s_max, 0.0)) < self.target:
            s = 0.5 * s + 0.5 * self.target  # too few non-zero genes to carry the budget: mix with uniform
        if self.kind == "token":
            return self._repair_token(s)
        lo, hi = 0.0, 1.0
        while self.measure(np.clip(hi * s, 0.0, self.s_max)) < self.target:
            hi *= 2.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.measure(np.clip(mid * s, 0.0, self.s_max)) < self.target:
                lo = mid
            else:
                hi = mid
        return np.clip(hi * s, 0.0, self.s_max)

    def _repair_token(self, s: np.ndarray) -> np.ndarray:
        """The scale ``c`` with ``mean(min(c s, s_max)) = S*``: saturate the j largest genes, scale the rest."""
        order = np.sort(s)[::-1]
        need = self.target * len(s)
        rest = np.cumsum(order[::-1])[::-1]  # rest[j] = sum of order[j:]
        for j in range(len(s)):
            scale = (need - j * self.s_max) / rest[j]
            if order[j] * scale <= self.s_max + 1e-12 and (j == 0 or order[j - 1] * scale >= self.s_max - 1e-12):
                return np.minimum(s * scale, self.s_max)
        raise UsageError(f"the sparsity budget {self.target} cannot be met by this genome")


def uniform_allocation(n_blocks: int, target: float) -> np.ndarray:
    return np.full(n_blocks, float(target))


def u_shaped_allocation(n_blocks: int, target: float, edge: int = 2, s_max: float = 0.95) -> np.ndarray:
    """Dense first and last ``edge`` blocks, uniform in the middle (then repaired to the budget)."""
    s = np.ones(n_blocks)
    s[:edge] = 0.0
    if edge:
        s[-edge:] = 0.0
    return Budget(target, s_max=s_max).repair(s)


def bi_proportional_allocation(block_influence: Sequence[float], target: float, s_max: float = 0.95) -> np.ndarray:
    """Sparsity proportional to redundancy ``1 - BI_i / max BI`` (ShortGPT's block influence), repaired."""
    bi = np.asarray(block_influence, dtype=np.float64)
    redundancy = 1.0 - bi / max(float(bi.max()), 1e-12)
    return Budget(target, s_max=s_max).repair(redundancy + 1e-6)


@dataclass
class GAResult:
    best: np.ndarray
    best_fitness: float
    evaluations: int
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"best": [float(v) for v in self.best], "best_fitness": self.best_fitness,
                "evaluations": self.evaluations, "history": self.history}


class GeneticScheduler:
    """Maximise ``fitness(s)`` over per-block sparsities under a :class:`Budget`."""

    def __init__(self, n_blocks: int, budget: Budget, config: GAConfig) -> None:
        self.n, self.budget, self.cfg = n_blocks, budget, config
        self.rng = np.random.default_rng(config.seed)
        self.mutation_prob = config.mutation_prob if config.mutation_prob is not None else 1.0 / n_blocks
        self._cache: dict[bytes, float] = {}
        self.evaluations = 0

    # ---- operators ---------------------------------------------------------------------------------
    def initial_population(self, seeds: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        target = self.budget.target
        pop = [self.budget.repair(np.asarray(s, dtype=np.float64)) for s in seeds]
        if not seeds:
            pop.append(self.budget.repair(uniform_allocation(self.n, target)))
            pop.append(self.budget.repair(u_shaped_allocation(self.n, target, self.cfg.u_edge, self.cfg.s_max)))
        while len(pop) < self.cfg.population:
            if seeds:  # stage-3 fine-tuning: mutants of the seeds
                parent = pop[len(pop) % len(seeds)]
                pop.append(self.mutate(parent, force=True))
            else:
                pop.append(self.budget.repair(self.rng.dirichlet(np.ones(self.n)) * self.n * target))
        return pop[: self.cfg.population]

    def tournament(self, pop: list[np.ndarray], fitness: list[float]) -> np.ndarray:
        picks = self.rng.choice(len(pop), size=min(self.cfg.tournament, len(pop)), replace=False)
        return pop[max(picks, key=lambda i: fitness[i])]

    def crossover(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.rng.random() >= self.cfg.crossover_prob:
            return a.copy()
        if self.cfg.crossover == "uniform":
            return np.where(self.rng.random(self.n) < 0.5, a, b)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        span = hi - lo
        return self.rng.uniform(lo - self.cfg.blx_alpha * span, hi + self.cfg.blx_alpha * span)

    def mutate(self, s: np.ndarray, force: bool = False) -> np.ndarray:
        mask = self.rng.random(self.n) < self.mutation_prob
        if force and not mask.any():
            mask[self.rng.integers(self.n)] = True
        noise = self.rng.normal(0.0, self.cfg.mutation_sigma, self.n) * mask
        return self.budget.repair(s + noise)

    # ---- search ------------------------------------------------------------------------------------
    def _evaluate(self, fitness: Callable[[np.ndarray], float], s: np.ndarray) -> float:
        key = np.round(s, 6).tobytes()
        if key not in self._cache:
            self._cache[key] = float(fitness(s))
            self.evaluations += 1
        return self._cache[key]

    def run(
        self,
        fitness: Callable[[np.ndarray], float],
        seeds: Sequence[np.ndarray] = (),
        log: Callable[[dict], None] | None = None,
    ) -> GAResult:
        pop = self.initial_population(seeds)
        scores = [self._evaluate(fitness, s) for s in pop]
        history = [self._summary(0, scores)]
        if log:
            log(history[-1])
        for generation in range(1, self.cfg.generations + 1):
            order = np.argsort(scores)[::-1]
            children = [pop[i] for i in order[: self.cfg.elitism]]
            while len(children) < self.cfg.population:
                child = self.crossover(self.tournament(pop, scores), self.tournament(pop, scores))
                children.append(self.mutate(self.budget.repair(child)))
            pop = children
            scores = [self._evaluate(fitness, s) for s in pop]
            history.append(self._summary(generation, scores))
            if log:
                log(history[-1])
        best = int(np.argmax(scores))
        return GAResult(best=pop[best], best_fitness=scores[best], evaluations=self.evaluations, history=history)

    def _summary(self, generation: int, scores: list[float]) -> dict:
        return {"generation": generation, "best": float(max(scores)), "mean": float(np.mean(scores)),
                "evaluations": self.evaluations}


def genetic_search(
    fitness: Callable[[np.ndarray], float],
    n_blocks: int,
    target: float,
    config: GAConfig,
    seeds: Sequence[np.ndarray] = (),
    dims: ModelDims | None = None,
    seq_len: int = 128,
    log: Callable[[dict], None] | None = None,
) -> GAResult:
    """Run the GA; raises ``UsageError`` when the budget cannot be met."""
    budget = Budget(target, config.budget, dims, seq_len, config.s_max)
    return GeneticScheduler(n_blocks, budget, config).run(fitness, seeds, log)
