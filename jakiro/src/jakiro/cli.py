"""``jakiro`` console script: ``data``, ``train``, ``eval``, ``bench``, ``reproduce``.

    jakiro reproduce --scale smoke [--tiny] [--out DIR] [--set max_questions=20 ...]   (jakiro reproduce --help)
    jakiro train --method jakiro --target smollm2-135m --out runs/jakiro [--epochs 20 --lr 9e-5]
    jakiro eval --heads runs --variants eagle2 jakiro jakiro_parent [--temperature 1.0] [--out DIR]
    jakiro bench [--heads runs] [--top-k 4 --depth 5 --total-tokens 24]

``--target`` is the embedded ``smollm2-135m`` or a local HF directory (full scale: ``/path/to/vicuna-7b-v1.3``,
with ``--sharegpt-json`` for the official 68k ShareGPT conversations). ``--heads DIR`` holds ``<method>/head.pt``.
Multi-GPU training: ``jakiro data ...`` once (or per shard), then ``torchrun --nproc_per_node N -m jakiro.cli train``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError, run_cli

# torch and the method modules are imported inside the commands: ``jakiro --help`` must not wait for them
DTYPES = ("bfloat16", "float16", "float32")


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("EFFREPRO_TARGET", "smollm2-135m"),
                        help="embedded model name or a local HF model directory")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="target dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda[:i] or auto (device_map='auto' over every GPU, for a target that does not "
                             "fit one); default: cuda when there is one")
    parser.add_argument("--chat-template", default="auto",
                        help="'auto' (the tokenizer's own) or an fschat template name (vicuna_v1.1 for Vicuna)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sharegpt-json", default="", help="a ShareGPT json file (full scale: the official 68k)")
    parser.add_argument("--limit", type=int, default=68000, help="conversations kept from --sharegpt-json")
    parser.add_argument("--prompts", type=int, default=0,
                        help="corpus instructions answered by the target (self-distillation; the smoke data)")
    parser.add_argument("--max-new-tokens-data", type=int, default=128, help="answer length for --prompts")
    parser.add_argument("--sharegpt", type=int, default=0, help="the engine's shipped (dummy) ShareGPT set")
    parser.add_argument("--max-len", type=int, default=2048)


def _tree_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--total-tokens", type=int, default=60,
                        help="tree size; -1 = sized for this machine (top-k, depth and size measured and chosen with "
                             "the Jakiro head, then used by every variant)")


def _check_names(given: list[str], valid: Any, option: str) -> None:
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise UsageError(f"{option} {' '.join(unknown)}: use one of {', '.join(valid)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jakiro", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="encode the draft training data with the target (cached)")
    _target_args(data)
    _data_args(data)
    data.add_argument("--shard", default="0/1", help="i/n: encode every n-th conversation from i (multi-GPU)")
    data.set_defaults(func=cmd_data)
    train = sub.add_parser("train", help="train one draft head (official recipe by default)")
    _target_args(train)
    _data_args(train)
    train.add_argument("--method", required=True, help="eagle2 | jakiro | jakiro_nocepd | jakiro_star")
    train.add_argument("--out", required=True)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--steps-per-epoch", type=int, default=0)
    train.add_argument("--lr", type=float, default=9e-5)
    train.add_argument("--warmup-steps", type=int, default=2000)
    train.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    train.add_argument("--no-fc-bias", action="store_true", help="fc without bias (LLaMA3-8B config)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    train.set_defaults(func=cmd_train)
    evaluate = sub.add_parser("eval", help="the variants vs plain decoding on MT-bench (interleaved)")
    _target_args(evaluate)
    _tree_args(evaluate)
    evaluate.add_argument("--heads", required=True, help="folder with <method>/head.pt")
    evaluate.add_argument("--variants", nargs="+", default=["eagle2", "jakiro"],
                          help="decoders to compare (an unknown name lists them)")
    evaluate.add_argument("--questions", default="mtbench")
    evaluate.add_argument("--max-questions", type=int, default=0)
    evaluate.add_argument("--max-turns", type=int, default=0)
    evaluate.add_argument("--max-new-tokens", type=int, default=512)
    evaluate.add_argument("--temperature", type=float, default=0.0)
    evaluate.add_argument("--top-p", type=float, default=1.0)
    evaluate.add_argument("--warmup", type=int, default=3)
    evaluate.add_argument("--max-length", type=int, default=2048)
    evaluate.add_argument("--out", default=None)
    evaluate.set_defaults(func=cmd_eval)
    bench = sub.add_parser("bench", help="drafting cost per tree: Jakiro vs EAGLE-2 (paired)")
    _target_args(bench)
    bench.add_argument("--top-k", type=int, default=4)
    bench.add_argument("--depth", type=int, default=5)
    bench.add_argument("--total-tokens", type=int, default=24)
    bench.add_argument("--heads", default=None, help="folder with <method>/head.pt (default: random heads)")
    bench.add_argument("--context", type=int, default=256)
    bench.add_argument("--repeats", type=int, default=21)
    bench.set_defaults(func=cmd_bench)
    sub.add_parser("reproduce", add_help=False, help="the paper's comparison: claims.json + report.md "
                   "(options: jakiro reproduce --help)").add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from effrepro.specdec.draft_data import check_chat_template
    from effrepro.specdec.target import load_target_on

    check_chat_template(args.chat_template)
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_target_on(args.target, args.device, args.dtype)


def _data_dirs(args: argparse.Namespace, model: Any, tokenizer: Any) -> list[Path]:
    shard = getattr(args, "shard", "0/1")
    if args.sharegpt_json and shard != "0/1":
        from jakiro.data import encode_sharegpt_file

        try:
            index, count = (int(x) for x in shard.split("/"))
        except ValueError:
            raise UsageError(f"--shard {shard!r}; use i/n, e.g. 0/8") from None
        return [encode_sharegpt_file(model, tokenizer, args.sharegpt_json, max_len=args.max_len, limit=args.limit,
                                     chat_template=args.chat_template, shard=(index, count))]
    from jakiro.draft_sources import build_draft_data

    return build_draft_data(_data_settings(args), str(args.target), model, tokenizer)


def _data_settings(args: argparse.Namespace) -> Any:
    """The draft-data settings, checked before the target is loaded (template name, ShareGPT file and count)."""
    from jakiro.draft_sources import DataSettings

    return DataSettings(prompts=args.prompts, max_new_tokens=args.max_new_tokens_data, sharegpt=args.sharegpt,
                        max_len=args.max_len, sharegpt_json=args.sharegpt_json, sharegpt_limit=args.limit,
                        chat_template=args.chat_template)


def _heads(folder: str, model: Any, methods: set[str]) -> dict[str, Any]:
    """The trained heads of ``methods`` (``folder/<method>/head.pt``) on the device and in the dtype of the
    target's embedding."""
    from jakiro.train import load_head

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--heads {root}: no such folder; give the folder holding <method>/head.pt")
    weight = model.get_input_embeddings().weight
    return {m: load_head(root / m / "head.pt", model, weight.device, weight.dtype) for m in sorted(methods)}


