"""Fixtures of the Double Rounding training tests: a tiny MNIST config and the data, untrained FP32 weights and
calibration batch that the quantised models of those tests start from."""

import pytest
import torch
from double_rounding.config import Config
from double_rounding.data import build_loaders
from double_rounding.models import build_float_model
from effrepro.config import load_config
from effrepro.train import dist_setup, seed_everything


def _tiny_cfg(weight_scales: str = "shared", epochs: int = 2, **multi) -> Config:
    return load_config({
        "model": {"width": 4},
        "data": {"dataset": "mnist", "train_size": 128, "test_size": 100, "batch_size": 32},
        "quant": {"calib_images": 32, "weight_scales": weight_scales},
        "multi": {"epochs": epochs, "lr": 5e-4, "log_every": 1000, **multi},
    }, Config)


@pytest.fixture(scope="session")
def tiny_cfg():
    """``tiny_cfg(weight_scales="shared", epochs=2, **multi)``: the tiny config with ``multi`` overrides."""
    return _tiny_cfg


@pytest.fixture(scope="module")
def tiny_data():
    """``(dist, train loader, test loader, FP32 state dict, calibration batch)`` of the tiny config (seed 0)."""
    torch.set_num_threads(1)
    cfg = _tiny_cfg()
    dist = dist_setup("cpu")
    train, test = build_loaders(cfg.data, dist, 0)
    seed_everything(0)
    fp32 = build_float_model(cfg.model).state_dict()
    calib = next(iter(train))[0]
    return dist, train, test, fp32, calib
