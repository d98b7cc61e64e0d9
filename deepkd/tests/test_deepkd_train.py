"""Training / evaluation entry points on tiny MNIST-100 runs: resume, checkpoints, schedules, bad input."""

import math

import pytest
import torch
from deepkd.cli import main, run
from deepkd.config import SolverConfig, TrainConfig
from deepkd.engine import lr_factor
from deepkd.train import load_teacher, train
from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.train import save_checkpoint


def _cfg(**over):
    base = ["data.dataset=mnist100", "data.train_size=192", "data.test_size=96", "data.batch_size=32",
            "data.test_batch_size=96", "data.workers=0", "solver.epochs=2", "solver.decay_epochs=[1]",
            "distiller.warmup=1"]
    return load_config(None, TrainConfig, base + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = _cfg(student="mlp_tiny", teacher="null", **{"distiller.name": "none", "solver.method": "sgd",
                                                        "solver.epochs": 1})
    result = train(cfg, out, progress=False)
    assert 0 <= result["top1"] <= 100
    return str(out / "student.pt")


def _deepkd_cfg(ckpt, **over):
    return _cfg(student="mlp_tiny", teacher="mlp_tiny", teacher_ckpt=ckpt, **{
        "solver.method": "deepkd", "mask.mode": "dynamic", "mask.k0": 10, "mask.start_epoch": 0,
        "mask.end_epoch": 2, **over})


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, teacher_ckpt):
    straight = train(_deepkd_cfg(teacher_ckpt), tmp_path / "a", progress=False)

    def crash(distiller, finished):
        if finished == 2:
            raise KeyboardInterrupt  # after epoch 1 was checkpointed, before epoch 2 is
        return {}

    with pytest.raises(KeyboardInterrupt):
        train(_deepkd_cfg(teacher_ckpt), tmp_path / "b", progress=False, probe=crash)
    resumed = train(_deepkd_cfg(teacher_ckpt), tmp_path / "b", progress=False)
    assert resumed["top1"] == straight["top1"]
    a = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "student.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert {"momentum_buffer_tog", "momentum_buffer_tcg", "momentum_buffer_ncg"} <= set(state["optimizer"]["state"][0])


def test_a_trained_student_loads_as_a_teacher_and_bad_teachers_are_clear_errors(tmp_path, teacher_ckpt):
    model = load_teacher(teacher_ckpt, "mlp_tiny", 100, "mnist")
    assert model(torch.rand(2, 1, 28, 56)).shape == (2, 100)
    with pytest.raises(UsageError, match="holds a mlp_tiny model, but teacher=mlp_student"):
        load_teacher(teacher_ckpt, "mlp_student", 100, "mnist")
    state = torch.load(teacher_ckpt, weights_only=True)["model"]
    save_checkpoint(tmp_path / "plain.pt", {"model": state})
    with pytest.raises(UsageError, match="predicts 100 classes, but the run has 10"):
        load_teacher(tmp_path / "plain.pt", "mlp_tiny", 10, "mnist")
    with pytest.raises(UsageError, match="is it a mlp_student checkpoint"):
        load_teacher(tmp_path / "plain.pt", "mlp_student", 100, "mnist")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="corrupt"):
        load_teacher(tmp_path / "junk.pt", "mlp_tiny", 100, "mnist")


def test_each_method_trains_end_to_end(tmp_path, teacher_ckpt):
    for method in ("sgd", "dot"):
        cfg = _cfg(student="mlp_tiny", teacher="mlp_tiny", teacher_ckpt=teacher_ckpt,
                   **{"solver.method": method, "distiller.name": "kd", "solver.epochs": 1})
        result = train(cfg, tmp_path / method, progress=False)
        assert math.isfinite(result["top1"])


def test_lr_schedules_follow_the_released_epoch_indexing():
    step = SolverConfig()
    assert lr_factor(150, step) == 1.0 and lr_factor(151, step) == pytest.approx(0.1)
    assert lr_factor(211, step) == pytest.approx(1e-3)
    cos = SolverConfig(lr=0.2, lr_schedule="cosine", epochs=100, warmup_epochs=20, warmup_factor=0.1, min_lr=5e-5)
    assert lr_factor(1, cos) == pytest.approx(0.1 + 0.9 / 20)
    assert lr_factor(20, cos) == pytest.approx(1.0)
    assert lr_factor(100, cos) * 0.2 == pytest.approx(5e-5)


def test_bad_input_gets_one_clear_error(tmp_path, teacher_ckpt, capsys):
    with pytest.raises(UsageError, match="cifar100 needs a data path"):
        train(_cfg(**{"data.dataset": "cifar100", "data.root": "null", "teacher_ckpt": teacher_ckpt}), tmp_path)
    with pytest.raises(UsageError, match="CIFAR-100 not found"):
        train(_cfg(**{"data.dataset": "cifar100", "data.root": str(tmp_path), "distiller.name": "none",
                      "teacher": "null", "student": "resnet8"}), tmp_path / "c")
    with pytest.raises(UsageError, match="unknown mnist model 'resnet8x4'"):
        train(_cfg(teacher_ckpt=teacher_ckpt, teacher="mlp_tiny"), tmp_path / "d")
    with pytest.raises(UsageError, match="larger than the class count"):
        train(_deepkd_cfg(teacher_ckpt, **{"mask.k0": 150}), tmp_path / "e")
    with pytest.raises(UsageError, match="solver.method='adam' is not valid"):
        train(_cfg(**{"solver.method": "adam"}), tmp_path / "f")
    with pytest.raises(UsageError, match="unknown config key 'solver.momentun'"):
        run(["train", "--out", str(tmp_path / "g"), "solver.momentun=0.9"])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "h"), "distiller.name=fitnet", "data.dataset=mnist100",
              f"teacher_ckpt={teacher_ckpt}", "teacher=mlp_tiny", "student=mlp_tiny"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown distiller 'fitnet'; choose one of: none, kd, dkd, mlkd, crld"]


CONFIGS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_validate(path):
    from deepkd.config import validate

    cfg = load_config(path, TrainConfig)
    validate(cfg)
    assert cfg.solver.momentum_mode == "code"


def test_full_scale_reproduction_without_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR100_ROOT", raising=False)
    with pytest.raises(UsageError, match=r"cifar100 needs a data path: pass --data"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path)])
    with pytest.raises(UsageError, match="CIFAR-100 not found"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path), "--data", str(tmp_path)])
