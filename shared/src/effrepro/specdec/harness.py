"""Evaluation harness: MT-bench or a local question file, tau, per-depth acceptance, speed; issue 6."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effrepro.specdec.protocol import Proposer
from effrepro.specdec.target import TargetAdapter

ProposerFactory = Callable[[TargetAdapter], Proposer]


@dataclass
class EvalConfig:
    questions: str = "mtbench"  # "mtbench" or a path to an MT-bench-format question.jsonl
    max_questions: int = 0  # 0 = all
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    warmup: int = 3
    seed: int = 0
    max_length: int = 2048


def load_questions(source: str) -> list[dict]:
    raise NotImplementedError


def tau_metrics(records: list[dict]) -> dict[str, float]:
    """tau per cycle (sum new / sum cycles) and the official script's sum new / sum idx, per question then mean."""
    raise NotImplementedError


def evaluate(target: TargetAdapter, tokenizer: Any, methods: dict[str, ProposerFactory], config: EvalConfig,
             out_dir: Path | None = None) -> dict[str, Any]:
    raise NotImplementedError
