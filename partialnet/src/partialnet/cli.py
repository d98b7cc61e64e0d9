"""``partialnet train | eval | bench | reproduce`` (errors the user can fix: one line, exit code 2)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from effrepro.cliargs import add_set, overrides
from effrepro.config import find_config
from effrepro.errors import UsageError, run_cli
from effrepro.outputs import check_output_dir, check_output_file


def cmd_train(args: argparse.Namespace) -> int:
    from partialnet.train import load_train_config, recipe, train

    if args.config is None and args.model is None:
        raise UsageError("pass --config recipe.yaml (see partialnet/configs/) or --model partialnet_<v>")
    if args.out is not None:
        check_output_dir(args.out)
    source: Path | dict = find_config(args.config, "partialnet") if args.config is not None else recipe(args.model)
    items = overrides(args)
    if args.model and args.config:
        items.append(f"model={args.model}")
    for key, value in (("data", args.data), ("out_dir", args.out)):
        if value is not None:
            items.append(f"{key}={value}")
    cfg = load_train_config(source, items)
    result = train(cfg, resume=not args.no_resume)
    print(json.dumps({"out_dir": result["out_dir"], **result["final"]}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from partialnet.eval import evaluate_imagenet

    if args.batch_size < 1 or args.img_size < 1 or args.workers < 0 or not 0 < args.crop_ratio <= 1:
        raise UsageError("--batch-size and --img-size must be >= 1, --workers >= 0, --crop-ratio in (0, 1]")
    result = evaluate_imagenet(args.model, args.data, args.checkpoint, deploy=args.deploy, use_ema=args.ema,
                               image_size=args.img_size, crop_ratio=args.crop_ratio, batch_size=args.batch_size,
                               workers=args.workers, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from partialnet.bench import benchmark, format_bench, parse_variants

    if args.threads < 1 or args.repeats < 1:
        raise UsageError("--threads and --repeats must be positive")
    if args.json:
        check_output_file(args.json, "--json")
    result = benchmark(parse_variants(args.variants), device=args.device, threads=args.threads,
                       repeats=args.repeats, warmup=args.warmup, image_size=args.img_size, batch=args.batch,
                       half=args.half)
    print(format_bench(result))
    if args.json:
        from effrepro.report import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partialnet", description="PartialNet / PATNet vs FasterNet")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on ImageNet (or MNIST-100) with the official recipe; resumable")
    p.add_argument("--config", help="recipe YAML: a path, or a name of the shipped configs (imagenet_<v>.yaml)")
    p.add_argument("--model", help="partialnet_<v> or fasternet_<v> (its official recipe if no --config)")
    p.add_argument("--data", help="ImageNet root with train/ and val/")
    p.add_argument("--out", help="output directory (checkpoints, metrics.jsonl)")
    p.add_argument("--no-resume", action="store_true", help="start over even if <out>/last.pt exists")
    add_set(p, "epochs=10")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="ImageNet top-1/top-5 of a checkpoint, training or deploy form")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="ImageNet root (val/ is used)")
    p.add_argument("--checkpoint", help="last.pt of partialnet train, a state dict, or an official checkpoint")
    p.add_argument("--deploy", action="store_true", help="evaluate the fused (deploy) form")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a partialnet train checkpoint")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-ratio", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="PartialNet vs FasterNet: CPU latency (batch 1) or GPU throughput")
    p.add_argument("--variants", default="t0,t1,t2")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (FasterNet measures with 1)")
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, the largest that fits on GPU")
    p.add_argument("--half", action="store_true", help="fp16 autocast on GPU")
    p.add_argument("--json", help="also write the full result here")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("reproduce", add_help=False, help="the paper's claims: smoke (CPU miniature) or full "
                   "(ImageNet); `partialnet reproduce --help` lists its options")
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse and dispatch; user mistakes raise ``UsageError`` (``main`` turns them into one line + exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options (``partialnet reproduce --help``); ``--set`` takes plan fields and
    (full scale) run-config keys alike, a plan field first."""
    from effrepro.cliargs import reproduce_command

    return reproduce_command("partialnet.reproduce", argv)


def main(argv: list[str] | None = None) -> None:
    """Console script: user mistakes print one ``error: ...`` line and exit with code 2."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
