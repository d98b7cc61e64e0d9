"""``python -m effrepro.kernels.gpu_check`` (``make gpu-check``): the one-GPU check, about 8 minutes.

Runs, each step in its own process with its own time limit, logging to ``<out>/<step>.log``:

1. the kernel tests on CUDA (``pytest -m gpu`` over the kernel test files);
2. ``effrepro.kernels.bench --device cuda``: Triton low-bit matmul vs fp16 dense at w8/w4/w2,
   ``torch._int_mm`` vs fp16, the Triton multi-momentum step vs the reference;
3. ``double_rounding.bench_integer --device cuda``: ResNet-18 from the int8 file, integer vs FP32 / de-quantised;
4. ``partialnet bench --variants t2 --device cuda``: PartialNet-T2 vs FasterNet-T2 throughput (paper: +25 %);
5. ``kerneldna bench --device cuda``: folded KernelDNA vs static ResNet-18 throughput (paper: >= 0.9);
6. speculative decoding tokens/s vs plain on SmolLM2, when ``EFFREPRO_SPECDEC_HEAD`` names a cached
   ``head.pt`` (skipped otherwise; the head is not built here).

``<out>/summary.json`` records each step's command, status (ok / failed / timeout / skipped), wall time and
result files; ``<out>/env.json`` the GPU and versions. Nothing needs a dataset. Without CUDA it prints one
``error:`` line and exits 2 before running anything (``--dry-run`` lists the steps anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

BUDGET_S = 480


def steps(out: Path) -> list[dict[str, Any]]:
    py = sys.executable
    head = os.environ.get("EFFREPRO_SPECDEC_HEAD", "")
    tests = ["shared/tests/test_kernels_triton.py", "shared/tests/test_kernels.py",
             "double_rounding/tests/test_double_rounding_integer.py"]
    return [
        {"name": "kernel_tests", "timeout": 150,
         "cmd": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or not slow", *tests]},
        {"name": "kernels_bench", "timeout": 90, "files": ["kernels_bench.json"],
         "cmd": [py, "-m", "effrepro.kernels.bench", "--device", "cuda", "--repeats", "21",
                 "--json", str(out / "kernels_bench.json")]},
        {"name": "integer_resnet18", "timeout": 90, "files": ["integer_resnet18.json"],
         "cmd": [py, "-m", "double_rounding.bench_integer", "--device", "cuda", "--batch", "64", "--repeats", "21",
                 "--json", str(out / "integer_resnet18.json")]},
        {"name": "partialnet_t2", "timeout": 60, "files": ["partialnet_t2.json"],
         "cmd": [py, "-m", "partialnet.cli", "bench", "--variants", "t2", "--device", "cuda",
                 "--json", str(out / "partialnet_t2.json")]},
        {"name": "kerneldna_folded", "timeout": 60, "files": ["kerneldna"],
         "cmd": [py, "-m", "kerneldna.cli", "bench", "--arch", "resnet18", "--batch-sizes", "1,64",
                 "--device", "cuda", "--out", str(out / "kerneldna")]},
        {"name": "specdec_smollm2", "timeout": 60, "skip": None if head else "EFFREPRO_SPECDEC_HEAD is not set",
         "files": ["specdec"],
         "cmd": [py, "-m", "effrepro.specdec", "eval", "--head", head or "<EFFREPRO_SPECDEC_HEAD>", "--device",
                 "cuda", "--questions", "mtbench-heldout", "--max-questions", "4", "--max-new-tokens", "64",
                 "--warmup", "1", "--out", str(out / "specdec")]},
    ]


def run_step(step: dict[str, Any], out: Path, remaining: float) -> dict[str, Any]:
    record = {"name": step["name"], "cmd": " ".join(step["cmd"]), "files": step.get("files", [])}
    if step.get("skip"):
        return {**record, "status": "skipped", "reason": step["skip"], "wall_s": 0.0}
    limit = min(step["timeout"], remaining)
    if limit < 10:
        return {**record, "status": "skipped", "reason": "the 8-minute budget is spent", "wall_s": 0.0}
    start = time.perf_counter()
    with open(out / f"{step['name']}.log", "w") as log:
        try:
            done = subprocess.run(step["cmd"], stdout=log, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, "TRITON_INTERPRET": "0"})
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({limit:.0f} s)"
    return {**record, "status": status, "wall_s": round(time.perf_counter() - start, 1)}


def environment() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": _version("triton"), "python": sys.version.split()[0]}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrepro.kernels.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/reference/gpu")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    plan = steps(out)
    if args.dry_run:
        for step in plan:
            note = f"  [skipped: {step['skip']}]" if step.get("skip") else ""
            print(f"{step['name']} ({step['timeout']} s): {' '.join(step['cmd'])}{note}")
        return 0
    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was run",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(environment(), indent=1))
    start = time.perf_counter()
    records = []
    for step in plan:
        record = run_step(step, out, BUDGET_S - (time.perf_counter() - start))
        records.append(record)
        print(f"{record['name']}: {record['status']} ({record['wall_s']} s)", flush=True)
    (out / "summary.json").write_text(json.dumps({"steps": records,
                                                  "wall_s": round(time.perf_counter() - start, 1)}, indent=1))
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
