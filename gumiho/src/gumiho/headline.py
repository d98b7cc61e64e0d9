"""More turns for the two headline comparisons (tau and tokens/s of Gumiho against EAGLE-2).

The main evaluation runs every decoder (plain decoding, both drafts as trees, FTA on, the top-1 chains) on 32
turns. The headline ratios need more turns than the other claims; running every decoder on them would cost three
times as much. This stage runs **only the EAGLE-2 and Gumiho trees** (the main evaluation's heads, tree budget,
generation settings and per-question rotating order) on further corpus instructions the draft data did not answer,
in cached blocks of turns, so a killed run resumes at the first missing block.

The engine's harness always decodes plain greedy too (its baseline); :func:`two_arm_turns` is the same loop
without it (same prompt rendering, stop tokens, seeds, warm-up and turn records).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from effrepro.errors import UsageError
from effrepro.specdec import EvalConfig, TargetAdapter
from effrepro.specdec.draft_data import ChatFormatter
from effrepro.specdec.generate import GenerationConfig, speculative_generate, stop_tokens
from effrepro.specdec.harness import turn_record
from effrepro.specdec.headcache import unseen_corpus_prompts
from effrepro.specdec.verify import SamplingConfig

ARMS = ("eagle2", "gumiho")  # the two methods of the headline claims


@dataclass(frozen=True)
class Block:
    """``prompts`` are the turns ``offset .. offset + len(prompts) - 1`` of the headline stage."""

    name: str
    offset: int
    prompts: tuple[str, ...]

    def key(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()[:16]
        return {"headline_offset": self.offset, "headline_turns": len(self.prompts), "prompts_sha256": digest,
                "arms": list(ARMS)}


def headline_blocks(data: Any, skip: int, count: int, size: int) -> list[Block]:
    """``count`` corpus instructions the draft data (built with ``data``) did not answer, after the first ``skip``
    (the main evaluation's extra held-out turns), in blocks of ``size``. Corpus instructions are not MT-bench
    questions, so the turns are disjoint from the draft data, the extra turns and the MT-bench evaluation."""
    if count <= 0:
        return []
    if size <= 0:
        raise UsageError(f"headline_block={size} must be positive")
    fresh = unseen_corpus_prompts(data, skip + count)[skip:]
    if len(fresh) < count:
        raise UsageError(f"headline_extra={count}, but the corpus holds only {len(fresh)} unseen instructions after "
                         f"the {skip} extra held-out ones")
    return [Block(f"eval_headline_{offset // size}", offset, tuple(fresh[offset: offset + size]))
            for offset in range(0, count, size)]


def two_arm_turns(target: TargetAdapter, tokenizer: Any, methods: dict[str, Callable[[TargetAdapter], Any]],
                  config: EvalConfig, block: Block) -> dict[str, list[dict[str, Any]]]:
    """Every method of ``methods`` on each prompt of ``block`` (one turn each), interleaved per prompt in an order
    that rotates with the prompt's global number (as the harness does), after ``config.warmup`` untimed
    generations. Returns the turn records per method, the same fields as the harness's."""
    formatter = ChatFormatter(tokenizer, config.chat_template)
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    stops = stop_tokens(target.model, tokenizer)
    proposers = {name: factory(target) for name, factory in methods.items()}
    names = list(proposers)

    def generate(name: str, prompt: Any, seed: int, max_new_tokens: int) -> Any:
        generation = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, stop_token_ids=stops,
                                      seed=seed)
        return speculative_generate(target, proposers[name], prompt, generation)

    prompts = [formatter.prompt_ids([{"role": "user", "content": text}]) for text in block.prompts]
    for prompt in prompts:
        if prompt.numel() + 1 >= config.max_length:
            raise UsageError(f"a headline prompt of {prompt.numel()} tokens exceeds max_length={config.max_length}")
    for _ in range(config.warmup):  # the harness's warm-up: 32 tokens of the first prompt per method, untimed
        for name in names:
            generate(name, prompts[0], config.seed, min(config.max_new_tokens, 32))
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number, prompt in enumerate(prompts, start=block.offset):
        for name in names[number % len(names):] + names[: number % len(names)]:
            result = generate(name, prompt, config.seed + number * 10, config.max_new_tokens)
            records[name].append(turn_record(f"headline-{number}", 0, result))
    return records
