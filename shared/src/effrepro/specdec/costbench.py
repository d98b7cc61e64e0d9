"""What the reduced draft vocabulary and row-wise verification save, measured on the real target.

    python -m effrepro.specdec.costbench --out runs/costbench.json [--data DIR ...] [--vocab 8192,16384]

Interleaved rounds (every arm once per round, rotating order), medians with 95 % bootstrap intervals over the
rounds and the paired ratio of means against the full vocabulary:

1. **draft**: one EAGLE-2 draft round (catch-up pass over one new position + ``depth`` tree passes) at a
   ``--context``-token context, for the full vocabulary and each ``K`` (a freshly initialised head: the cost does
   not depend on the weights);
2. **train**: one head training step (forward, EAGLE loss with the soft-CE over V or K tokens, backward, AdamW)
   on the same batch of ``--batch-size`` samples of the draft data;
3. **verify**: one verification of a real EAGLE-2 tree of ``--tree`` with the LM head on all N nodes + greedy
   verification, vs. the pass without the head + ``greedy_verify_features`` (the LM head on the rows read);
4. **coverage**: share of the held-out split's supervised tokens inside the ``K`` most frequent tokens of the
   training split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from effrepro.errors import UsageError, run_cli


def _interleaved(fns: dict[str, Any], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        order = names[number % len(names):] + names[: number % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def _summary(samples: dict[str, list[float]], baseline: str) -> dict[str, Any]:
    import numpy as np

    from effrepro.stats import bootstrap, paired_ratio

    out: dict[str, Any] = {}
    for name, values in samples.items():
        median = bootstrap(values, lambda d: float(np.median(d)))
        item = {"median_ms": 1e3 * median.value, "median_ci_ms": [1e3 * median.ci[0], 1e3 * median.ci[1]],
                "n": len(values)}
        if name != baseline:
            ratio = paired_ratio(values, samples[baseline])
            item.update(ratio_to_full=ratio.value, ratio_ci=list(ratio.ci))
        out[name] = item
    return out


def coverage(folders: list[Path], vocab_size: int, sizes: list[int], holdout: float = 0.05) -> dict[str, float]:
    """Share of the held-out supervised tokens covered by the ``K`` most frequent tokens of the training split."""
    from effrepro.specdec.draft_data import FeatureDataset
    from effrepro.specdec.vocab import frequent_tokens

    def counts(split: str) -> torch.Tensor:
        total = torch.zeros(vocab_size, dtype=torch.long)
        data = FeatureDataset(folders, split, holdout)
        for index in range(len(data)):
            sample = data[index]
            total += torch.bincount(sample["input_ids"].long()[sample["loss_mask"].bool()], minlength=vocab_size)
        return total

    train, test = counts("train"), counts("test")
    out = {"train_tokens": int(train.sum()), "test_tokens": int(test.sum()),
           "distinct_train_tokens": int((train > 0).sum())}
    for size in sizes:
        inside = frequent_tokens(train, size)
        out[f"coverage_{size}"] = float(test[inside].sum()) / max(int(test.sum()), 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from effrepro.data import load_target
    from effrepro.specdec.draft_data import DraftCollator, DraftDataConfig, FeatureDataset, draft_data_folders
    from effrepro.specdec.eagle import build_eagle_head, eagle_factory
    from effrepro.specdec.protocol import LossContext, TreeConfig
    from effrepro.specdec.target import TargetAdapter
    from effrepro.specdec.verify import greedy_verify, greedy_verify_features
    from effrepro.specdec.vocab import frequent_tokens, token_counts

    torch.manual_seed(0)
    model, tokenizer = load_target(args.target)
    model.eval()
    folders = [Path(p) for p in args.data] or draft_data_folders(
        model, tokenizer, DraftDataConfig(target=args.target, sharegpt=48, max_len=1024), progress=False)
    sizes = [int(v) for v in args.vocab.split(",")]
    vocab = int(model.config.vocab_size)
    counts = token_counts(folders, vocab)
    embed = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight.detach().float()
    heads = {"full": build_eagle_head(model.config, embed).eval()}
    for size in sizes:
        head = build_eagle_head(model.config, embed).eval()
        head.load_state_dict(heads["full"].state_dict())
        head.set_draft_vocab(frequent_tokens(counts, size))
        heads[f"k{size}"] = head
    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "args": vars(args),
                              "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
                              "data": [str(f) for f in folders]}
    report["coverage"] = coverage(folders, vocab, sizes)

    # 1. draft rounds
    k, depth, total = (int(v) for v in args.tree.split(","))
    tree = TreeConfig(k, depth, total)
    target = TargetAdapter(model, max_length=args.context + 512)
    prompt = torch.randint(0, vocab, (args.context,), generator=torch.Generator().manual_seed(0))
    _, features = target.prefill(prompt)
    next_ids = torch.cat([prompt[1:], torch.tensor([int(prompt[0])])])
    proposers = {name: eagle_factory(head, tree)(target) for name, head in heads.items()}
    for proposer in proposers.values():
        proposer.propose(features[:-1], next_ids[:-1])  # context in the draft KV

    def draft_round(proposer: Any) -> Any:
        def call() -> None:
            proposer.propose(features[-1:], next_ids[-1:])
            proposer.cache.crop(args.context - 1)

        return call

    with torch.no_grad():
        draft = _interleaved({name: draft_round(p) for name, p in proposers.items()}, args.rounds)
    report["draft_round"] = _summary(draft, "full")
    print("draft", json.dumps(report["draft_round"]), flush=True)

    # 3. verification of a real tree: LM head on all nodes vs on the rows greedy verification reads
    example = proposers["full"].propose(features[-1:], next_ids[-1:])
    proposers["full"].cache.crop(args.context - 1)
    inner = int(torch.unique(example.parents[example.parents >= 0]).numel())

    def verify(lazy: bool) -> Any:
        def call() -> None:
            with torch.no_grad():
                if lazy:
                    _, feats = target.verify(example, logits=False)
                    verdict = greedy_verify_features(example, feats, target.logits)
                else:
                    logits, _ = target.verify(example)
                    verdict = greedy_verify(example, logits)
                target.commit(verdict.nodes)
                target.cache.crop(args.context)

        return call

    checks = _interleaved({"full": verify(False), "rows_read": verify(True)}, args.rounds)
    report["verify"] = {"tree_nodes": example.size, "inner_nodes": inner, **_summary(checks, "full")}
    print("verify", json.dumps(report["verify"]), flush=True)

    # 2. training steps on one fixed batch
    data = FeatureDataset(folders, "train", 0.05)
    collate = DraftCollator(0.2, "uniform", train=True, max_len=args.max_len,
                            generator=torch.Generator().manual_seed(0))
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[: args.batch_size].tolist()
    batch = collate([data[i] for i in picks])
    report["train_batch"] = {"samples": len(picks), "supervised_rows": int(batch.loss_mask.sum()),
                             "length": int(batch.input_ids.shape[1])}

    def train_step(head: Any) -> Any:
        trainable = head.train()
        params = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        ctx = LossContext(lm_head=trainable.draft_lm_head(lm_head))

        def call() -> None:
            loss = trainable.compute_loss(batch, ctx)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return call

    train_heads = {name: build_eagle_head(model.config, embed) for name in heads}
    for name, head in train_heads.items():
        head.load_state_dict(heads["full"].state_dict(), strict=False)
        if heads[name].draft_vocab is not None:
            head.set_draft_vocab(heads[name].draft_vocab)
    steps = _interleaved({name: train_step(h) for name, h in train_heads.items()}, args.train_rounds)
    report["train_step"] = _summary(steps, "full")
    print("train", json.dumps(report["train_step"]), flush=True)
    report["loadavg_end"] = os.getloadavg()
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effrepro.specdec.costbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--data", action="append", default=[], help="draft-data folder(s) (default: 48 ShareGPT)")
    parser.add_argument("--vocab", default="8192,16384", help="reduced vocabulary sizes, comma-separated")
    parser.add_argument("--tree", default="10,5,60", help="K,DEPTH,TOTAL of the drafted and verified tree")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--train-rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=1024)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rounds < 2 or args.train_rounds < 2:
        raise UsageError("--rounds and --train-rounds must be >= 2 (intervals need two rounds)")
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("coverage", "train_batch")}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
