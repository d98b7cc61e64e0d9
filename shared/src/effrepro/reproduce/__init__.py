"""The reproduce skeleton (see :mod:`effrepro.reproduce.skeleton`) and the committed reference results
(:mod:`effrepro.reproduce.summary`); ``python -m effrepro.reproduce`` is the dispatcher behind ``make``."""

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
           "default_threads",
           "run_jobs", "run_stages"]
