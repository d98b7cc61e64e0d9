"""Our PartialNet reproduces the official implementation's outputs (fixture built by the official code, see
``data/make_official_fixture.py``), and the deploy form reproduces ours, in float64."""

from pathlib import Path

import pytest
import torch
from partialnet.models import PartialNet, checkpoint_filter_fn

FIXTURE = Path(__file__).with_name("data") / "official_tiny.torch"


def _official_state(case: dict) -> dict[str, torch.Tensor]:
    state, offset = {}, 0
    for key, shape, is_float in case["layout"]:
        n = 1
        for size in shape:
            n *= size
        values = case["flat"][offset:offset + n].double().reshape(shape)
        state[key] = values if is_float else values.round().long()
        offset += n
    return state


@pytest.mark.parametrize("name", ["spatial", "plain"])
def test_matches_official_outputs_and_fuses(name):
    case = torch.load(FIXTURE, weights_only=True)[name]
    kwargs = dict(case["kwargs"], act_layer=case["kwargs"]["act_layer"].lower())
    model = PartialNet(num_classes=10, feature_dim=32, **kwargs).double().eval()
    lightning = {"state_dict": {f"model.{k}": v for k, v in _official_state(case).items()}}  # as train_test.py saves
    model.load_state_dict(checkpoint_filter_fn(lightning))
    x = case["input"].double()
    with torch.no_grad():
        ours = model(x)
        torch.testing.assert_close(ours, case["output"], rtol=0, atol=1e-10)
        fused = model.fuse()(x)
    torch.testing.assert_close(fused, case["output"], rtol=0, atol=1e-10)
