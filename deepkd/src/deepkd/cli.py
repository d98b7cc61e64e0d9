"""``deepkd`` command line: train, train-teacher, eval, bench, reproduce."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from effrepro.cliargs import add_set, overrides
from effrepro.config import find_config
from effrepro.errors import UsageError, run_cli
from effrepro.outputs import check_output_dir


def _load(config: str | None, items: list[str], data: str | None, dataset: str | None = None):
    from effrepro.config import load_config

    from deepkd.config import TrainConfig

    extra = []
    if data:
        extra.append(f"data.root={data}")
    if dataset:
        extra.append(f"data.dataset={dataset}")
    source = find_config(config, "deepkd") if config else None  # a path, or one relative to the shipped configs
    return load_config(source, TrainConfig, extra + list(items))


def cmd_train(args: argparse.Namespace) -> int:
    from deepkd.train import train

    check_output_dir(args.out)
    cfg = _load(args.config, overrides(args), args.data)
    result = train(cfg, args.out, progress=not args.quiet, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per torchrun job
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    import shutil

    from deepkd.train import train

    check_output_dir(args.out)
    if args.export_mdistiller:
        check_output_dir(args.export_mdistiller, "--export-mdistiller")
    fixed = [f"student={args.arch}", "teacher=null", "distiller.name=none", "solver.method=sgd"]
    cfg = _load(args.config, fixed + overrides(args), args.data, args.dataset)
    result = train(cfg, args.out, progress=not args.quiet, resume=not args.no_resume)
    out = Path(args.out)
    shutil.copyfile(out / "student.pt", out / "teacher.pt")
    if args.export_mdistiller:  # the path layout mdistiller / DeepKD expect for CIFAR teachers
        target = Path(args.export_mdistiller) / f"{args.arch}_vanilla" / f"ckpt_epoch_{cfg.solver.epochs}.pth"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "teacher.pt", target)
    print(json.dumps({k: v for k, v in result.items() if k != "history"} | {"teacher": str(out / "teacher.pt")},
                     indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deepkd.eval import evaluate_checkpoint

    cfg = _load(args.config, overrides(args), args.data, args.dataset)
    print(json.dumps(evaluate_checkpoint(args.ckpt, cfg, args.arch), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from deepkd.bench import step_benchmark

    if args.repeats < 1 or args.batch_size < 1 or args.num_classes < 2:
        raise UsageError("--repeats and --batch-size must be >= 1 and --num-classes >= 2")
    result = step_benchmark(args.student, None if args.teacher == "none" else args.teacher, args.family,
                            args.batch_size, args.num_classes, args.device, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepkd", description="DeepKD: decoupled momenta + top-k mask KD")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
        p.add_argument("--config", help="YAML config (path, or relative to deepkd/configs)")
        p.add_argument("--data", help="dataset folder (CIFAR-100 python layout / ImageNet train+val)")
        if out_required:
            p.add_argument("--out", required=True, help="run folder (resumes from <out>/last.pt)")
            p.add_argument("--no-resume", action="store_true", help="refuse to resume; fail on an existing run")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        add_set(p, "solver.epochs=10")

    p = sub.add_parser("train", help="train a student (KD / DKD / MLKD / CRLD, with sgd / dot / deepkd)")
    common(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-teacher", help="train a teacher with plain cross-entropy")
    p.add_argument("--arch", required=True, help="model name, e.g. resnet32x4")
    p.add_argument("--dataset", default=None, help="cifar100 | imagenet | mnist100 (default: the config's)")
    p.add_argument("--export-mdistiller", help="also write <DIR>/<arch>_vanilla/ckpt_epoch_<E>.pth")
    common(p)
    p.set_defaults(func=cmd_train_teacher)
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--arch", help="model name when the checkpoint does not record it")
    p.add_argument("--dataset", default=None)
    common(p, out_required=False)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("bench", help="step time: DKD vs DOT vs DeepKD (paired, interleaved)")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4", help="model name, or 'none' for cached teacher logits")
    p.add_argument("--family", default="cifar", choices=["cifar", "imagenet", "mnist"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=21)
    p.set_defaults(func=cmd_bench)
    sub.add_parser("reproduce", help="the paper's claims: --scale smoke (CPU, MNIST-100) | full (your data); "
                   "see reproduce --help")
    return parser


def run(argv: list[str] | None = None) -> int:
    """The command without the error wrapper (raises :class:`UsageError`); used by tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options (``deepkd reproduce --help``); ``--set`` takes plan fields and
    (full scale) run-config keys alike, a plan field first."""
    from effrepro.cliargs import reproduce_command

    return reproduce_command("deepkd.reproduce", argv)


def main(argv: list[str] | None = None) -> None:
    """Console script: user mistakes print one ``error: ...`` line and exit with code 2."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()


__all__ = ["UsageError", "main", "run"]
