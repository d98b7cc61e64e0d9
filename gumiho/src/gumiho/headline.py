"""More turns for the two headline comparisons (tau and tokens/s of Gumiho against EAGLE-2).

The main evaluation runs every decoder (plain decoding, both drafts as trees, FTA on, the top-1 chains) on 32
turns. The headline ratios need more turns than the other claims; running every decoder on them would cost three
times as much. This stage runs **only the EAGLE-2 and Gumiho trees** (the main evaluation's heads, tree budget,
generation settings and per-question rotating order) on further corpus instructions the draft data did not answer,
in cached blocks of turns, so a killed run resumes at the first missing block.

:func:`two_arm_turns` runs the engine's harness without its plain-decoding baseline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.specdec import EvalConfig, TargetAdapter
from effrepro.specdec.harness import evaluate
from effrepro.specdec.headcache import unseen_corpus_prompts

from gumiho.data import write_questions

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
                  config: EvalConfig, block: Block, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every method of ``methods`` on each prompt of ``block`` (one turn each): the engine's harness without plain
    decoding, the prompts numbered from the block's offset (so the rotating order and the seeds are those of one
    run over every block). The block's questions are written to ``folder``. Returns the turn records per method."""
    questions = [{"question_id": f"headline-{block.offset + i}", "category": "corpus", "turns": [prompt]}
                 for i, prompt in enumerate(block.prompts)]
    path = write_questions(questions, folder / f"{block.name}_questions.jsonl")
    single = replace(config, questions=str(path), max_questions=0, max_turns=1)
    return evaluate(target, tokenizer, methods, single, progress=False, baseline=False,
                    first_number=block.offset)["records"]
