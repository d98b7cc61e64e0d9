import math

import pytest
import torch
from double_rounding.double_rounding import (
    ALRS,
    BitSampler,
    eta,
    gradient_term,
    roulette_probs,
    sensitive_layers,
    sigma_at,
)
from effrepro.errors import UsageError


def test_eta_table():
    assert [eta(d) for d in range(7)] == pytest.approx([1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001])
    with pytest.raises(ValueError):
        eta(-1)


def test_alrs_modes_on_known_values():
    grads = [[torch.tensor(3e-4), torch.tensor(-1e-4)], [torch.tensor(2.0), None], [None, None]]
    # layer terms: max|clip(g)| = 3e-4; clip_norm(2.0 -> 1.0) = 1.0; no grads -> 0: mean = (3e-4 + 1 + 0) / 3
    assert gradient_term(grads) == pytest.approx((3e-4 + 1.0) / 3)
    small = [[torch.tensor(1e-4)], [torch.tensor(-3e-4)]]
    literal = ALRS("literal", 8)
    assert literal.scale_lr(5e-4, 4, small) == pytest.approx(0.01 * (5e-4 - 2e-4))
    assert literal.scale_lr(5e-4, 2, grads) == 0.0  # negative bracket clamped, never a negative LR
    assert literal.clamp_rate() == {4: 0.0, 2: 1.0}
    assert ALRS("simple", 8).scale_lr(5e-4, 2, grads) == pytest.approx(0.001 * 5e-4)
    assert ALRS("simple", 4).scale_lr(5e-4, 3, grads) == pytest.approx(0.5 * 5e-4)
    assert ALRS("off", 8).scale_lr(5e-4, 2, grads) == 5e-4
    state = literal.state_dict()
    fresh = ALRS("literal", 8)
    fresh.load_state_dict(state)
    assert fresh.clamp_rate() == literal.clamp_rate()
    with pytest.raises(UsageError, match="alrs"):
        ALRS("lars", 8)


def test_roulette_probabilities_and_ramp():
    assert roulette_probs([8, 6, 4, 2], True) == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert roulette_probs([4, 3, 2], True) == pytest.approx([4 / 9, 3 / 9, 2 / 9])
    assert roulette_probs([8, 6, 4, 2], False) == [0.25] * 4
    assert [sigma_at(e, 4) for e in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert sensitive_layers({"a": 1.0, "b": 3.0, "c": 2.0}) == {"a": False, "b": True, "c": True}


def test_hasb_sampling_frequencies():
    sampler = BitSampler(["insensitive", "sensitive"], [8, 6, 4, 2], {"insensitive": 0.1, "sensitive": 5.0})
    gen = torch.Generator().manual_seed(0)
    n = 100_000
    counts = {layer: dict.fromkeys([8, 6, 4, 2], 0) for layer in sampler.layers}
    wide = BitSampler([f"s{i}" for i in range(1000)] + [f"i{i}" for i in range(1000)], [8, 6, 4, 2],
                      {**{f"s{i}": 5.0 for i in range(1000)}, **{f"i{i}": 0.1 for i in range(1000)}})
    for _ in range(n // 1000):  # 1000 sensitive + 1000 insensitive layers per draw
        draw = wide.sample(8, sigma=1.0, generator=gen)
        for name, bits in draw.items():
            counts["sensitive" if name[0] == "s" else "insensitive"][bits] += 1
    for layer, expected in (("sensitive", [0.4, 0.3, 0.2, 0.1]), ("insensitive", [0.25] * 4)):
        freqs = [counts[layer][b] / n for b in (8, 6, 4, 2)]
        assert freqs == pytest.approx(expected, abs=0.005)
        chi2 = sum((counts[layer][b] - n * p) ** 2 / (n * p) for b, p in zip((8, 6, 4, 2), expected))
        assert chi2 < 11.34  # chi-square, 3 dof, p = 0.01
    assert sampler.sample(6, sigma=0.0, generator=gen) == {"insensitive": 6, "sensitive": 6}
    kept = sum(BitSampler(["x"], [8, 2], None, "uniform").sample(8, 0.3, gen)["x"] == 8 for _ in range(4000))
    assert kept / 4000 == pytest.approx(0.7 + 0.3 * 0.5, abs=0.03)
    with pytest.raises(UsageError, match="Hessian trace"):
        BitSampler(["a"], [8, 2], {}, "hasb")
    assert not math.isnan(sum(sampler.cumulative.flatten().tolist()))
