"""Config files with ``_base_`` inheritance (effrepro.mm.files) and the torchrun launcher (effrepro.mm.runner)."""

import pytest

pytest.importorskip("mmengine")


def test_delta_files_load_back_as_the_full_configs(tmp_path):
    from effrepro.mm.files import config_delta, write_family
    from mmengine.config import Config

    base = dict(model=dict(backbone=dict(type="A", depth=50, init_cfg=None), neck=dict(in_channels=[1, 2])),
                optim_wrapper=dict(optimizer=dict(lr=0.1), clip_grad=dict(max_norm=35)), work_dir="w", t=(0, 1))
    variants = {
        "same.py": base,
        "small.py": dict(base, model=dict(backbone=dict(type="A", depth=18, init_cfg=dict(checkpoint="c.pt")),
                                          neck=dict(in_channels=[3, 4])), work_dir="w18"),
        "fewer_keys.py": dict(base, optim_wrapper=dict(optimizer=dict(lr=0.1), clip_grad=None),
                              model=dict(backbone=dict(type="B"), neck=dict(in_channels=[1, 2]))),
    }
    written = write_family(tmp_path, "base.py", base, variants, "regen")
    assert [p.name for p in written] == ["base.py", "same.py", "small.py", "fewer_keys.py"]
    for name, cfg in variants.items():
        assert Config.fromfile(tmp_path / name).to_dict() == Config(cfg).to_dict(), name
    assert config_delta(base, base) == {}
    delta = config_delta(base, variants["small.py"])
    assert delta["model"]["backbone"] == {"depth": 18, "init_cfg": {"_delete_": True, "checkpoint": "c.pt"}}
    assert config_delta(base, variants["fewer_keys.py"])["model"]["backbone"] == {"_delete_": True, "type": "B"}
    with pytest.raises(ValueError, match="work_dir"):
        config_delta(base, {k: v for k, v in base.items() if k != "work_dir"})


def test_launcher_follows_torchrun(monkeypatch):
    from effrepro.mm.runner import detection_config, with_launcher

    cfg = detection_config({}, "data", "w", 1, 0.1, check=False)
    assert cfg["optim_wrapper"]["clip_grad"] == dict(max_norm=35, norm_type=2)  # the miniatures' default
    assert detection_config({}, "data", "w", 1, 0.1, check=False, clip_grad=None)["optim_wrapper"]["clip_grad"] is None
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "launcher" not in with_launcher(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    launched = with_launcher(cfg)
    assert launched["launcher"] == "pytorch" and launched["env_cfg"]["dist_cfg"]["backend"] in ("gloo", "nccl")
    assert cfg["env_cfg"]["dist_cfg"]["backend"] == "nccl" and "launcher" not in cfg  # the input is not changed
    assert with_launcher({**cfg, "launcher": "slurm"})["launcher"] == "slurm"
