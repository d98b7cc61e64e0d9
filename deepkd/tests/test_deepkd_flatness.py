"""The flatness probe of the miniature: filter-normalised random directions (Li et al., 2018) and the loss rise
along them."""

import torch
from deepkd.miniature import filter_normalised_directions, flatness
from deepkd.models import build_model
from torch.nn import functional as F


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp_student", 100, "mnist").eval()


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(64, 1, 28, 56, generator=gen), torch.randint(0, 100, (64,), generator=gen)


def test_directions_match_each_rows_norm_and_skip_vectors():
    model = _model()
    (direction,) = filter_normalised_directions(model, seed=3, count=1)
    for p, d in zip(model.parameters(), direction):
        if p.dim() < 2:
            assert torch.count_nonzero(d) == 0
        else:
            torch.testing.assert_close(d.reshape(len(d), -1).norm(dim=1), p.reshape(len(p), -1).norm(dim=1))


def test_same_seed_same_raw_draws_for_every_model():
    """Two models of a seed are probed along the same Gaussian draws: the unit directions per row coincide."""
    a, b = _model(0), _model(1)
    da, db = filter_normalised_directions(a, 7, 2), filter_normalised_directions(b, 7, 2)
    other = filter_normalised_directions(a, 8, 1)[0]
    for k in range(2):
        for pa, x, y in zip(a.parameters(), da[k], db[k]):
            if pa.dim() > 1:
                unit = [t.reshape(len(t), -1) / t.reshape(len(t), -1).norm(dim=1, keepdim=True) for t in (x, y)]
                torch.testing.assert_close(unit[0], unit[1])
    assert not torch.allclose(da[0][0], other[0])


def test_flatness_restores_the_weights_and_measures_a_rise():
    model = _model()
    images, labels = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(30):  # fit the batch a little so the point is near a minimum
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    result = flatness(model, images, labels, seed=0, radii=(0.0, 0.2, 0.8), directions=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert result["rise_0"] == 0.0
    assert 0 < result["rise_0.2"] < result["rise_0.8"]
    with torch.no_grad():
        assert abs(float(F.cross_entropy(model(images), labels)) - result["loss"]) < 1e-6
