import itertools

import pytest
import torch
from effrepro.bench import TimingStats, count_flops, count_params, paired_benchmark, ratio, speedup
from torch import nn


def test_interleaving_rotation_and_ratio_with_a_fake_clock():
    calls: list[str] = []
    ticks = itertools.count()
    cost = {"a": 2, "b": 1}
    now = [0.0]

    def clock():
        next(ticks)
        return now[0]

    def make(name):
        def fn():
            calls.append(name)
            now[0] += cost[name]
        return fn

    stats = paired_benchmark({"a": make("a"), "b": make("b")}, warmup=2, repeats=4, clock=clock)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up first, per callable
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotated every round
    assert stats["a"].median == 2 and stats["b"].median == 1 and len(stats["a"].samples) == 4
    assert ratio(stats, "a", "b") == 2 and speedup(stats, "b", "a") == 2


def test_timing_stats():
    s = TimingStats((3.0, 1.0, 2.0, 10.0))
    assert (s.median, s.min, s.max, s.mean) == (2.5, 1.0, 10.0, 4.0)
    assert s.as_dict()["repeats"] == 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        paired_benchmark({})
    with pytest.raises(ValueError):
        paired_benchmark({"a": lambda: None}, repeats=0)


def test_params_and_flops_known_values():
    lin = nn.Linear(10, 20)
    shared = nn.Sequential(lin, nn.ReLU(), lin.__class__(20, 10))
    assert count_params(nn.Sequential(lin, lin)) == 220  # shared weights counted once
    assert count_flops(shared, torch.randn(4, 10)) == 2 * 4 * (10 * 20 + 20 * 10)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 3, 16, 16)) == 2 * 8 * 3 * 9 * 16 * 16
