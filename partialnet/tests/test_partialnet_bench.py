"""The benchmark: paired ratios and their spread, CPU latency and (with CUDA) GPU throughput."""

import pytest
from effrepro.bench import TimingStats
from partialnet.bench import benchmark, format_bench, paired_ratio_spread


def test_paired_ratio_spread_uses_same_round_pairs():
    stats = {"a": TimingStats((2.0, 4.0, 2.0, 2.0)), "b": TimingStats((1.0, 4.0, 2.0, 4.0))}
    spread = paired_ratio_spread(stats, "a", "b")
    assert spread["ratio_of_medians"] == pytest.approx(2.0 / 3.0)
    assert (spread["paired_min"], spread["paired_max"], spread["paired_median"]) == (0.5, 2.0, 1.0)


def test_cpu_latency_benchmark_small():
    result = benchmark(["t0"], device="cpu", threads=1, repeats=2, warmup=1, image_size=64)
    row = result["rows"][0]
    assert result["batch"] == 1 and row["latency_ratio"] > 0 and row["paired_min"] <= row["paired_max"]
    assert "CPU latency" in format_bench(result) and "| T0 |" in format_bench(result)


@pytest.mark.gpu
def test_gpu_throughput_benchmark():
    result = benchmark(["t0"], device="cuda", repeats=3, warmup=2, batch=64, half=True)
    assert result["device"] != "cpu" and result["rows"][0]["throughput_ratio"] > 0
    assert "GPU throughput" in format_bench(result)
