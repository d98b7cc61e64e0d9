"""``double_rounding``: train / hessian / search / eval / bench / reproduce.

Pipeline (each stage resumes from ``<out>/<stage>/last.pt``; ``torchrun --nproc_per_node=N`` for DDP)::

    double_rounding train   --config C --stage fp32      --out R   # or --init a torchvision .pth at `multi`
    double_rounding train   --config C --stage multi     --out R   # -> R/multi/model.int8.pt
    double_rounding hessian --config C                   --out R   # -> R/hessian/traces.json
    double_rounding train   --config C --stage supernet  --out R   # -> R/supernet/model.int8.pt
    double_rounding search  --config C --out R --budget 3 3.5 4    # ILP sub-nets, evaluated from the int8 file
    double_rounding eval    --config C --int8 R/multi/model.int8.pt --bits all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effrepro.cliargs import add_set, overrides
from effrepro.config import find_config
from effrepro.errors import UsageError, run_cli
from effrepro.outputs import check_input_file, check_output_dir, check_output_file

if TYPE_CHECKING:  # the heavy modules are imported inside the commands: ``--help`` must not load torch
    from double_rounding.config import Config

DEFAULT_CONFIG = "smoke_mnist.yaml"  # the MNIST miniature (a few CPU minutes), shipped in configs/


def _config(args: argparse.Namespace) -> Config:
    from effrepro.config import load_config

    from double_rounding.config import Config

    source = find_config(DEFAULT_CONFIG if args.config is None else args.config, "double_rounding")
    return load_config(source, Config, overrides(args))


def _write_json(path: Path, data: Any) -> None:
    from effrepro.report import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def _check_paths(args: argparse.Namespace) -> None:
    """The output folder / files and the given input files, before any work."""
    if getattr(args, "out", None):
        check_output_dir(args.out)
    if getattr(args, "json", None):
        check_output_file(args.json, "--json")
    for option in ("init", "int8", "traces"):
        if getattr(args, option, None):
            check_input_file(getattr(args, option), f"--{option}")


def cmd_train(args: argparse.Namespace) -> int:
    from effrepro.train import dist_setup

    from double_rounding.stages import run_stage

    _check_paths(args)
    cfg = _config(args)
    dist = dist_setup(args.device)
    result = run_stage(cfg, args.stage, Path(args.out), dist, Path(args.init) if args.init else None,
                       Path(args.traces) if args.traces else None, progress=not args.quiet, resume=not args.no_resume)
    if dist.is_main:
        final = result["final"]
        print(json.dumps({"stage": args.stage, "seconds": round(result["seconds"], 1), **final}, default=str))
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    from effrepro.train import dist_setup

    from double_rounding.stages import hessian_stage

    _check_paths(args)
    result = hessian_stage(_config(args), Path(args.out), dist_setup(args.device),
                           Path(args.init) if args.init else None)
    print(json.dumps(result["traces"], indent=1))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from effrepro.quant import load_int8
    from effrepro.train import dist_setup

    from double_rounding.data import build_loaders
    from double_rounding.mixed import area_under_curve, evaluate_subnets, pareto_by_budget, search_configs
    from double_rounding.stages import read_traces

    _check_paths(args)
    cfg = _config(args)
    out = Path(args.out)
    artefact = load_int8(Path(args.int8) if args.int8 else out / "supernet" / "model.int8.pt")
    traces = read_traces(Path(args.traces) if args.traces else out / "hessian" / "traces.json")
    missing = sorted(set(artefact["graph"]["layers"]) - set(traces))
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise UsageError(f"the traces file has no trace for {', '.join(missing[:3])}{more}; compute them for this "
                         "model with `double_rounding hessian`")
    bits = artefact["graph"]["bits"]
    for budget in args.budget or []:
        if not min(bits) <= budget <= max(bits):
            raise UsageError(f"--budget {budget}: an average bit-width from {min(bits)} to {max(bits)}")
    rows = search_configs(artefact, traces, cfg.mixed, args.budget)
    if not args.no_eval:
        dist = dist_setup(args.device)
        _, test_loader = build_loaders(cfg.data, dist, cfg.seed)
        rows = evaluate_subnets(artefact, rows, test_loader, dist.device)
        print(json.dumps({"pareto": pareto_by_budget(rows), "auc": area_under_curve(pareto_by_budget(rows))}))
    _write_json(Path(args.json) if args.json else out / "search" / "subnets.json", rows)
    for row in rows:
        print(json.dumps(row))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from effrepro.quant import load_int8
    from effrepro.train import dist_setup

    from double_rounding.data import build_loaders
    from double_rounding.eval import evaluate_int8, parse_config

    _check_paths(args)
    cfg = _config(args)
    artefact = load_int8(args.int8)
    layers = list(artefact["graph"]["layers"])
    if args.bits == "all":
        configs: list[Any] = list(artefact.get("available_bits") or artefact["graph"]["bits"])
    else:
        configs = [parse_config(text, layers) for text in args.bits.split(";")]
    dist = dist_setup(args.device)
    _, test_loader = build_loaders(cfg.data, dist, cfg.seed)
    model_given = args.config is not None or any(o.startswith("model.") for o in args.overrides)
    rows = evaluate_int8(artefact, test_loader, configs, dist.device, expect=cfg.model if model_given else None)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        _write_json(Path(args.json), rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="double_rounding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None,
                       help=f"run config YAML: a path or a shipped name (default: {DEFAULT_CONFIG}, the MNIST "
                       "miniature)")
        add_set(p, "multi.alrs=off", positional_alias=False)
        p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")

    p = sub.add_parser("train", help="train a stage: fp32, multi (multi-precision) or supernet (mixed)")
    common(p)
    p.add_argument("--stage", choices=["fp32", "multi", "supernet"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", default=None, help="start weights (default: the previous stage in --out)")
    p.add_argument("--traces", default=None, help="supernet: Hessian traces JSON (default: <out>/hessian)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-resume", action="store_true", help="start the stage over even if <out>/<stage>/last.pt "
                   "exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("hessian", help="per-layer Hutchinson traces of the FP32 model")
    common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--init", default=None)
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser("search", help="ILP sub-nets of the SuperNet int8 file under average-bit budgets")
    common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--int8", default=None)
    p.add_argument("--traces", default=None)
    p.add_argument("--budget", type=float, nargs="+", default=None)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="accuracy at any bit-width or mixed configuration, from the int8 file only")
    common(p)
    p.add_argument("--int8", required=True)
    p.add_argument("--bits", default="all",
                   help="'all', a bit-width, a JSON {layer: bits} / list / .json file; several separated by ';'")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_eval)

    sub.add_parser("bench", help="switch time, file sizes, fake-quant vs FP32 throughput (see bench --help)")
    sub.add_parser("reproduce", help="the paper's claims: --scale smoke|full [--tiny] (see reproduce --help)")
    return parser


def run(argv: list[str] | None = None) -> int:
    """The command line without the error wrapper (for tests and for ``reproduce --scale full``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def cmd_bench(argv: list[str]) -> int:
    """``bench`` parses its own options (``double_rounding bench --help``)."""
    from double_rounding.bench import main as bench_main

    return bench_main(argv)


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options; ``--set`` takes plan fields and (full scale) run-config keys
    alike (``--config-set`` is its deprecated spelling)."""
    from effrepro.cliargs import reproduce_command

    return reproduce_command("double_rounding.reproduce", argv, "--config-set")


def main(argv: list[str] | None = None) -> None:
    """Console script: user mistakes become one ``error:`` line and exit code 2."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