def cmd_data(args: argparse.Namespace) -> int:
    _data_settings(args)
    model, tokenizer = _load(args)
    print("\n".join(str(d) for d in _data_dirs(args, model, tokenizer)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from effrepro.specdec import HeadTrainConfig

    from jakiro.train import METHODS, train_method

    _check_names([args.method], METHODS, "--method")
    _data_settings(args)
    model, tokenizer = _load(args)
    config = HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                             lr=args.lr, warmup_steps=args.warmup_steps, schedule=args.schedule,
                             max_len=args.max_len, seed=args.seed)
    result = train_method(args.method, model, _data_dirs(args, model, tokenizer), config, args.out,
                          resume=not args.no_resume, fc_bias=not args.no_fc_bias)
    print(json.dumps({"method": args.method, "steps": result["steps"], "head": str(Path(args.out) / "head.pt")}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from effrepro.specdec import EvalConfig, TargetAdapter, TreeConfig

    from jakiro.eval import VARIANTS, evaluate_variants, tuned_tree

    _check_names(args.variants, list(VARIANTS), "--variants")
    model, tokenizer = _load(args)
    heads = _heads(args.heads, model, {VARIANTS[v].head for v in args.variants})
    config = EvalConfig(questions=args.questions, max_questions=args.max_questions, max_turns=args.max_turns,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        warmup=args.warmup, max_length=args.max_length, chat_template=args.chat_template)
    target = TargetAdapter(model, max_length=args.max_length)
    if args.total_tokens == -1:
        tree = tuned_tree(target, tokenizer, heads, args.variants, args.chat_template)
    else:
        tree = TreeConfig(top_k=args.top_k, depth=args.depth, total_tokens=args.total_tokens)
    result = evaluate_variants(target, tokenizer, heads, args.variants, tree, config, args.out)
    print(json.dumps(result["summary"], indent=1, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from effrepro.specdec import TreeConfig

    from jakiro.bench import draft_cost_benchmark
    from jakiro.train import METHODS

    model, _ = _load(args)
    heads = _heads(args.heads, model, set(METHODS)) if args.heads else None
    tree = TreeConfig(top_k=args.top_k, depth=args.depth, total_tokens=args.total_tokens)
    result = draft_cost_benchmark(model, tree, context=args.context, repeats=args.repeats, heads=heads)
    print(json.dumps(result, indent=1, default=str))
    return 0


def cmd_reproduce(argv: list[str]) -> int:
    """The reproduce skeleton parses its own options (``jakiro reproduce --help``)."""
    from jakiro.reproduce import REPRODUCTION

    return REPRODUCTION.main(argv)


def run(argv: list[str] | None = None) -> int:
    """Parse and dispatch; user mistakes raise ``UsageError`` (``main`` turns them into one line + exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if argv[:1] == ["reproduce"]:
        return cmd_reproduce(argv[1:])
    args = build_parser().parse_args(argv)
    _check_paths(args)
    return int(args.func(args) or 0)


def _check_paths(args: argparse.Namespace) -> None:
    """Paths and counts before the target is loaded: one error line, nothing created."""
    from effrepro.outputs import check_args, check_input_file

    check_args(args, dirs=("out",), inputs=("sharegpt_json",), folders=("heads",),
               positive=("top_k", "depth", "epochs", "batch_size", "max_len", "repeats", "context",
                         "max_new_tokens", "max_length"))
    if getattr(args, "questions", "mtbench") not in ("mtbench", "mtbench-heldout"):
        from effrepro.specdec.questions import load_questions

        check_input_file(args.questions, "--questions", "give mtbench, mtbench-heldout or a question.jsonl")
        load_questions(args.questions)


def main(argv: list[str] | None = None) -> None:
    """Console entry: user mistakes become one ``error: ...`` line and exit code 2 (``effrepro.errors.run_cli``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
