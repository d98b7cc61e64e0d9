"""The chain-acceptance model behind Gumiho's design (the paper's motivation): why early draft positions matter most.

With per-position conditional acceptance rates ``a_1..a_n`` (``a_k`` = P(token k accepted | 1..k-1 accepted)),
the expected tokens per draft-verify cycle of a chain draft is ``tau = 1 + sum_k prod_{i<=k} a_i`` (the 1 is the
bonus token the target always yields), and ``d tau / d a_k = sum_{m>=k} prod_{i<=m, i!=k} a_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chain_tau(acceptance: Sequence[float]) -> float:
    """``1 + sum_k prod_{i<=k} a_i``."""
    tau, running = 1.0, 1.0
    for a in acceptance:
        running *= float(a)
        tau += running
    return tau


def marginal_value(acceptance: Sequence[float]) -> list[float]:
    """``d tau / d a_k`` for every position k (the value of one more unit of accuracy at position k)."""
    rates = [float(a) for a in acceptance]
    values = []
    for k in range(len(rates)):
        total, running = 0.0, 1.0
        for m, a in enumerate(rates):
            running *= 1.0 if m == k else a
            if m >= k:
                total += running
        values.append(total)
    return values


def simulate_chain_tau(acceptance: Sequence[float], trials: int, generator: torch.Generator | None = None) -> float:
    """Monte-Carlo of the same quantity: accept position k with probability ``a_k`` until the first rejection."""
    rates = torch.tensor([float(a) for a in acceptance], dtype=torch.float64)
    draws = torch.rand(trials, len(rates), generator=generator, dtype=torch.float64) < rates
    accepted = draws.long().cumprod(dim=1).sum(dim=1)
    return 1.0 + accepted.double().mean().item()


def conditional_acceptance(accept_lengths: Sequence[int], depth: int) -> list[float]:
    """Per-position conditional acceptance ``a_k`` from chain-mode accept lengths (draft tokens accepted per cycle).

    ``a_k`` = #cycles with >= k accepted / #cycles with >= k-1 accepted. With these, ``chain_tau(a)`` equals the
    measured ``1 + mean(accept_length)`` exactly (a consistency check the reproduce run reports).
    """
    lengths = torch.tensor(list(accept_lengths), dtype=torch.float64)
    rates = []
    for k in range(1, depth + 1):
        reached = (lengths >= k - 1).sum().item()
        rates.append((lengths >= k).sum().item() / reached if reached else 0.0)
    return rates
