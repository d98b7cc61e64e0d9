"""Generic training infrastructure shared by the paper projects (no paper-specific logic)."""

from effrepro.train.checkpoint import (
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from effrepro.train.distributed import (
    DistInfo,
    all_reduce_mean,
    dist_setup,
    is_main_process,
    require_single_process,
    run_torchrun,
)
from effrepro.train.metrics import MetricsLogger
from effrepro.train.trainer import Trainer

__all__ = [
    "DistInfo", "MetricsLogger", "Trainer", "all_reduce_mean", "dist_setup", "is_main_process",
    "load_checkpoint", "load_state_dict_checked", "require_single_process", "rng_state", "run_torchrun",
    "save_checkpoint", "seed_everything", "set_rng_state",
]
