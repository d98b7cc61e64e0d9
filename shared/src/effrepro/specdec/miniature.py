"""The CPU miniature of the EAGLE-2 baseline: self-distilled draft data -> head training -> held-out MT-bench eval.

    python -m effrepro.specdec.miniature --out runs/specdec_mini [--budget-min 25]

One process, sized for about 25 minutes on 2 quiet CPU cores with the embedded SmolLM2-135M-Instruct:

1. **data**: the target's own greedy answers (``self_max_new_tokens``) to ``--prompts`` (default: the 72 MT-bench
   questions that are *not* evaluated, then the distinct ShareGPT user turns, then text-corpus instructions);
   cached by ``draft_data_folders`` like any other draft data.
2. **train**: one EAGLE-2 head, AdamW with a short warm-up and cosine decay over a step count fitted to the time
   left (``--train-min``, measured on a few timed steps first), batches sampled with replacement.
3. **eval**: the 8 held-out MT-bench questions (``mtbench-heldout``, both turns), greedy, plain decoding
   interleaved with EAGLE-2 at depth 5 (``--tree``; extra trees with ``--extra-tree``) in the same run;
   ``greedy_mismatches`` must be 0.

Writes ``OUT/result.json`` (summaries, wall times per stage, machine, date) and the usual ``head.pt`` / eval
records.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from effrepro.errors import UsageError, run_cli


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "loadavg_end": os.getloadavg()}


def _time_steps(head: Any, lm_head: torch.Tensor, folders: list[Path], train: Any, steps: int = 3) -> float:
    """Seconds per training step (forward + backward + AdamW) on a throwaway copy of the head."""
    from effrepro.specdec.draft_data import DraftCollator, FeatureDataset
    from effrepro.specdec.protocol import LossContext

    data = FeatureDataset(folders, "train", train.holdout)
    collate = DraftCollator(train.noise_std, train.noise, train=True, max_len=train.max_len,
                            generator=torch.Generator().manual_seed(0))
    probe = copy.deepcopy(head)
    params = [p for p in probe.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr)
    ctx = LossContext(lm_head=probe.draft_lm_head(lm_head), weights=dict(train.loss_weights))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).tolist()
    times = []
    for step in range(steps + 1):
        picks = [order[(step * train.batch_size + i) % len(data)] for i in range(train.batch_size)]
        batch = collate([data[i] for i in picks])
        start = time.perf_counter()
        loss = probe.compute_loss(batch, ctx)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from effrepro.data import load_target
    from effrepro.specdec.draft_data import DraftDataConfig, draft_data_folders
    from effrepro.specdec.eagle import build_eagle_head, eagle_factory, eval_eagle, read_eagle_head
    from effrepro.specdec.harness import EvalConfig
    from effrepro.specdec.protocol import TreeConfig
    from effrepro.specdec.target import TargetAdapter
    from effrepro.specdec.trainer import HeadTrainConfig, setup_draft_vocab, train_head

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    walls: dict[str, float] = {}
    torch.manual_seed(args.seed)
    model, tokenizer = load_target(args.target)
    model.eval()

    t0 = time.perf_counter()
    data = DraftDataConfig(target=str(args.target), sharegpt=args.sharegpt, self_generated=args.self_generated,
                           self_max_new_tokens=args.self_max_new_tokens, max_len=args.max_len,
                           prompts=args.prompts)
    folders = draft_data_folders(model, tokenizer, data, progress=args.progress)
    for extra in parse_extra_data(args.extra_data, data):
        folders += draft_data_folders(model, tokenizer, extra, progress=args.progress)
    walls["data_s"] = time.perf_counter() - t0
    loads = {"after_data": os.getloadavg()}  # 1/5/15-min load: ~1-2 on a quiet 2-core machine running this alone
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]

    t0 = time.perf_counter()
    embed = model.get_input_embeddings().weight
    # --init-head: continued training from a trained head (checked against this target)
    head = read_eagle_head(args.init_head, embed) if args.init_head else build_eagle_head(model.config, embed)
    lm_head = model.get_output_embeddings().weight.detach().float()
    setup_draft_vocab(head, folders, args.draft_vocab)  # before the probe: it times the reduced soft-CE
    probe = HeadTrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, max_len=args.max_len,
                            holdout=args.holdout)
    step_s = _time_steps(head, lm_head, folders, probe)
    if args.steps:
        steps = args.steps
    else:
        left = args.budget_min * 60 - (time.perf_counter() - started) - args.eval_min * 60
        steps = int(min(args.train_min * 60, left) / (step_s * 1.08))  # ~8%: held-out eval + checkpoint
        if steps < 20:
            raise UsageError(f"only {steps} training steps fit the budget ({step_s:.1f} s a step); raise "
                             "--budget-min or shrink the data")
    epochs = max(1, args.epochs)
    train = HeadTrainConfig(epochs=epochs, batch_size=args.batch_size, steps_per_epoch=max(1, steps // epochs),
                            lr=args.lr, warmup_steps=max(1, int(args.warmup * steps)), schedule="cosine",
                            max_len=args.max_len, holdout=args.holdout, seed=args.seed, log_every=10,
                            draft_vocab=args.draft_vocab)
    history = train_head(head, lm_head, folders, train, out, progress=args.progress, resume=not args.no_resume)
    walls["train_s"] = time.perf_counter() - t0
    loads["after_train"] = os.getloadavg()

    t0 = time.perf_counter()
    target = TargetAdapter(model, max_length=args.max_length)
    head = head.to(target.device, target.dtype).eval()
    config = EvalConfig(questions=args.questions, max_new_tokens=args.eval_max_new_tokens, warmup=1,
                        max_length=args.max_length, cost_model_repeats=5, max_questions=args.max_questions)
    tree, tuning = _main_tree(args.tree, target, tokenizer, head)
    extra = {}
    for text in args.extra_tree:
        ek, ed, et = (int(v) for v in text.split(","))
        extra[f"eagle2-{ek}-{ed}-{et}"] = eagle_factory(head, TreeConfig(ek, ed, et))
    result = eval_eagle(target, tokenizer, head, tree, config, out / "eval",
                        extra_methods=extra, progress=args.progress)
    walls["eval_s"] = time.perf_counter() - t0
    walls["total_s"] = time.perf_counter() - started
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(),
        "args": vars(args), "data": [{k: m.get(k) for k in ("samples", "tokens", "supervised_tokens", "prompts")}
                                     for m in metas],
        "train": {"steps": history["steps"], "step_s_probe": step_s, "history": history["history"]},
        "tree": asdict(tree), "tuning": tuning, "draft_vocab": head.draft_vocab_size,
        "summary": result["summary"], "costs": result.get("costs"), "walls": walls,
        "loadavg": loads,
    }
    (out / "result.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _main_tree(text: str, target: Any, tokenizer: Any, head: Any) -> tuple[Any, dict[str, Any] | None]:
    """``K,DEPTH,TOTAL`` or ``auto``: the tree tuned for this machine (``effrepro.specdec.tuning``)."""
    from effrepro.specdec.eagle import eagle_factory
    from effrepro.specdec.protocol import TreeConfig
    from effrepro.specdec.tuning import tuned_tree

    if text != "auto":
        try:
            k, depth, total = (int(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"--tree {text!r}; give K,DEPTH,TOTAL such as 10,5,60, or auto") from None
        return TreeConfig(k, depth, total), None
    choice = tuned_tree(target, tokenizer, head, lambda tree: eagle_factory(head, tree)(target), cache=False,
                        log=print)
    return choice.tree, {**choice.as_dict(), "table": choice.table[:20]}


ALL_PROMPTS = 1_000_000  # ``self_generated`` of an --extra-data source: every prompt (0 would mean no source)


def parse_extra_data(specs: list[str], base: Any) -> list[Any]:
    """``--extra-data PROMPTS:TEMPERATURE:REPEATS:MAX_NEW_TOKENS`` -> one more self-generated source each (all of
    its prompts answered), with the rest of ``base`` (target, ``max_len``...)."""
    from dataclasses import replace

    sources = []
    for spec in specs:
        parts = spec.rsplit(":", 3)
        try:
            prompts, temperature, repeats, new_tokens = parts[0], float(parts[1]), int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            raise UsageError(f"--extra-data {spec!r}: expected PROMPTS:TEMPERATURE:REPEATS:MAX_NEW_TOKENS, e.g. "
                             "mtbench-train-chat:0.7:2:96") from None
        if new_tokens < 1:
            raise UsageError(f"--extra-data {spec!r}: MAX_NEW_TOKENS must be >= 1")
        sources.append(replace(base, sharegpt=0, self_generated=ALL_PROMPTS, prompts=prompts,
                               self_temperature=temperature, self_repeats=repeats, self_max_new_tokens=new_tokens))
    return sources


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effrepro.specdec.miniature", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--prompts", default="mtbench-train,sharegpt,corpus")
    parser.add_argument("--sharegpt", type=int, default=0, help="fixed-answer ShareGPT conversations as well")
    parser.add_argument("--self-generated", type=int, default=256)
    parser.add_argument("--self-max-new-tokens", type=int, default=128)
    parser.add_argument("--extra-data", action="append", default=[], metavar="PROMPTS:T:REPEATS:MAX_NEW",
                        help="one more self-generated source (all its prompts; T > 0 samples REPEATS answers each)")
    parser.add_argument("--init-head", default="", help="continue training from this head.pt")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the steps")
    parser.add_argument("--epochs", type=int, default=2, help="checkpoints (resume points) over the steps")
    parser.add_argument("--steps", type=int, default=0, help="0 = fit to the time budget")
    parser.add_argument("--holdout", type=float, default=0.03)
    parser.add_argument("--budget-min", type=float, default=24.0, help="whole run, data to eval")
    parser.add_argument("--train-min", type=float, default=11.0, help="at most this much training")
    parser.add_argument("--eval-min", type=float, default=5.0, help="reserved for the evaluation")
    parser.add_argument("--questions", default="mtbench-heldout")
    parser.add_argument("--max-questions", type=int, default=0)
    parser.add_argument("--eval-max-new-tokens", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--tree", default="10,5,60",
                        help="K,DEPTH,TOTAL of the main EAGLE-2 tree, or 'auto' (tuned for this machine)")
    parser.add_argument("--draft-vocab", type=int, default=8192,
                        help="the draft scores the K most frequent target tokens of the data (0 = full vocabulary)")
    parser.add_argument("--extra-tree", action="append", default=[], metavar="K,DEPTH,TOTAL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args)
    brief = {name: {k: s.get(k) for k in ("tau", "tau_script", "speedup", "greedy_mismatches", "tokens_per_s",
                                          "acceptance_by_depth", "cost_model_speedup") if k in s}
             for name, s in report["summary"].items()}
    print(json.dumps({"walls": report["walls"], "summary": brief}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
