"""``token_router_pruning`` console script: ``reproduce``, ``train``, ``eval``, ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from effrepro.cliargs import add_set, overrides, reproduce_command
from effrepro.errors import UsageError, run_cli

from token_router_pruning.planfile import load_plan, save_plan


def _threads() -> None:
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _schedule_arg(args: argparse.Namespace, n_blocks: int) -> list[float]:
    if args.schedule:
        path = Path(args.schedule)
        if not path.is_file():
            raise UsageError(f"--schedule {path}: no such file (a JSON list of per-block sparsities)")
        try:
            values = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"--schedule {path} is not JSON: {exc}") from None
        if not isinstance(values, list) or len(values) != n_blocks:
            raise UsageError(f"--schedule {path} must be a JSON list of {n_blocks} numbers")
        return [float(v) for v in values]
    return [float(args.sparsity)] * n_blocks


def _build_plan(args: argparse.Namespace, model: Any) -> Any:
    from token_router_pruning.ftp import RandomRouter, SkipPlan, StaticRouter

    n = model.config.num_hidden_layers
    if args.plan:
        return load_plan(args.plan, n, next(model.parameters()).dtype)
    schedule = _schedule_arg(args, n)
    router = RandomRouter(args.seed) if args.router == "random" else StaticRouter()
    return SkipPlan(name=f"{args.router}", sparsity=tuple(schedule), router=router, scope=args.scope)


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="smollm2-135m", help="embedded model name or a local HF model directory")
    p.add_argument("--plan", help="plan file written by `train` or `reproduce` (runs/ftp_<budget>.pt)")
    p.add_argument("--sparsity", type=float, default=0.25, help="uniform per-block token sparsity in [0, 1)")
    p.add_argument("--schedule", help="JSON list of per-block sparsities (overrides --sparsity)")
    p.add_argument("--router", choices=("static", "random"), default="static")
    p.add_argument("--scope", choices=("block", "mlp_only"), default="block")
    p.add_argument("--seed", type=int, default=0)


# ---- sub-commands ----------------------------------------------------------------------------------
def cmd_reproduce(argv: list[str]) -> int:
    """The paper's experiments on the effrepro reproduce skeleton (its own arguments: ``reproduce --help``);
    ``--set`` takes plan fields and run-config keys alike (``--cfg`` is its deprecated spelling)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    return reproduce_command("token_router_pruning.reproduce", argv, "--cfg")


def cmd_train(args: argparse.Namespace) -> int:
    from effrepro.config import load_config
    from effrepro.data import load_target

    from token_router_pruning.eval import text_windows
    from token_router_pruning.ftp import attach
    from token_router_pruning.train import RouterTrainConfig, train_router

    cfg = load_config(args.config, RouterTrainConfig, overrides(args))
    model, tokenizer = load_target(args.target)
    skipper = attach(model)
    schedule = _schedule_arg(args, model.config.num_hidden_layers)
    windows = text_windows(tokenizer, args.seq_len, "train", args.windows)
    out = Path(args.out)
    if args.no_resume:  # the trainer resumes from this file; without it the run starts at step 0
        (out / "router" / "last.pt").unlink(missing_ok=True)
    router, summary = train_router(model, skipper, [schedule], windows, cfg, out_dir=out / "router", progress=True)
    path = save_plan(out / "plan.pt", schedule, router, cfg.scope)
    print(json.dumps({"plan": str(path), "final": summary["final"]}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from effrepro.data import load_target

    from token_router_pruning.eval import LmEval, retention
    from token_router_pruning.flops import ModelDims, model_flops
    from token_router_pruning.ftp import attach
    from token_router_pruning.tasks import paper_task_configs, write_mini_task_yamls

    model, tokenizer = load_target(args.target)
    skipper = attach(model)
    plan = _build_plan(args, model)
    out = Path(args.out)
    if args.tasks_dir:
        tasks: list[Any] = paper_task_configs(args.tasks_dir)
        include = [Path(args.tasks_dir)] if list(Path(args.tasks_dir).glob("*.yaml")) else []
    else:
        tasks = write_mini_task_yamls(out / "lm_eval_tasks")
        include = [out / "lm_eval_tasks"]
    harness = LmEval(model, tokenizer, tasks, include_path=include, limit=args.limit)
    with skipper.use(None):
        dense = harness.run()
    with skipper.use(plan):
        routed = harness.run()
    acc_dense = {t: r["acc"] for t, r in dense.items()}
    acc_routed = {t: r["acc"] for t, r in routed.items()}
    dims = ModelDims.from_config(model.config)
    dynamic = plan.router is not None and plan.router.needs_attention
    flops = model_flops(dims, args.flops_len, sparsity=plan.sparsity, scope=plan.scope, dynamic_router=dynamic)
    summary = {"plan": plan.name, "dense": acc_dense, "routed": acc_routed,
               "retention_percent": retention(acc_routed, acc_dense), "flops_ratio": flops.ratio,
               "flops_len": args.flops_len}
    from effrepro.report import atomic_write_text

    atomic_write_text(out / "eval.json", json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from effrepro.data import load_target

    from token_router_pruning.bench import prefill_latency
    from token_router_pruning.config import BenchConfig
    from token_router_pruning.ftp import attach

    model, tokenizer = load_target(args.target)
    skipper = attach(model)
    plan = _build_plan(args, model)
    bench = BenchConfig(seq_len=args.seq_len, batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats)
    stats = prefill_latency(model, skipper, {"dense": None, plan.name: plan}, tokenizer, bench)
    stats["speedup"] = stats["dense"]["median_s"] / stats[plan.name]["median_s"]
    print(json.dumps(stats, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token_router_pruning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reproduce", add_help=False,
                   help="the paper's experiments; writes results/token_router_pruning/<scale> (reproduce --help)")
    p = sub.add_parser("train", help="train the dynamic router for one schedule; writes OUT/plan.pt")
    _plan_args(p)
    p.add_argument("--config", help="YAML with RouterTrainConfig keys")
    add_set(p, "steps=300")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--windows", type=int, default=200, help="text windows for training")
    p.add_argument("--out", required=True)
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/router/last.pt exists")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="lm-eval accuracy and retention of a plan vs the dense model")
    _plan_args(p)
    p.add_argument("--tasks-dir", help="paper tasks as local JSONL (default: the shipped miniature tasks)")
    p.add_argument("--limit", type=int, help="items per task")
    p.add_argument("--flops-len", type=int, default=512, help="sequence length for the analytic FLOPs ratio")
    p.add_argument("--out", default="results/token_router_pruning/eval")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("bench", help="paired prefill latency of a plan vs dense")
    _plan_args(p)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(func=cmd_bench)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse and dispatch; user mistakes raise ``UsageError`` (``main`` turns them into one line + exit 2)."""
    _offline()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "sparsity", None) is not None:
        from token_router_pruning.ftp import check_sparsity

        check_sparsity(args.sparsity, "--sparsity")
    from effrepro.outputs import check_args

    check_args(args, dirs=("out",), inputs=("plan", "schedule"), folders=("tasks_dir",),
               positive=("seq_len", "windows", "batch_size", "repeats", "limit", "flops_len"))
    if getattr(args, "plan", None) and getattr(args, "schedule", None):
        raise UsageError("--plan already holds its schedule; give --plan or --schedule, not both")
    _threads()
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user mistakes become one ``error: ...`` line and exit code 2."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
