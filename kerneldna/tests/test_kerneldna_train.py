"""Recipe, data and training loop: schedule, whole-epoch iteration, learning, resume, checkpoint checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.train import load_checkpoint, save_checkpoint
from kerneldna.data import TensorBatches, clutter_digits
from kerneldna.models import build_model
from kerneldna.train import TrainConfig, load_trained, make_optimizer, train, warmup_cosine


def _tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(arch="mini", variant="kerneldna", dataset="clutter", epochs=2, batch_size=32, lr=0.05,
                train_size=96, test_size=64, mini_widths=[4, 8, 8], mini_stem_stride=2, out=str(tmp_path / "run"),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_cosine_matches_the_official_formula():
    f = warmup_cosine(20, 300, 0.1)
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0) and f(20) == pytest.approx(1.0)
    assert f(160) == pytest.approx(0.5 * (1 + math.cos(math.pi * 140 / 280)))
    g = warmup_cosine(0, 90, 0.1, eta_min=0.01)
    assert g(0) == pytest.approx(1.0) and g(90) == pytest.approx(0.1)


def test_optimizer_gets_each_shared_parameter_once_and_optional_no_decay_group():
    model = build_model("mini", "kerneldna", widths=(4, 8, 8), in_chans=3, num_classes=10)
    opt = make_optimizer(model, _tiny_cfg(Path("/tmp")))
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    opt2 = make_optimizer(model, _tiny_cfg(Path("/tmp"), wd_static_attn=False))
    assert opt2.param_groups[1]["weight_decay"] == 0.0 and len(opt2.param_groups[1]["params"]) == 4


def test_tensor_batches_cover_every_sample_once_and_shard_disjointly():
    x, y = torch.arange(10).float(), torch.arange(10)
    seen = torch.cat([b for _, b in TensorBatches(x, y, 3, seed=1)])
    assert sorted(seen.tolist()) == list(range(10)) and len(TensorBatches(x, y, 3)) == 4
    shards = [torch.cat([b for _, b in TensorBatches(x, y, 2, seed=1, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_clutter_marks_the_target_channel_and_is_deterministic():
    images, labels = clutter_digits("val", 64, seed=3)
    again, labels2 = clutter_digits("val", 64, seed=3)
    assert torch.equal(images, again) and torch.equal(labels, labels2)
    assert images.shape == (64, 3, 32, 32)
    floor = images.amin(dim=(2, 3))  # the cue lifts the whole informative channel by 0.3
    assert torch.all((floor > 0.29).sum(1) == 1)


def test_clutter16_is_the_same_task_at_half_resolution():
    images, labels = clutter_digits("val", 64, seed=3, scale=2)
    assert images.shape == (64, 3, 16, 16) and torch.equal(images, clutter_digits("val", 64, seed=3, scale=2)[0])
    assert torch.all((images.amin(dim=(2, 3)) > 0.29).sum(1) == 1) and images.max() <= 1.3 + 1e-6
    assert not torch.equal(labels, clutter_digits("val", 64, seed=3)[1])  # its own random stream


def test_parammatched_mini_has_kerneldna_depth_and_parameter_count():
    def params(model):
        return sum(p.numel() for p in model.parameters())

    kdna, same = build_model("mini", "kerneldna", 10, 3), build_model("mini", "samedepth", 10, 3)
    matched = build_model("mini", "parammatched", 10, 3)
    assert abs(params(matched) / params(kdna) - 1) < 0.05 < 1 - params(kdna) / params(same)
    assert len(matched.layer2) == len(same.layer2) == 3 and matched.layer3[0].conv1.out_channels < 64
    with pytest.raises(UsageError, match="mini net only"):
        build_model("resnet18", "parammatched")


def test_eval_every_skips_the_middle_evaluations(tmp_path):
    result = train(_tiny_cfg(tmp_path, epochs=3, train_size=64, eval_every=2))
    assert ["eval_top1" in row for row in result["history"]] == [False, True, True]


def test_whole_epoch_is_trained_loss_falls_and_static_attentions_move(tmp_path):
    torch.manual_seed(0)
    cfg = _tiny_cfg(tmp_path, epochs=10, train_size=96, lr=0.1)
    result = train(cfg)
    assert result["steps_per_epoch"] == 3 and result["global_step"] == 30  # no one-batch-per-epoch bug
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < losses[0]
    stage = result["model"].layer2
    assert stage.static_filter_attn.abs().max() > 0 and stage.static_spatial_attn.abs().max() > 0


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import shutil

    import effrepro.train.trainer as trainer_module

    full = train(_tiny_cfg(tmp_path / "a", epochs=2))["model"].state_dict()
    saved = trainer_module.save_checkpoint

    def save_and_keep_epoch1(path, obj):  # keep the epoch-1 checkpoint: the state an interrupted run leaves
        if obj["epoch"] == 1:
            saved(path.parent / "epoch1.pt", obj)
        return saved(path, obj)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_and_keep_epoch1)
    train(_tiny_cfg(tmp_path / "b", epochs=2))
    monkeypatch.undo()
    run = tmp_path / "b" / "run"
    shutil.copy(run / "epoch1.pt", run / "last.pt")
    resumed = train(_tiny_cfg(tmp_path / "b", epochs=2))
    assert resumed["global_step"] == 6
    for key, value in resumed["model"].state_dict().items():
        assert torch.equal(value, full[key]), key


def test_load_trained_and_mismatched_sharing_is_a_clear_error(tmp_path):
    train(_tiny_cfg(tmp_path, epochs=1))
    path = tmp_path / "run" / "last.pt"
    model, config = load_trained(path)
    assert config["variant"] == "kerneldna" and model.layer2.conv2.weight.shape == (8, 8, 3, 3)
    state = load_checkpoint(path)
    state["config"]["variant"] = "baseline"  # a checkpoint whose sharing groups disagree with its model
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, state)
    with pytest.raises(UsageError, match="different sharing groups at layer 'layer2"):
        load_trained(bad)
    with pytest.raises(UsageError, match="not found"):
        load_trained(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="corrupt"):
        load_trained(tmp_path / "junk.pt")


def test_bad_config_values_are_rejected(tmp_path):
    from effrepro.config import load_config

    with pytest.raises(UsageError, match="unknown config key 'lrr'"):
        load_config({"lrr": 0.1}, TrainConfig)
    with pytest.raises(UsageError, match="warmup_epochs"):
        load_config({"epochs": 5, "warmup_epochs": 5}, TrainConfig)
    with pytest.raises(UsageError, match="needs a path"):
        train(_tiny_cfg(tmp_path, arch="resnet18", dataset="imagenet", data=None))


@pytest.mark.slow
def test_torchrun_ddp_two_processes_count_every_eval_sample_once(tmp_path):
    import json
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "kerneldna.cli", "train",
           "--out", str(tmp_path / "ddp"), "arch=mini", "dataset=clutter", "epochs=1", "batch_size=64",
           "train_size=128", "test_size=90", "mini_widths=[4,8,8]", "mini_stem_stride=2", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    finals = [json.loads(line)["final"] for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(finals) == 2 and all(f["eval_count"] == 90 for f in finals)  # sharded, not duplicated
    assert finals[0]["eval_top1"] == finals[1]["eval_top1"]
    from effrepro.train import dist_setup
    from kerneldna.eval import evaluate
    from kerneldna.train import TrainConfig, load_trained, make_loaders

    model, config = load_trained(tmp_path / "ddp" / "last.pt")
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__ and v is not None})
    _, loader = make_loaders(cfg, dist_setup("cpu"))
    single = evaluate(model, loader)
    assert single["count"] == 90 and single["top1"] == pytest.approx(finals[0]["eval_top1"])
    assert single["loss"] == pytest.approx(finals[0]["eval_loss"], rel=1e-5)


def test_per_iteration_schedule_reaches_eta_min_at_the_end(tmp_path):
    cfg = _tiny_cfg(tmp_path, epochs=2, schedule_per="step", train_size=96)
    train(cfg)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["scheduler"]["last_epoch"] == 6  # 2 epochs x 3 iterations
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
