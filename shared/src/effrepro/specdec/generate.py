"""The generate loops: speculative (draft -> verify -> commit) and plain autoregressive decoding.

Both count tokens the same way (the emitted ids, the prefill's first token included) and stop by the same rules:
a stop token (emitted, then stop), ``max_new_tokens`` (output truncated to it), or the context budget
``max_length`` (the KV cache size; speculative decoding stops when the next tree would not fit, autoregressive
decoding when the next token would not). Speculative output is truncated at the first stop token or at
``max_new_tokens``, so at temperature 0 it equals plain greedy output token for token.

Per cycle the speculative loop records the accepted draft tokens, the tree's depth and the time spent drafting and
verifying. A tree whose ``extras["verifier"]`` is set (``fn(tree, logits, sampling, generator) -> Verdict``) is
verified by that function: proposers that *sample* their candidates need a rule with draft probabilities (e.g.
Jakiro*); every deterministic top-k proposer uses the engine's greedy / q = 1 rules. ``extras["sample_verifier"]``
is such a rule for temperature > 0 only (Gumiho's FTA: ``verify.rows_sample_verify`` on the padded rows).

Near-ties (greedy only): both loops record how many emitted tokens were decided by an argmax whose top-2 logit
gap was below ``verify.near_tie_tolerance(dtype)`` (``near_ties``) and the smallest gap (``min_logit_gap``).
Speculative and plain decoding compute the same logits in a different order (a tree pass vs one token at a
time), so at such a position the two may pick different tokens without any bug; a mismatch at a turn without a
near-tie on either side is a bug.
``GenerationResult.cycle_tokens`` is ``sum(accepted + 1)`` (what the official scripts call
``new_token``), ``cycles`` the verification passes (official ``idx + 1``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from effrepro.errors import UsageError
from effrepro.specdec.protocol import Proposer
from effrepro.specdec.target import TargetAdapter, stop_tokens  # noqa: F401 (stop_tokens: re-export)
from effrepro.specdec.verify import (
    SamplingConfig,
    greedy_verify_features,
    logit_gaps,
    near_tie_tolerance,
    sample_verify,
    select_token,
)

Streamer = Callable[[list[int]], None]  # called with the newly emitted token ids of each cycle


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    near_tie_tolerance: float | None = None  # None: verify.near_tie_tolerance(the target's dtype)

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
    # greedy only: positions whose argmax decided an emitted token with a top-2 logit gap below the tolerance, and
    # the smallest gap seen (None: not recorded, e.g. when sampling)
    near_ties: int = 0
    min_logit_gap: float | None = None
    near_tie_tolerance: float | None = None  # the gap below which a decision counts as a near-tie

    def record_gaps(self, gaps: torch.Tensor | None) -> None:
        """Count the decisions of ``gaps [n]`` (top-2 logit gaps) closer than ``near_tie_tolerance`` to a tie."""
        if gaps is None or gaps.numel() == 0 or self.near_tie_tolerance is None:
            return
        self.near_ties += int((gaps < self.near_tie_tolerance).sum())
        smallest = float(gaps.min())
        self.min_logit_gap = smallest if self.min_logit_gap is None else min(self.min_logit_gap, smallest)

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


def _start(target: TargetAdapter, ids: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None,
           streamer: Streamer | None) -> tuple[GenerationResult, torch.Tensor, int, str]:
    """Prefill, then the first token (from the prefill's last logits: counted, its near-tie recorded at greedy,
    streamed). Returns the result so far, the prefill's features, the token and the stop reason ("" = go on)."""
    logits, features = target.prefill(ids)
    token = select_token(logits[-1], config.sampling, generator)
    result = GenerationResult(tokens=[])
    if config.sampling.greedy:  # near-ties are recorded at greedy only
        tolerance = config.near_tie_tolerance
        result.near_tie_tolerance = near_tie_tolerance(target.dtype) if tolerance is None else tolerance
        result.record_gaps(logit_gaps(logits[-1:]))
    _, stop = _finish(result.tokens, [token], config)
    if streamer:
        streamer([token])
    return result, features, token, stop


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
    result, features, root, stop = _start(target, ids, config, generator, streamer)
    emitted = result.tokens
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
        if verifier is None and not config.sampling.greedy:
            verifier = tree.extras.get("sample_verifier")  # a rule for temperature > 0 only (Gumiho's FTA)
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
        result.record_gaps(verdict.gaps)
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
    result, _, token, stop = _start(target, ids, config, generator, streamer)
    emitted = result.tokens
    while not stop:
        if target.length + 1 > target.max_length:
            stop = "max_length"
            break
        t0 = time.perf_counter()
        logits, _ = target.decode(torch.tensor([token]))
        token = select_token(logits[-1], config.sampling, generator)
        result.verify_time += time.perf_counter() - t0
        result.record_gaps(logit_gaps(logits[-1:]))
        result.cycles += 1
        before = len(emitted)
        emitted, stop = _finish(emitted, [token], config)
        if streamer and len(emitted) > before:
            streamer([token])
    result.stopped_by = stop
    _sync(target.device)
    result.wall_time = time.perf_counter() - start
    return result
