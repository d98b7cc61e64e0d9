import pytest
import torch
from gumiho.theory import chain_tau, conditional_acceptance, marginal_value, simulate_chain_tau


@pytest.mark.parametrize(
    ("rates", "expected"),
    [([0.7] * 7, 3.1412), ([0.8, 0.8] + [0.66] * 5, 3.5268), ([0.6, 0.6] + [0.74] * 5, 2.7573)],
)
def test_chain_tau_worked_numbers(rates, expected):
    # the same total accuracy moved early raises tau, moved late lowers it
    assert chain_tau(rates) == pytest.approx(expected, abs=1e-4)


def test_marginal_value_worked_numbers_and_ordering():
    values = marginal_value([0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4])
    assert values == pytest.approx([2.539, 1.759, 1.119, 0.610, 0.301, 0.129, 0.042], abs=1e-3)
    assert all(a > b for a, b in zip(values, values[1:]))


def test_marginal_value_is_the_derivative():
    rates = [0.9, 0.3, 0.75, 0.6]
    eps = 1e-6
    for k, value in enumerate(marginal_value(rates)):
        bumped = list(rates)
        bumped[k] += eps
        assert (chain_tau(bumped) - chain_tau(rates)) / eps == pytest.approx(value, rel=1e-4)


def test_monte_carlo_matches_closed_form():
    generator = torch.Generator().manual_seed(0)
    rates = torch.rand(7, generator=generator).tolist()
    assert simulate_chain_tau(rates, 100_000, generator) == pytest.approx(chain_tau(rates), abs=0.01)


def test_conditional_acceptance_reproduces_measured_tau():
    lengths = [0, 3, 7, 2, 2, 5, 1, 0, 7, 4]
    rates = conditional_acceptance(lengths, depth=7)
    assert chain_tau(rates) == pytest.approx(1 + sum(lengths) / len(lengths), abs=1e-12)
    assert rates[0] == pytest.approx(8 / 10)
