"""``gumiho`` console script: ``train``, ``eval``, ``bench``, ``reproduce``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from effrepro.cliargs import add_set, overrides, reproduce_command
from effrepro.config import find_config, package_configs
from effrepro.errors import UsageError, run_cli
from effrepro.outputs import check_args

CONFIGS = package_configs("gumiho")  # configs/ shipped in the package (smoke.yaml, full.yaml)


def _load(args: argparse.Namespace):
    from effrepro.config import load_config
    from effrepro.specdec.draft_data import check_chat_template

    from gumiho.config import GumihoRunConfig

    source = find_config(args.config or "smoke.yaml", "gumiho")
    config = load_config(source, GumihoRunConfig, overrides(args))
    if args.target:
        config.target = config.data.target = args.target
    if args.chat_template:
        config.data.chat_template = config.eval.chat_template = args.chat_template
    if getattr(args, "sharegpt_path", None):
        config.data.sharegpt_path = args.sharegpt_path
    check_chat_template(config.data.chat_template)
    check_chat_template(config.eval.chat_template)
    return config


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"  # torchrun: own GPU


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config: a path or a shipped name (default: smoke.yaml)")
    parser.add_argument("--target", help="local HF model dir or 'smollm2-135m' (overrides the config's target)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", help="target device: cpu, cuda, cuda:1, or auto (device_map='auto' over every "
                                         "GPU); default cuda when there is one")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="target dtype (default: bfloat16 on a GPU, float32 on the CPU; the drafts stay float32)")
    parser.add_argument("--chat-template", default=None,
                        help="'auto' (the tokenizer's own) or an fschat template name such as vicuna_v1.1 (default: "
                             "the config's data.chat_template / eval.chat_template)")
    add_set(parser, "train.epochs=5")


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def cmd_train(args: argparse.Namespace) -> int:
    from gumiho.train import load_target_on, train_draft, variant_structure

    config = _load(args)
    if args.variant:
        config = replace(config, structure=variant_structure(args.variant))
    config.check_data()  # a ShareGPT count the data cannot hold, before the target is loaded
    _threads(args)
    model, tokenizer = load_target_on(config.target, _device(args), args.dtype)
    result = train_draft(config, model, tokenizer, args.out, resume=not args.no_resume)
    print(f"wrote {result['head']} ({result['steps']} steps, data {result['data_dir']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from effrepro.specdec import TargetAdapter
    from effrepro.specdec.eagle import read_eagle_head

    from gumiho.eval import eagle_factory, eagle_tree_for, gumiho_factory, run_eval, tuned_tree
    from gumiho.train import load_draft, load_target_on

    config = _load(args)
    if not Path(args.head).is_file():
        raise UsageError(f"head checkpoint not found: {args.head}; train one with `gumiho train --out DIR`")
    if args.eagle_head and not Path(args.eagle_head).exists():
        raise UsageError(f"EAGLE head not found: {args.eagle_head}; give a head.pt of `python -m effrepro.specdec "
                         "train-eagle` or a released EAGLE-2 head (folder or weights file)")
    check_args(args, inputs=("head",) if not args.eagle_head or Path(args.eagle_head).is_dir()
               else ("head", "eagle_head"))  # an empty file is one clear error too
    _threads(args)
    model, tokenizer = load_target_on(config.target, _device(args), args.dtype)
    draft = load_draft(args.head, model)
    target = TargetAdapter(model, max_length=config.eval.max_length)
    tree = tuned_tree(target, tokenizer, draft, config.tree, config.eval.chat_template) if config.tree.tuned \
        else config.tree
    methods = {"gumiho": gumiho_factory(draft, tree)}
    if args.eagle_head:
        embed = model.get_input_embeddings().weight.detach()
        eagle = read_eagle_head(args.eagle_head, embed, model.config).to(embed.device)
        methods["eagle2"] = eagle_factory(eagle.eval(), eagle_tree_for(tree))
    result = run_eval(target, tokenizer, methods, config.eval, args.out)
    print(json.dumps(result["summary"], indent=1, default=float))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from effrepro.data import resolve_model_dir
    from transformers import AutoConfig

    from gumiho.bench import draft_round_benchmark, sized_config

    config = _load(args)
    _threads(args)
    if args.hidden:
        target_config = sized_config(args.hidden)
    else:
        target_config = AutoConfig.from_pretrained(resolve_model_dir(config.target))
    result = draft_round_benchmark(target_config, config.tree, context=args.context, new_tokens=args.new_tokens,
                                   repeats=args.repeats, device=_device(args).replace("auto", "cuda"))
    print("| draft | ms / round | vs EAGLE-2 | serial forwards |\n|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {1e3 * row['seconds']:.2f} | {row['vs_eagle2']:.3f} | {row['serial_forwards']} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gumiho", description="Gumiho speculative decoding (ICML 2025)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a Gumiho draft on the target's draft data")
    _common(train)
    train.add_argument("--out", required=True, help="run folder (head.pt, last.pt, metrics.jsonl)")
    train.add_argument("--variant", help="gumiho | gumiho-1s | gumiho-3s | medusa (structure preset)")
    train.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    train.add_argument("--sharegpt-path", help="a local ShareGPT json (full scale: ShareGPT_V4.3_unfiltered_cleaned_"
                                               "split.json; sets data.sharegpt_path)")
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="tau / speedup of a trained draft vs plain decoding (and EAGLE-2)")
    _common(ev)
    ev.add_argument("--head", required=True, help="head.pt written by `gumiho train`")
    ev.add_argument("--eagle-head", help="an EAGLE-2 head to compare with: head.pt of python -m effrepro.specdec "
                                         "train-eagle, or a released EAGLE-2 head (folder or weights file)")
    ev.add_argument("--out", help="folder for per-turn jsonl and summary.json")
    ev.set_defaults(func=cmd_eval)
    bench = sub.add_parser("bench", help="draft-round latency of Gumiho variants vs EAGLE-2 (random weights)")
    _common(bench)
    bench.add_argument("--hidden", type=int, default=0, help="LLaMA-shaped widths at this hidden size (4096: 7B)")
    bench.add_argument("--context", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=3, help="accepted positions fed to the draft per round")
    bench.add_argument("--repeats", type=int, default=21)
    bench.set_defaults(func=cmd_bench)
    sub.add_parser("reproduce", add_help=False, help="the paper's claims: --scale smoke (CPU miniature) or full "
                   "(options: gumiho reproduce --help)").add_argument("args", nargs=argparse.REMAINDER)
    return parser


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options; ``--set`` takes plan fields and run-config keys alike."""
    return reproduce_command("gumiho.reproduce", argv)


def run(argv: list[str] | None = None) -> int:
    """Parse and dispatch; user mistakes raise ``UsageError`` (``main`` turns them into one line + exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    check_args(args, dirs=("out",), positive=("repeats", "context", "new_tokens"))
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> None:
    run_cli(run, argv)


if __name__ == "__main__":
    main()
