"""The generate loops: speculative (draft -> verify -> commit) and plain autoregressive decoding.

Both count tokens the same way (the emitted ids, the prefill's first token included) and stop by the same rules:
a stop token (emitted, then stop), ``max_new_tokens`` (output truncated to it), or the context budget
``max_length`` (the KV cache size; speculative decoding stops when the next tree would not fit, autoregressive
decoding when the next token would not). Speculative output is truncated at the first stop token or at
``max_new_tokens``, so at temperature 0 it equals plain greedy output token for token.

Per cycle the speculative loop records the accepted draft tokens, the tree's depth and the time spent drafting and
verifying. A tree whose ``extras["verifier"]`` is set (``fn(tree, logits, sampling, generator) -> Verdict``) is
verified by that function: proposers that *sample* their candidates need a rule with draft probabilities (e.g.
Jakiro*); every deterministic top-k proposer uses the engine's greedy / q = 1 rules.
``GenerationResult.cycle_tokens`` is ``sum(accepted + 1)`` (what the official scripts call
``new_token``), ``cycles`` the verification passes (official ``idx + 1``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from effrepro.errors import UsageError
from effrepro.specdec.protocol import Proposer
from effrepro.specdec.target import TargetAdapter
from effrepro.specdec.verify import SamplingConfig, greedy_verify_features, sample_verify, select_token

Streamer = Callable[[list[int]], None]  # called with the newly emitted token ids of each cycle


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")


@dataclass
class GenerationResult:
    """Emitted tokens and the counters the harness turns into tau / speed metrics."""

    tokens: list[int]
    cycles: int = 0  # target forwards after the prefill (verification passes, or AR steps)
    accept_lengths: list[int] = field(default_factory=list)  # accepted draft tokens per cycle
    tree_depths: list[int] = field(default_factory=list)  # max depth of each cycle's tree
    draft_time: float = 0.0
    verify_time: float = 0.0
    wall_time: float = 0.0
    draft_forwards: int = 0  # sequential draft forwards over all cycles (when the proposer reports them)
    stopped_by: str = ""  # "stop_token" | "max_new_tokens" | "max_length"

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def cycle_tokens(self) -> int:
        return sum(a + 1 for a in self.accept_lengths)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(config: GenerationConfig) -> torch.Generator | None:
    if config.sampling.greedy:
        return None
    generator = torch.Generator()
    generator.manual_seed(0 if config.seed is None else config.seed)
    return generator


def _finish(emitted: list[int], fresh: list[int], config: GenerationConfig) -> tuple[list[int], str]:
    """Append ``fresh`` to ``emitted`` up to a stop token or ``max_new_tokens``; the reason when it stops there."""
    for token in fresh:
        if len(emitted) >= config.max_new_tokens:
            return emitted, "max_new_tokens"
        emitted.append(token)
        if token in config.stop_token_ids:
            return emitted, "stop_token"
    if len(emitted) >= config.max_new_tokens:
        return emitted, "max_new_tokens"
    return emitted, ""


def stop_tokens(model: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """End-of-turn ids: the tokenizer's EOS and the model's generation-config EOS (one id or a list)."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return tuple(sorted(ids))


def _check_prompt(target: TargetAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    ids = input_ids.flatten().long()
    if ids.numel() == 0:
        raise UsageError("empty prompt; give at least one token")
    if ids.numel() + 1 > target.max_length:
        raise UsageError(f"prompt of {ids.numel()} tokens is longer than the context budget "
                         f"(max_length={target.max_length}); shorten it or raise max_length")
    return ids


@torch.no_grad()
def speculative_generate(target: TargetAdapter, proposer: Proposer, input_ids: torch.Tensor,
                         config: GenerationConfig, streamer: Streamer | None = None) -> GenerationResult:
    """Draft-verify-commit until a stop rule fires (module docstring). ``input_ids [n]``, batch 1."""
    ids = _check_prompt(target, input_ids)
    generator = _generator(config)
    start = time.perf_counter()
    proposer.reset()
    logits, features = target.prefill(ids)
    root = select_token(logits[-1], config.sampling, generator)
    result = GenerationResult(tokens=[])
    emitted, stop = _finish(result.tokens, [root], config)
    if streamer:
        streamer(list(emitted))
    new_features = features
    next_ids = torch.cat([ids[1:].to(features.device), torch.tensor([root], device=features.device)])
    while not stop:
        t0 = time.perf_counter()
        tree = proposer.propose(new_features, next_ids)
        _sync(target.device)
        t1 = time.perf_counter()
        if target.length + tree.size > target.max_length:
            stop = "max_length"
            break
        verifier = tree.extras.get("verifier")  # a proposer with sampled candidates brings its own rule
        if verifier is None and config.sampling.greedy:  # the LM head only on the rows greedy reads
            _, tree_features = target.verify(tree, logits=False)
            verdict = greedy_verify_features(tree, tree_features, target.logits)
        else:
            tree_logits, tree_features = target.verify(tree)
            if verifier is not None:
                verdict = verifier(tree, tree_logits, config.sampling, generator)
            else:
                verdict = sample_verify(tree, tree_logits, config.sampling, generator)
        target.commit(verdict.nodes)
        _sync(target.device)
        t2 = time.perf_counter()
        result.draft_time += t1 - t0
        result.verify_time += t2 - t1
        result.cycles += 1
        result.accept_lengths.append(verdict.accepted)
        result.tree_depths.append(int(tree.depth.max()))
        result.draft_forwards += int(getattr(proposer, "last_forwards", 0) or 0)
        path_tokens = tree.tokens[verdict.nodes.to(tree.tokens.device)].cpu()
        fresh = path_tokens[1:].tolist() + [verdict.bonus_token]
        before = len(emitted)
        emitted, stop = _finish(emitted, fresh, config)
        if streamer and len(emitted) > before:
            streamer(emitted[before:])
        new_features = tree_features[verdict.nodes.to(tree_features.device)]
        next_ids = torch.tensor(fresh, device=new_features.device)
    result.stopped_by = stop
    _sync(target.device)
    result.wall_time = time.perf_counter() - start
    return result


@torch.no_grad()
def autoregressive_generate(target: TargetAdapter, input_ids: torch.Tensor, config: GenerationConfig,
                            streamer: Streamer | None = None) -> GenerationResult:
    """Plain decoding, one target forward per token, with the same adapter, counters and stop rules."""
    ids = _check_prompt(target, input_ids)
    generator = _generator(config)
    start = time.perf_counter()
    logits, _ = target.prefill(ids)
    token = select_token(logits[-1], config.sampling, generator)
    result = GenerationResult(tokens=[])
    emitted, stop = _finish(result.tokens, [token], config)
    if streamer:
        streamer([token])
    while not stop:
        if target.length + 1 > target.max_length:
            stop = "max_length"
            break
        t0 = time.perf_counter()
        logits, _ = target.decode(torch.tensor([token]))
        token = select_token(logits[-1], config.sampling, generator)
        result.verify_time += time.perf_counter() - t0
        result.cycles += 1
        before = len(emitted)
        emitted, stop = _finish(emitted, [token], config)
        if streamer and len(emitted) > before:
            streamer([token])
    result.stopped_by = stop
    _sync(target.device)
    result.wall_time = time.perf_counter() - start
    return result
