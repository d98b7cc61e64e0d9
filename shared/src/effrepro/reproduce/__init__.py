"""The reproduce skeleton (see :mod:`effrepro.reproduce.skeleton`) and the committed reference results
(:mod:`effrepro.reproduce.summary`); ``python -m effrepro.reproduce`` is the dispatcher behind ``make``."""

from effrepro.reproduce.seeds import require_new_seeds
from effrepro.reproduce.skeleton import (
    SCALES,
    ClaimSpec,
    Context,
    FactSpec,
    Plan,
    Reproduction,
    Results,
    apply_overrides,
    default_threads,
    run_stages,
)
from effrepro.reproduce.workers import run_jobs

__all__ = ["SCALES", "ClaimSpec", "Context", "FactSpec", "Plan", "Reproduction", "Results", "apply_overrides",
           "default_threads", "require_new_seeds", "run_jobs", "run_stages"]
