"""Jobs of a reproduction (seeds, arms) in worker processes of one thread each: the papers' smoke plans train
many small independent models, and on a machine with several cores ``workers`` of them at a time take about
``1 / workers`` of the wall time. Results come back as each job finishes, so the caller can cache each at once
(:meth:`effrepro.reproduce.Context.cached_jobs` does, for a grid of named, keyed jobs) and an interrupted run loses
only the jobs still running."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

K = TypeVar("K")
T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_jobs(fn: Callable[..., T], jobs: Mapping[K, Sequence[Any]], workers: int = 1) -> Iterator[tuple[K, T, float]]:
    """``fn(*args)`` for every ``key: args`` of ``jobs``: in ``workers`` spawned processes of one thread each when
    ``workers > 1`` and there is more than one job, else here, in order. Yields ``(key, result, seconds)`` as each
    job finishes (``seconds``: its wall time where it ran). ``fn`` and its arguments must pickle (a module-level
    function). When a job raises, the jobs not yet started are cancelled and the error comes out as soon as
    the running ones end."""
    if workers > 1 and len(jobs) > 1:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_one_thread)
        try:
            futures = {pool.submit(_timed, fn, *args): key for key, args in jobs.items()}
            for future in as_completed(futures):
                result, seconds = future.result()
                yield futures[future], result, seconds
        finally:  # a failed job (or a caller that stops) cancels the jobs not yet started; running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for key, args in jobs.items():
            result, seconds = _timed(fn, *args)
            yield key, result, seconds
