"""Per-turn statistics with intervals over turns (effrepro.specdec.turns) on hand-written records."""

import math

import pytest
from effrepro.specdec.harness import acceptance_by_depth, tau_metrics
from effrepro.specdec.turns import acceptance_counts, acceptance_difference, mismatch_rate, ratio_of_sums


def _turn(qid, tokens, cycles, wall, accept=(), depths=(), ids=(1, 2)):
    return {"question_id": qid, "turn": 0, "cycle_tokens": tokens, "new_tokens": tokens, "cycles": cycles,
            "idxs": cycles - 1, "wall_time": wall, "accept_lengths": list(accept), "tree_depths": list(depths),
            "tokens": list(ids)}


def test_ratio_of_sums_is_the_pooled_ratio_and_resamples_pairs():
    a = [_turn(i, 12, 6, 1.0) for i in range(6)]  # tau 2.0 every turn
    b = [_turn(i, 12, 12 if i % 2 else 8, 1.0) for i in range(6)]  # tau 1.0 / 1.5
    est = ratio_of_sums(a, b, "cycle_tokens", "cycles")
    assert est.value == pytest.approx(2.0 / (72 / 60))
    assert est.n == 6 and est.ci[0] < est.value < est.ci[1]
    assert est.ci[0] >= 2.0 / 1.5 - 1e-9 and est.ci[1] <= 2.0 + 1e-9  # bounded by the per-turn extremes
    assert est.details["a"] == pytest.approx(2.0) and tau_metrics(a)["tau"] == pytest.approx(est.details["a"])
    same = ratio_of_sums(a, a, "new_tokens", "wall_time")
    assert same.value == 1.0 and same.ci == (1.0, 1.0)


def test_ratio_of_sums_refuses_unpaired_turns():
    with pytest.raises(ValueError, match="same turns"):
        ratio_of_sums([_turn(1, 5, 5, 1.0)], [_turn(2, 5, 5, 1.0)], "cycle_tokens", "cycles")


def test_acceptance_counts_match_the_harness_by_depth():
    record = _turn(1, 10, 4, 1.0, accept=[2, 0, 1, 3], depths=[3, 3, 3, 3])
    rates = acceptance_by_depth([record])
    for depth, rate in enumerate(rates, 1):
        accepted, reached = acceptance_counts(record, [depth])
        assert accepted / reached == pytest.approx(rate)
    assert acceptance_counts(record, [2, 3]) == (2 + 1, 3 + 2)


def test_acceptance_difference_can_be_negative_and_nan_when_unreached():
    records = [_turn(i, 5, 4, 1.0, accept=[0, 0, 1, 2], depths=[3] * 4) for i in range(4)]
    est = acceptance_difference(records, [1], records, [2])  # a1 = 2/4, a2 = 1/2 -> 0
    assert est.value == pytest.approx(0.0)
    late = [_turn(i, 5, 4, 1.0, accept=[0, 0, 2, 2], depths=[3] * 4) for i in range(4)]
    assert acceptance_difference(late, [1], late, [2]).value == pytest.approx(0.5 - 1.0)  # a1 = 2/4, a2 = 2/2
    paired = acceptance_difference(late, [1], records, [1])  # two methods, same turns: a1 0.5 vs 0.5
    assert paired.value == pytest.approx(0.0) and paired.n == 4
    unreached = [_turn(i, 4, 4, 1.0, accept=[0] * 4, depths=[3] * 4) for i in range(3)]
    assert math.isnan(acceptance_difference(unreached, [1], unreached, [2]).value)


def test_mismatch_rate_counts_turns_exactly():
    plain = [_turn(i, 2, 2, 1.0, ids=(1, 2)) for i in range(4)]
    good = [_turn(i, 2, 1, 1.0, ids=(1, 2)) for i in range(4)]
    bad = [*good[:3], _turn(3, 2, 1, 1.0, ids=(1, 3))]
    assert mismatch_rate([good, good], plain).value == 0.0
    est = mismatch_rate([good, bad], plain)
    assert est.value == pytest.approx(1 / 8) and est.n == 8 and est.ci == (1 / 8, 1 / 8)
    assert est.details["mismatched_turns"] == 1
