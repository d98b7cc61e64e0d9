"""Single process or ``torchrun`` DDP, decided from the environment torchrun sets."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from effrepro.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_setup(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise one process.

    The device is ``cuda:<local_rank>`` when CUDA is present, else CPU (NCCL on GPU, Gloo on CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(device) if device else torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, dev, distributed)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


# ---- drivers that launch torchrun jobs ---------------------------------------------------------------------------
def require_single_process(hint: str) -> None:
    """A driver that launches its own ``torchrun`` jobs (``reproduce --scale full``) must not itself run under
    torchrun: every rank would launch every job and write the same results. ``hint``: how to ask for processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"run the full driver as one process: it launches torchrun for each run itself ({hint})")


def run_torchrun(nproc: int, module: str, args: list[str], out: Path) -> None:
    """``python -m <module> <args>`` as a ``torchrun --standalone`` job of ``nproc`` processes on this machine
    (its output goes to this process's stdout / stderr); a failed job is an error naming ``out``, from which a rerun
    resumes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module,
           *args]
    code = subprocess.call(cmd)
    if code != 0:
        raise RuntimeError(f"torchrun for {out} exited with code {code} (its log is above); rerunning resumes "
                           f"from {out}")
