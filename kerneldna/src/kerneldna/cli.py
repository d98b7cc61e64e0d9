"""``kerneldna`` console script: ``train``, ``convert``, ``eval``, ``bench``, ``reproduce``.

Multi-GPU: ``torchrun --nproc_per_node=8 -m kerneldna.cli train --arch resnet18 --data /imagenet``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from effrepro.cliargs import add_set, overrides
from effrepro.errors import UsageError, run_cli
from effrepro.outputs import check_output_dir, check_output_file

from kerneldna.recipes import COMMON, RECIPES, recipe_config  # noqa: F401  (COMMON: re-exported)


def cmd_train(args: argparse.Namespace) -> int:
    from effrepro.config import find_config, load_config

    from kerneldna.train import TrainConfig, train

    items = overrides(args)
    if args.data:
        items.append(f"data={args.data}")
    if args.out:
        check_output_dir(args.out)
        items.append(f"out={args.out}")
    if args.config:
        cfg = load_config(find_config(args.config, "kerneldna"), TrainConfig, items)
    else:
        cfg = recipe_config(args.arch, items)
    result = train(cfg, resume=not args.no_resume)
    print(json.dumps({"final": result["final"], "out": cfg.out}, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from effrepro.train import dist_setup

    from kerneldna.eval import evaluate
    from kerneldna.kerneldna import fold_model
    from kerneldna.train import TrainConfig, load_trained, make_loaders

    model, config = load_trained(args.checkpoint, use_ema=args.ema)
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known and v is not None})
    if args.data:
        cfg.data = args.data
    dist = dist_setup()
    _, loader = make_loaders(cfg, dist)
    model.to(dist.device)
    if not args.no_fold:
        fold_model(model)
    with torch.no_grad():
        metrics = evaluate(model, loader, dist.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "folded": not args.no_fold, **metrics}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from effrepro.report import results_dir

    from kerneldna.bench import BenchConfig, markdown_table, parse_ints, run_bench, write_bench

    if args.out:
        check_output_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    cfg = BenchConfig(arch=args.arch, batch_sizes=parse_ints(args.batch_sizes), image_size=args.image_size,
                      repeats=args.repeats, warmup=args.warmup, fold=not args.no_fold, device=args.device)
    if args.variants:
        cfg.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if "baseline" not in cfg.variants:
            raise UsageError("--variants must include baseline (ratios are taken against it)")
    from kerneldna.models import ARCHS, VARIANTS

    if cfg.arch not in ARCHS:
        raise UsageError(f"unknown arch {cfg.arch!r}; use one of: {', '.join(ARCHS)}")
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variants {unknown}; use some of: {', '.join(VARIANTS)}")
    result = run_bench(cfg)
    out = results_dir("kerneldna", "bench", args.out)
    path = write_bench(result, out, f"bench_{cfg.arch}")
    print(markdown_table(result))
    print(f"written: {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from effrepro.train import load_checkpoint, save_checkpoint
    from effrepro.train.checkpoint import file_kind

    from kerneldna.convert import CONVERTIBLE, from_pretrained

    if args.arch not in CONVERTIBLE:
        raise UsageError(f"--arch must be one of {', '.join(CONVERTIBLE)}, not {args.arch!r}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError("--num-classes must be >= 1")
    check_output_file(args.out, "--out")
    state = load_checkpoint(args.source, expect=("state-dict", "train-state"))
    if file_kind(state) == "train-state":  # a `kerneldna train --set variant=baseline` run: its (EMA) weights
        config = state.get("config") or {}
        arch, variant = config.get("arch", args.arch), config.get("variant", "baseline")
        if variant != "baseline" or arch != args.arch:
            hint = "" if variant == "baseline" else " (a KernelDNA run needs no conversion: resume or fine-tune it)"
            raise UsageError(f"{args.source} is a {arch} {variant} run; convert takes a {args.arch} baseline run{hint}")
        state = state["ema"] if state.get("ema") is not None else state["model"]
    model = from_pretrained(state, args.arch, args.num_classes)
    save_checkpoint(args.out, model.state_dict())
    head = model.fc if args.arch.startswith("resnet") else model.classifier[-1]
    print(json.dumps({"out": str(args.out), "arch": args.arch, "variant": "kerneldna", "classes": head.out_features,
                      "fine_tune": f"kerneldna train --arch {args.arch} --set init={args.out} --data ..."}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerneldna", description="KernelDNA: dynamic kernel sharing.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with an official recipe (single process or torchrun DDP)")
    p.add_argument("--arch", default="resnet18", help=f"official recipe: {', '.join(RECIPES)}")
    p.add_argument("--config", help="a YAML TrainConfig instead of --arch's recipe: a path or a shipped name "
                   "(resnet50_imagenet.yaml)")
    p.add_argument("--data", help="dataset root (ImageNet: train/ and val/ class folders)")
    p.add_argument("--out", help="run directory (resumes from its last.pt)")
    p.add_argument("--no-resume", action="store_true", help="start over even if <out>/last.pt exists")
    add_set(p, "variant=baseline")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert", help="a torchvision/timm ResNet or torchvision MobileNetV2 state dict -> KernelDNA "
                       "weights in the official structure, to fine-tune with `train --set init=OUT`")
    p.add_argument("--source", required=True, help="state dict (.pth): ResNet-18/50 of torchvision or timm, "
                   "torchvision mobilenet_v2 (width 1.0 or 0.5); or the last.pt of a `kerneldna train` baseline run")
    p.add_argument("--arch", default="resnet18", help="resnet18, resnet50, mobilenetv2_100 or mobilenetv2_050")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the source's)")
    p.add_argument("--out", required=True, help="where to write the KernelDNA state dict")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("eval", help="evaluate a checkpoint (folded by default)")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights if the checkpoint has them")
    p.add_argument("--no-fold", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="throughput/latency: baseline vs KernelDNA (folded) vs CondConv vs ODConv")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--variants", help="comma list (default baseline,samedepth,kerneldna,condconv,odconv)")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-fold", action="store_true")
    p.add_argument("--out")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("reproduce", add_help=False, help="the paper's claims: --scale smoke (CPU miniature) or full "
                   "(ImageNet); `kerneldna reproduce --help` lists its options")
    return parser


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options (``kerneldna reproduce --help``)."""
    from kerneldna.reproduce import REPRODUCTION

    return REPRODUCTION.main(argv)


def run(argv: list[str] | None = None) -> int:
    """Parse and dispatch; user mistakes raise ``UsageError`` (``main`` turns them into one line + exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        raise UsageError("--repeats must be >= 1")
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry: user mistakes become one ``error: ...`` line and exit code 2 (``effrepro.errors.run_cli``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
