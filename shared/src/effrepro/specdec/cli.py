"""``python -m effrepro.specdec``: draft data, EAGLE-2 head training, evaluation and generation.

    python -m effrepro.specdec data        --target smollm2-135m [--sharegpt 500 --self-generated 0]
    python -m effrepro.specdec train-eagle --target smollm2-135m --out runs/eagle [--epochs 2 --lr 3e-4 ...]
    python -m effrepro.specdec eval        --target smollm2-135m --head runs/eagle/head.pt [--questions mtbench]
    python -m effrepro.specdec generate    --target smollm2-135m --head runs/eagle/head.pt --prompt "Hi"
    python -m effrepro.specdec tune        --target smollm2-135m --head runs/eagle/head.pt
    python -m effrepro.specdec race        --methods eagle2,jakiro,gumiho --out results/specdec_race

``train-eagle`` drafts over the 8192 most frequent target tokens of the data (``--draft-vocab``; 0 = the full
vocabulary, the paper's setting). ``--total-tokens -1`` (the default of ``generate`` and ``tune``) sizes the tree
for this machine (``effrepro.specdec.tuning``): measured costs and replayed acceptance, the choice printed and
cached per head and machine.

``--target`` is the embedded ``smollm2-135m`` or a local HF directory (full scale: ``/path/to/vicuna-7b-v1.3``);
``--dtype bfloat16`` / ``float16`` and ``--device cuda`` for GPUs. ``train-head`` is an alias of ``train-eagle``.
Multi-GPU training: ``torchrun --nproc_per_node N -m effrepro.specdec train-eagle ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from effrepro.errors import UsageError, run_cli
from effrepro.specdec.target import DTYPES, load_target_on


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("EFFREPRO_TARGET", "smollm2-135m"),
                        help="embedded model name or local HF model directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="target dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:1, or auto (transformers device_map='auto' over all GPUs)")
    parser.add_argument("--chat-template", default="auto", help="'auto' (tokenizer's) or an fschat template name")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sharegpt", type=int, default=500, help="ShareGPT conversations to encode")
    parser.add_argument("--self-generated", type=int, default=0, help="prompts answered by the target itself")
    parser.add_argument("--self-max-new-tokens", type=int, default=256)
    parser.add_argument("--self-temperature", type=float, default=0.0, help="> 0: sampled answers, not greedy")
    parser.add_argument("--self-repeats", type=int, default=1, help="answers per prompt (needs --self-temperature)")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--sharegpt-path", default=os.environ.get("EFFREPRO_SHAREGPT", ""),
                        help="full scale: a local ShareGPT json instead of the embedded dummy conversations")
    parser.add_argument("--prompts", default="",
                        help="self-generated prompts, comma-separated, in order: sharegpt, corpus, mtbench-train "
                             "(MT-bench minus the held-out eval questions), mtbench-train-chat (both turns) "
                             "and/or prompt files (.txt one a line, "
                             ".jsonl, ShareGPT .json); default sharegpt,corpus")


def _tree_args(parser: argparse.ArgumentParser, total_tokens: int = 60) -> None:
    parser.add_argument("--head", required=True,
                        help="head.pt written by train-eagle, or a released EAGLE-2 head (its folder, "
                             "pytorch_model.bin or model.safetensors)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--total-tokens", type=int, default=total_tokens,
                        help="tree size; -1 = tuned for this machine (top-k, depth and size measured and chosen)")
    parser.add_argument("--tune-prompts", type=int, default=4, help="tuning: MT-bench-train prompts replayed")
    parser.add_argument("--tune-tokens", type=int, default=48, help="tuning: greedy tokens per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=2048, help="context budget (KV cache size)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effrepro.specdec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="generate (or find) the cached draft training data")
    _target_args(data)
    _data_args(data)
    for name in ("train-eagle", "train-head"):
        train = sub.add_parser(name, help="train an EAGLE-2 head on the target's features")
        _target_args(train)
        _data_args(train)
        train.add_argument("--out", required=True)
        train.add_argument("--epochs", type=int, default=20)
        train.add_argument("--batch-size", type=int, default=4)
        train.add_argument("--steps-per-epoch", type=int, default=0)
        train.add_argument("--lr", type=float, default=9e-5)
        train.add_argument("--warmup-steps", type=int, default=2000)
        train.add_argument("--schedule", default="cosine")
        train.add_argument("--seed", type=int, default=0)
        train.add_argument("--holdout", type=float, default=0.05, help="held-out share of the draft data")
        train.add_argument("--no-resume", action="store_true")
        train.add_argument("--draft-vocab", type=int, default=8192,
                           help="the draft scores the K most frequent target tokens of the data (0 = full vocabulary, "
                                "the paper's setting)")
    evaluate = sub.add_parser("eval", help="EAGLE-2 vs plain decoding on MT-bench or a question file")
    _target_args(evaluate)
    _tree_args(evaluate)
    evaluate.add_argument("--questions", default="mtbench",
                          help="'mtbench', 'mtbench-heldout' (the 8 questions --prompts mtbench-train leaves out) "
                               "or an MT-bench-format question.jsonl")
    evaluate.add_argument("--max-questions", type=int, default=0)
    evaluate.add_argument("--max-turns", type=int, default=0)
    evaluate.add_argument("--warmup", type=int, default=3)
    evaluate.add_argument("--out", default=None)
    evaluate.add_argument("--extra-tree", action="append", default=[], metavar="K,DEPTH,TOTAL",
                          help="also run the head with this tree budget in the same run (repeatable)")
    generate = sub.add_parser("generate", help="stream one answer with speculative decoding")
    _target_args(generate)
    _tree_args(generate, total_tokens=-1)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--no-plain", action="store_true", help="skip the plain-decoding run for tokens/s")
    tune = sub.add_parser("tune", help="size the draft tree for this machine and print the cost-model table")
    _target_args(tune)
    _tree_args(tune, total_tokens=-1)
    tune.add_argument("--out", default=None, help="also write the choice and table to this JSON file")
    tune.add_argument("--no-cache", action="store_true", help="measure again even if a choice is cached")
    race = sub.add_parser("race", help="plain greedy and every installed method (the miniature heads) in one "
                                       "interleaved run: tokens/s, speed-up, tree and break-even tau per method")
    _target_args(race)
    race.add_argument("--methods", default="all",
                      help="comma-separated: eagle2 and the methods installed projects register (default all)")
    race.add_argument("--questions", default="mtbench-heldout")
    race.add_argument("--max-questions", type=int, default=8)
    race.add_argument("--max-turns", type=int, default=0)
    race.add_argument("--max-new-tokens", type=int, default=48)
    race.add_argument("--warmup", type=int, default=1)
    race.add_argument("--max-length", type=int, default=2048)
    race.add_argument("--out", default=None, help="write race.json, race.md and the turn records here")
    return parser


def _load(args: argparse.Namespace, max_length: int = 2048) -> tuple[Any, Any]:
    from effrepro.specdec.draft_data import check_chat_template

    check_chat_template(args.chat_template)
    return load_target_on(args.target, args.device, args.dtype)


def _data_config(args: argparse.Namespace) -> Any:
    """The draft-data settings, checked before any model is loaded (ShareGPT file and count)."""
    from effrepro.specdec.draft_data import DraftDataConfig, check_sharegpt

    config = DraftDataConfig(target=str(args.target), sharegpt=args.sharegpt, self_generated=args.self_generated,
                           self_max_new_tokens=args.self_max_new_tokens, max_len=args.max_len,
                           chat_template=args.chat_template, sharegpt_path=args.sharegpt_path,
                           prompts=args.prompts, self_temperature=args.self_temperature,
                           self_repeats=args.self_repeats)
    check_sharegpt(config)
    return config


def _tree(args: argparse.Namespace, target: Any = None, tokenizer: Any = None, head: Any = None,
          cache: bool = True) -> Any:
    """The tree of ``--top-k/--depth/--total-tokens``; ``--total-tokens -1``: the tuned tree of this machine."""
    from effrepro.specdec.protocol import TreeConfig

    if args.total_tokens != -1:
        return TreeConfig(top_k=args.top_k, depth=args.depth, total_tokens=args.total_tokens)
    return _tune(args, target, tokenizer, head, cache).tree


def _tune(args: argparse.Namespace, target: Any, tokenizer: Any, head: Any, cache: bool = True) -> Any:
    from effrepro.specdec.eagle import eagle_factory
    from effrepro.specdec.tuning import tuned_tree

    def make(tree: Any) -> Any:
        return eagle_factory(head, tree)(target)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    choice = tuned_tree(target, tokenizer, head, make, prompts=args.tune_prompts, max_new_tokens=args.tune_tokens,
                        chat_template=args.chat_template, cache=cache, log=log)
    tree = choice.tree
    log(f"tree: top_k {tree.top_k}, depth {tree.depth}, total_tokens {tree.total_tokens} (tuned: replayed tau "
        f"{choice.tau:.2f}, expected speedup {choice.speedup:.2f}x over plain decoding)")
    return choice


def _check_args(args: argparse.Namespace) -> None:
    """Paths and ranges, before any model is loaded: one error line, nothing created."""
    from effrepro.outputs import check_input_file, check_output_dir, check_output_file

    positive = ("epochs", "batch_size", "max_len", "top_k", "depth", "max_new_tokens", "max_length",
                "tune_prompts", "tune_tokens")
    for name in positive:
        if getattr(args, name, 1) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= getattr(args, "holdout", 0) < 1:
        raise UsageError("--holdout is a share of the draft data in [0, 1)")
    if args.command in ("eval", "generate", "tune"):
        head = Path(args.head)
        if head.is_dir():  # a released EAGLE-2 head's folder: its weights file is what must be there
            from effrepro.specdec.eagle import RELEASED_FILES

            head = next((head / name for name in RELEASED_FILES if (head / name).exists()), head / RELEASED_FILES[1])
        check_input_file(head, "--head", "train one with `python -m effrepro.specdec train-eagle`, or give a "
                                         "released EAGLE-2 head (folder, pytorch_model.bin or model.safetensors)")
    if getattr(args, "out", None):
        (check_output_file if args.command == "tune" else check_output_dir)(args.out, "--out")
    questions = getattr(args, "questions", "mtbench")
    if questions not in ("mtbench", "mtbench-heldout", "mtbench-train"):
        from effrepro.specdec.questions import load_questions

        check_input_file(questions, "--questions", "give mtbench, mtbench-heldout or a question.jsonl")
        load_questions(questions)
    if getattr(args, "sharegpt_path", ""):
        check_input_file(args.sharegpt_path, "--sharegpt-path")
    if getattr(args, "prompts", ""):
        from effrepro.specdec.draft_data import PROMPT_SOURCES, _prompt_items, load_prompt_file

        for item in _prompt_items(args.prompts):
            if item in PROMPT_SOURCES:
                continue
            check_input_file(item, "--prompts", f"a prompt file, or one of {', '.join(PROMPT_SOURCES)}")
            try:
                found = load_prompt_file(item)
            except UnicodeDecodeError:
                raise UsageError(f"--prompts {item}: not a text prompt file (.txt, .jsonl or ShareGPT .json)"
                                 ) from None
            if not any(str(p).strip() for p in found):
                raise UsageError(f"--prompts {item}: the file holds no prompt")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.command == "data":
        from effrepro.specdec.draft_data import draft_data_folders

        config = _data_config(args)
        model, tokenizer = _load(args)
        for folder in draft_data_folders(model, tokenizer, config):
            print(folder)
            print((folder / "meta.json").read_text())
        return 0
    if args.command in ("train-eagle", "train-head"):
        from effrepro.specdec.eagle import train_eagle
        from effrepro.specdec.trainer import HeadTrainConfig

        data = _data_config(args)
        model, tokenizer = _load(args)
        train = HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                                lr=args.lr, warmup_steps=args.warmup_steps, schedule=args.schedule,
                                max_len=args.max_len, seed=args.seed, holdout=args.holdout,
                                draft_vocab=args.draft_vocab)
        path = train_eagle(model, tokenizer, args.out, data, train)
        print(path)
        return 0
    if args.command == "race":
        return _race(args)
    from effrepro.specdec.eagle import eagle_factory, eval_eagle, load_eagle_head
    from effrepro.specdec.target import TargetAdapter

    model, tokenizer = _load(args)
    target = TargetAdapter(model, max_length=args.max_length)
    if args.command == "eval":
        from effrepro.specdec.harness import EvalConfig
        from effrepro.specdec.protocol import TreeConfig

        config = EvalConfig(questions=args.questions, max_questions=args.max_questions, max_turns=args.max_turns,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            warmup=args.warmup, max_length=args.max_length, chat_template=args.chat_template)
        head = load_eagle_head(args.head, target)
        tree = _tree(args, target, tokenizer, head)
        extra = {}
        for text in args.extra_tree:
            try:
                k, depth, total = (int(v) for v in text.split(","))
            except ValueError:
                raise UsageError(f"--extra-tree {text!r}; give K,DEPTH,TOTAL such as 4,5,16") from None
            extra[f"eagle2-{k}-{depth}-{total}"] = eagle_factory(head, TreeConfig(k, depth, total))
        result = eval_eagle(target, tokenizer, head, tree, config, args.out, extra_methods=extra)
        print(json.dumps(result["summary"], indent=1))
        return 0
    if args.command == "tune":
        choice = _tune(args, target, tokenizer, load_eagle_head(args.head, target), cache=not args.no_cache)
        for row in choice.table[:10]:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        if args.out:
            from effrepro.report import atomic_write_text

            atomic_write_text(args.out, json.dumps(choice.as_dict(), indent=1, default=str))
        return 0
    return _generate(args, model, tokenizer, target)


def _race(args: argparse.Namespace) -> int:
    from effrepro.specdec.harness import EvalConfig
    from effrepro.specdec.race import available_methods, race, race_markdown

    known = list(available_methods())
    names = known if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"--methods {args.methods!r}: unknown {unknown}; installed: {', '.join(known)}")
    if args.target != "smollm2-135m":
        raise UsageError("race compares the miniature heads, trained for the embedded smollm2-135m; at full scale "
                         "run each paper's own evaluation on your target")
    config = EvalConfig(questions=args.questions, max_questions=args.max_questions, max_turns=args.max_turns,
                        max_new_tokens=args.max_new_tokens, warmup=args.warmup, max_length=args.max_length,
                        chat_template=args.chat_template)
    model, tokenizer = _load(args, args.max_length)
    print(race_markdown(race(model, tokenizer, names, config, args.out)))
    return 0


def _generate(args: argparse.Namespace, model: Any, tokenizer: Any, target: Any) -> int:
    from effrepro.specdec.draft_data import ChatFormatter
    from effrepro.specdec.eagle import eagle_factory, load_eagle_head
    from effrepro.specdec.generate import (
        GenerationConfig,
        autoregressive_generate,
        speculative_generate,
        stop_tokens,
    )
    from effrepro.specdec.verify import SamplingConfig

    if not args.prompt.strip():
        raise UsageError("empty prompt; pass --prompt 'some text'")
    head = load_eagle_head(args.head, target)
    tree = _tree(args, target, tokenizer, head)
    proposer = eagle_factory(head, tree)(target)
    prompt = ChatFormatter(tokenizer, args.chat_template).prompt_ids([{"role": "user", "content": args.prompt}])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, seed=args.seed,
                              sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p),
                              stop_token_ids=stop_tokens(model, tokenizer))
    emitted: list[int] = []

    def stream(tokens: list[int]) -> None:
        before = tokenizer.decode(emitted, skip_special_tokens=True)
        emitted.extend(tokens)
        sys.stdout.write(tokenizer.decode(emitted, skip_special_tokens=True)[len(before):])
        sys.stdout.flush()

    result = speculative_generate(target, proposer, prompt, config, streamer=stream)
    tau = result.cycle_tokens / max(result.cycles, 1)
    speed = result.new_tokens / max(result.wall_time, 1e-9)
    vocab = f"draft vocabulary {head.draft_vocab_size} of {head.vocab_size}"
    print(f"\n[{result.new_tokens} tokens, {result.cycles} cycles, tau {tau:.2f}, {result.wall_time:.2f} s, "
          f"{speed:.2f} tokens/s; tree top_k {tree.top_k} depth {tree.depth} total {tree.total_tokens}; {vocab}]")
    if not args.no_plain:
        plain = autoregressive_generate(target, prompt, config)
        plain_speed = plain.new_tokens / max(plain.wall_time, 1e-9)
        same = "same tokens" if plain.tokens == result.tokens else "different tokens (sampling)"
        print(f"[plain decoding: {plain.new_tokens} tokens, {plain.wall_time:.2f} s, {plain_speed:.2f} tokens/s; "
              f"speculative / plain = {speed / max(plain_speed, 1e-9):.2f}x; {same}]")
    return 0


def entry() -> None:
    run_cli(main)
