from dataclasses import dataclass, field

import pytest
from effrepro.config import config_to_dict, load_config, save_config
from effrepro.errors import UsageError


@dataclass
class Optim:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    epochs: int = 3
    name: str = "x"
    bits: list[int] = field(default_factory=lambda: [8, 4])
    optim: Optim = field(default_factory=Optim)
    seed: int | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\noptim:\n  lr: 1\n  betas: [0.5, 0.6]\n")
    cfg = load_config(path, Cfg, ["name=run1", "optim.lr=0.01", "bits=[8, 6, 4, 2]", "seed=7"])
    assert cfg.epochs == 5 and cfg.name == "run1" and cfg.bits == [8, 6, 4, 2] and cfg.seed == 7
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float) and cfg.optim.betas == (0.5, 0.6)
    assert config_to_dict(load_config(None, Cfg))["optim"]["lr"] == 0.1


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(None, Cfg, ["bits=[8, 6, 4, 2]", "optim.betas=[0.5, 0.6]", "seed=7"])
    path = save_config(cfg, tmp_path / "job" / "config.yaml")  # the folder is made
    assert load_config(path, Cfg) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left


@pytest.mark.parametrize(
    ("source", "overrides", "message"),
    [
        ({"epochz": 3}, [], "unknown config key 'epochz'"),
        ({}, ["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        ({}, ["epochs"], "must look like key=value"),
        ({"epochs": "many"}, [], "expects int"),
        ({"optim": 3}, [], "must be a mapping"),
    ],
)
def test_bad_config_is_a_usage_error(source, overrides, message):
    with pytest.raises(UsageError, match=message):
        load_config(source, Cfg, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "missing.yaml", Cfg)
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", Cfg)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UsageError, match="mapping"):
        load_config(tmp_path / "list.yaml", Cfg)
