"""Evaluation harness: MT-bench (or any MT-bench-format question.jsonl), speculative methods vs plain decoding.

For every question the methods run **interleaved** (plain decoding first in a rotating order, so machine noise is
shared), each keeping its own multi-turn history (answers are fed back, as in the official ``gen_*_answer``
scripts). Every turn is a record ``{question_id, turn, new_tokens, cycles, cycle_tokens, idxs, accept_lengths,
tree_depths, wall_time, draft_time, verify_time, draft_forwards, tokens, near_ties, min_logit_gap,
near_tie_tolerance}``. Stop rules and token counting are the same for every method (``generate.py``).

Metrics (``summarize``):

* ``tau`` = sum of ``cycle_tokens`` / sum of ``cycles``: mean tokens produced per target verification forward
  (accepted drafts + the bonus token), pooled over all turns;
* ``tau_cycle`` = mean over questions of ``sum new / (sum idx + turns)`` and ``tau_script`` = mean over questions
  of ``sum new / sum idx`` (the official ``speed_accept_len.py``, biased: idx = cycles - 1) with ``new`` =
  ``cycle_tokens``;
* ``acceptance_by_depth[d]`` = P(draft token at depth d accepted | depth d-1 accepted and the tree reaches d);
* ``tokens_per_s`` = mean over questions of ``sum new_tokens / sum wall_time``, and ``speedup`` = its ratio to plain
  decoding's (ratio of means of per-question speeds, the official formula);
* ``draft_share`` / ``verify_share`` of the generation time, ms per cycle;
* ``cost_model_speedup`` = ``tau * t_step / (t_draft + t_verify)``: ``t_step`` (one plain decoding forward) and
  ``t_verify`` (one tree forward of the method's tree size) from paired micro-benchmarks (``effrepro.bench``) at
  the median context length, ``t_draft`` the method's measured median draft time per cycle;
* ``greedy_mismatches``: turns whose tokens differ from plain decoding (temperature 0 only; must be 0 up to
  near-ties); ``near_ties``: greedy decisions (emitted tokens) whose top-2 logit gap was below the dtype's
  tolerance, every method including ``plain`` (``generate.py``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from effrepro.errors import UsageError
from effrepro.specdec.draft_data import ChatFormatter
from effrepro.specdec.generate import (
    GenerationConfig,
    GenerationResult,
    autoregressive_generate,
    speculative_generate,
    stop_tokens,
)
from effrepro.specdec.protocol import Proposer
from effrepro.specdec.questions import load_questions, mtbench_split  # noqa: F401 (mtbench_split: re-export)
from effrepro.specdec.target import TargetAdapter
from effrepro.specdec.tree import tree_from_parents
from effrepro.specdec.verify import SamplingConfig

ProposerFactory = Callable[[TargetAdapter], Proposer]
BASELINE = "plain"


@dataclass
class EvalConfig:
    questions: str = "mtbench"  # "mtbench", "mtbench-heldout", "mtbench-train" or an MT-bench question.jsonl
    max_questions: int = 0  # 0 = all
    max_turns: int = 0  # 0 = all turns of each question
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    warmup: int = 3  # warm-up generations of the first question per method (32 tokens each), untimed
    seed: int = 0
    max_length: int = 2048
    chat_template: str = "auto"
    cost_model_repeats: int = 11


def turn_record(question_id: Any, turn: int, result: GenerationResult) -> dict[str, Any]:
    return {
        "question_id": question_id, "turn": turn, "new_tokens": result.new_tokens, "cycles": result.cycles,
        "cycle_tokens": result.cycle_tokens, "idxs": max(result.cycles - 1, 0),
        "accept_lengths": result.accept_lengths, "tree_depths": result.tree_depths,
        "wall_time": result.wall_time, "draft_time": result.draft_time, "verify_time": result.verify_time,
        "draft_forwards": result.draft_forwards, "stopped_by": result.stopped_by, "tokens": result.tokens,
        "near_ties": result.near_ties, "min_logit_gap": result.min_logit_gap,
        "near_tie_tolerance": result.near_tie_tolerance,
    }


def _by_question(records: list[dict]) -> dict[Any, list[dict]]:
    grouped: dict[Any, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["question_id"], []).append(record)
    return grouped


def tau_metrics(records: list[dict]) -> dict[str, float]:
    """``tau`` (pooled), ``tau_cycle`` and ``tau_script`` (per question, then mean): see the module docstring.

    ``new`` is ``cycle_tokens`` when present (else ``new_tokens``), ``idx`` is ``idxs``; records are turns.
    """
    new_total = sum(r.get("cycle_tokens", r["new_tokens"]) for r in records)
    cycles_total = sum(r["idxs"] + 1 for r in records)
    per_cycle, per_script = [], []
    for turns in _by_question(records).values():
        new = sum(r.get("cycle_tokens", r["new_tokens"]) for r in turns)
        idx = sum(r["idxs"] for r in turns)
        per_cycle.append(new / (idx + len(turns)))
        if idx > 0:
            per_script.append(new / idx)
    return {
        "tau": new_total / cycles_total if cycles_total else float("nan"),
        "tau_cycle": statistics.fmean(per_cycle) if per_cycle else float("nan"),
        "tau_script": statistics.fmean(per_script) if per_script else float("nan"),
    }


def speed_metrics(records: list[dict]) -> dict[str, float]:
    """Mean over questions of tokens/s (sum new_tokens / sum wall_time), and pooled tokens/s."""
    per_question = [sum(r["new_tokens"] for r in t) / max(sum(r["wall_time"] for r in t), 1e-12)
                    for t in _by_question(records).values()]
    total_time = sum(r["wall_time"] for r in records)
    return {"tokens_per_s": statistics.fmean(per_question) if per_question else float("nan"),
            "tokens_per_s_pooled": sum(r["new_tokens"] for r in records) / max(total_time, 1e-12)}


def speed_ratio(method_records: list[dict], baseline_records: list[dict]) -> float:
    """The official speedup: mean of per-question tokens/s of the method over that of the baseline."""
    return speed_metrics(method_records)["tokens_per_s"] / speed_metrics(baseline_records)["tokens_per_s"]


def acceptance_by_depth(records: list[dict]) -> list[float]:
    """Conditional acceptance per draft depth d = 1..max (see module docstring); NaN where never reached."""
    pairs = [(a, d) for r in records for a, d in zip(r["accept_lengths"], r["tree_depths"], strict=True)]
    if not pairs:
        return []
    rates = []
    for depth in range(1, max(d for _, d in pairs) + 1):
        reached = sum(1 for a, d in pairs if a >= depth - 1 and d >= depth)
        accepted = sum(1 for a, _ in pairs if a >= depth)
        rates.append(accepted / reached if reached else float("nan"))
    return rates


def time_split(records: list[dict]) -> dict[str, float]:
    wall = sum(r["wall_time"] for r in records)
    cycles = sum(r["cycles"] for r in records)
    draft = sum(r["draft_time"] for r in records)
    verify = sum(r["verify_time"] for r in records)
    per_cycle_draft = [r["draft_time"] / r["cycles"] for r in records if r["cycles"]]
    return {
        "draft_share": draft / wall if wall else float("nan"),
        "verify_share": verify / wall if wall else float("nan"),
        "draft_ms_per_cycle": 1e3 * draft / cycles if cycles else float("nan"),
        "verify_ms_per_cycle": 1e3 * verify / cycles if cycles else float("nan"),
        "draft_ms_per_cycle_median": 1e3 * statistics.median(per_cycle_draft) if per_cycle_draft else float("nan"),
        "draft_forwards_per_cycle": sum(r["draft_forwards"] for r in records) / cycles if cycles else float("nan"),
    }


def target_costs(target: TargetAdapter, context: int, tree_sizes: list[int], repeats: int = 11,
                 warmup: int = 2) -> dict[str, float]:
    """Median seconds of one plain decoding forward and of one tree forward of each size, at ``context``.

    Paired, interleaved micro-benchmarks (``effrepro.bench.paired_benchmark``). The tree is a chain of the given
    size (tree shape does not change the cost of a masked pass); the cache is cropped back after every call.
    """
    from effrepro.bench import cuda_sync, paired_benchmark

    vocab = target.vocab_size
    prompt = torch.randint(0, vocab, (max(context, 1),), generator=torch.Generator().manual_seed(0))
    target.prefill(prompt)
    base = target.length

    def step() -> None:
        target.decode(torch.tensor([1]))
        target.cache.crop(base)

    def verify_fn(size: int) -> Callable[[], None]:
        tree = tree_from_parents(torch.ones(size, dtype=torch.long), torch.arange(-1, size - 1))

        def run() -> None:
            target.verify(tree)
            target.commit(torch.tensor([0]))
            target.cache.crop(base)

        return run

    fns = {"step": step, **{f"verify_{n}": verify_fn(n) for n in sorted(set(tree_sizes))}}
    sync = cuda_sync if target.device.type == "cuda" else None
    stats = paired_benchmark(fns, warmup=warmup, repeats=repeats, sync=sync)
    return {name: s.median for name, s in stats.items()}


def summarize(records: dict[str, list[dict]], costs: dict[str, float] | None = None,
              tree_sizes: dict[str, int] | None = None, greedy: bool = True) -> dict[str, dict[str, Any]]:
    """Per-method metrics (module docstring) from the turn records of every method (``plain`` = baseline)."""
    summary: dict[str, dict[str, Any]] = {}
    baseline = records.get(BASELINE)
    for name, rows in records.items():
        item: dict[str, Any] = {"turns": len(rows), "new_tokens": sum(r["new_tokens"] for r in rows),
                                "near_ties": sum(r.get("near_ties", 0) for r in rows)}
        item.update(speed_metrics(rows))
        if name != BASELINE:
            item.update(tau_metrics(rows))
            item["acceptance_by_depth"] = acceptance_by_depth(rows)
            item.update(time_split(rows))
            if baseline:
                item["speedup"] = speed_ratio(rows, baseline)
                if greedy:
                    item["greedy_mismatches"] = sum(a["tokens"] != b["tokens"]
                                                    for a, b in zip(rows, baseline, strict=True))
            if costs and tree_sizes and f"verify_{tree_sizes[name]}" in costs:
                t_draft = item["draft_ms_per_cycle_median"] / 1e3
                t_verify = costs[f"verify_{tree_sizes[name]}"]
                item["cost_model_speedup"] = item["tau"] * costs["step"] / (t_draft + t_verify)
        summary[name] = item
    return summary


def evaluate(target: TargetAdapter, tokenizer: Any, methods: dict[str, ProposerFactory], config: EvalConfig,
             out_dir: str | Path | None = None, progress: bool = True, baseline: bool = True,
             first_number: int = 0) -> dict[str, Any]:
    """Run plain decoding and every method over the questions (interleaved), then ``summarize``.

    ``methods`` maps a name to a factory ``(target) -> Proposer``. Returns ``{"summary", "records", "costs",
    "config"}``; with ``out_dir``, writes ``<name>.jsonl`` (one record per turn, with the answer text) and
    ``summary.json``. ``baseline=False`` leaves plain decoding out (no speed-up, mismatch count or cost model then);
    ``first_number`` numbers the questions from there (the rotating order and the seeds), so questions evaluated
    in several calls are treated as one run would treat them.
    """
    if BASELINE in methods:
        raise UsageError(f"method name {BASELINE!r} is reserved for plain decoding")
    questions = load_questions(config.questions)
    if config.max_questions:
        questions = questions[: config.max_questions]
    formatter = ChatFormatter(tokenizer, config.chat_template)
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, sampling=sampling,
                                  stop_token_ids=stop_tokens(target.model, tokenizer), seed=config.seed)
    proposers = {name: factory(target) for name, factory in methods.items()}
    names = [BASELINE, *proposers] if baseline else list(proposers)

    def run(name: str, prompt: torch.Tensor, seed: int, max_new_tokens: int | None = None) -> GenerationResult:
        gen = GenerationConfig(**{**asdict(generation), "sampling": sampling, "seed": seed,
                                  "max_new_tokens": max_new_tokens or generation.max_new_tokens})
        if name == BASELINE:
            return autoregressive_generate(target, prompt, gen)
        return speculative_generate(target, proposers[name], prompt, gen)

    first_prompt = formatter.prompt_ids([{"role": "user", "content": questions[0]["turns"][0]}])
    for _ in range(config.warmup):  # warm-up generations are capped at 32 tokens (CPU budget)
        for name in names:
            run(name, first_prompt, config.seed, min(generation.max_new_tokens, 32))
    records: dict[str, list[dict]] = {name: [] for name in names}
    contexts: list[int] = []
    iterator: Any = list(enumerate(questions, start=first_number))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="eval", mininterval=5.0)
    for number, question in iterator:
        order = names[number % len(names):] + names[: number % len(names)]
        turns = question["turns"][: config.max_turns or None]
        for name in order:
            history: list[dict] = []
            for turn, text in enumerate(turns):
                history.append({"role": "user", "content": text})
                prompt = formatter.prompt_ids(history)
                if prompt.numel() + 1 >= config.max_length:
                    raise UsageError(f"question {question['question_id']} turn {turn + 1}: prompt of "
                                     f"{prompt.numel()} tokens exceeds max_length={config.max_length}")
                result = run(name, prompt, config.seed + number * 10 + turn)
                record = turn_record(question["question_id"], turn, result)
                answer_ids = [t for t in result.tokens if t not in generation.stop_token_ids]
                record["answer"] = tokenizer.decode(answer_ids, skip_special_tokens=True)
                records[name].append(record)
                history.append({"role": "assistant", "content": record["answer"]})
                if name == BASELINE:
                    contexts.append(prompt.numel() + result.new_tokens // 2)
    tree_sizes = {name: int(getattr(p, "total_tokens", 0) or 0) for name, p in proposers.items()}
    costs = None
    if config.cost_model_repeats > 0 and contexts and all(tree_sizes.values()):
        costs = target_costs(target, int(statistics.median(contexts)), list(tree_sizes.values()),
                             repeats=config.cost_model_repeats)
    summary = summarize(records, costs, tree_sizes, greedy=sampling.greedy)
    result = {"summary": summary, "records": records, "costs": costs, "config": asdict(config)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in records.items():
            with (out / f"{name}.jsonl").open("w") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
        (out / "summary.json").write_text(json.dumps({"summary": summary, "costs": costs,
                                                       "config": asdict(config)}, indent=1))
    return result
