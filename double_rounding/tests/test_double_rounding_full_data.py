"""``reproduce --scale full`` end to end on tiny local data in the paper's layouts: CIFAR-10 (python pickles,
``cifar-10-batches-py/``) with the ResNet-20 config, and an ImageNet folder (``train/<class>/*.png``,
``val/<class>/*.png``) with a tiny-width model; missing or damaged data is one clear error. The train driver CLI
on the same data under ``torchrun`` with 2 CPU processes (gloo): each rank trains on its half of the data, rank 0
writes the int8 file, which evaluates at every precision."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from double_rounding.cli import run
from double_rounding.models import ModelConfig, build_float_model
from effrepro.errors import UsageError
from effrepro.quant import load_int8
from effrepro.report import read_claims
from effrepro.testing import tiny_imagenet_folder
from effrepro.train import load_checkpoint

TINY = ["fp32.epochs=1", "multi.epochs=1", "data.batch_size=8", "data.eval_batch_size=16", "data.workers=0",
        "quant.calib_images=8"]


def _cifar10(root, per_batch=8, n_test=16):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in names:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


@pytest.fixture
def cifar_ok(monkeypatch, tmp_path):
    """A tiny CIFAR-10 copy; torchvision checks the MD5 sums of the real files, so the copy passes only with this
    patch."""
    import torchvision.datasets.cifar as c

    monkeypatch.setattr(c.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(c, "check_integrity", lambda *a, **k: True)
    return _cifar10(tmp_path / "cifar")


def _full(out, config, *sets, arms=None, plan=()):
    plan = [*([f"full_arms=[{','.join(arms)}]"] if arms else []), *plan]
    argv = ["reproduce", *[x for p in plan for x in ("--set", p)], "--scale", "full", "--out", str(out), "--threads",
            "1", "--config", config, *[f"--config-set={s}" for s in sets]]
    assert run(argv) == 0
    return read_claims(out / "claims.json")


def test_resnet20_is_the_cifar_resnet():
    model = build_float_model(ModelConfig(arch="resnet20", in_channels=3, input_size=[32, 32]))
    assert sum(p.numel() for p in model.parameters()) == 269_722  # 0.27 M: He et al.'s ResNet-20 (option A)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 19
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_full_scale_on_tiny_cifar10_with_resnet20(tmp_path, cifar_ok):
    out = tmp_path / "full"
    document = _full(out, "double_rounding/configs/resnet20_cifar10.yaml", f"data.root={cifar_ok}", "model.width=4",
                     *TINY, arms=["ours", "separate", "no_alrs", "kd"])
    claims = {c["id"]: c for c in document["claims"]}
    assert set(claims) == {f"full_w{b}_minus_fp32" for b in (8, 6, 4, 2)} | {
        f"full_joint_minus_separate_w{b}" for b in (8, 4, 2)} | {"full_alrs_gain_w2", "full_kd_gain_w2"}
    assert all(c["n"] == 16 for c in claims.values())  # the paired unit: the 16 test images
    facts = {f["id"]: f["value"] for f in document["facts"]}
    # 40 training images in batches of 8: 5 batches, one step per precision (joint) or 4 epochs (separate)
    assert facts["full_optimizer_steps_joint"] == facts["full_optimizer_steps_separate"] == 20
    artefact = load_int8(out / "runs" / "ours" / "multi" / "model.int8.pt")
    assert artefact["meta"]["model"]["arch"] == "resnet20" and artefact["available_bits"] == [8, 6, 4, 2]


@pytest.mark.slow
def test_full_scale_on_a_tiny_imagenet_folder(tmp_path):
    root = tiny_imagenet_folder(tmp_path / "imagenet", (4, 3), "png")
    out = tmp_path / "full"
    sets = ["model.arch=tiny_cnn", "model.width=4", "model.num_classes=2", f"data.root={root}", *TINY,
            "data.batch_size=4"]
    document = _full(out, "double_rounding/configs/resnet18_imagenet.yaml", *sets)
    assert {c["id"] for c in document["claims"]} == {f"full_w{b}_minus_fp32" for b in (8, 6, 4, 2)} | {
        "full_unshared_minus_shared_w2", "full_unshared_minus_shared_w4"}
    assert all(c["n"] == 6 for c in document["claims"])  # 2 classes x 3 validation images
    assert {f["id"]: f["value"] for f in document["facts"]}["full_optimizer_steps_joint"] == 2 * 4  # 8 images / 4


@pytest.mark.slow
def test_full_driver_runs_each_stage_as_a_two_process_torchrun_job(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tiny_imagenet_folder(tmp_path / "imagenet", (4, 3), "png")
    out = tmp_path / "full"
    sets = ["model.arch=tiny_cnn", "model.width=4", "model.num_classes=2", f"data.root={root}", *TINY,
            "data.batch_size=2", "supernet.epochs=1", "mixed.hessian_images=4", "mixed.hessian_batch=4",
            "mixed.hessian_probes=2"]
    document = _full(out, "double_rounding/configs/resnet18_imagenet.yaml", *sets, arms=["ours", "separate", "mixed"],
                     plan=["nproc=2", "sep_bits=[2]", "mixed_random=2"])
    claims = {c["id"]: c for c in document["claims"]}
    assert set(claims) == {f"full_w{b}_minus_fp32" for b in (8, 6, 4, 2)} | {
        "full_joint_minus_separate_w2", "full_mixed_minus_uniform_3bit", "full_searched_minus_random_3bit"}
    assert all(c["n"] == 6 for c in claims.values())  # the driver alone evaluates: every validation image once
    facts = {f["id"]: f["value"] for f in document["facts"]}
    # 8 training images, 2 ranks, batches of 2: 2 batches per rank; joint: one step per precision, separate: 4 epochs
    assert facts["full_optimizer_steps_joint"] == facts["full_optimizer_steps_separate"] == 8
    assert claims["full_mixed_minus_uniform_3bit"]["measured"] == pytest.approx(
        facts["full_mixed_top1_searched_3bit"] - facts["full_mixed_top1_uniform_w3"])
    runs = out / "runs"
    for arm, stage in (("ours", "multi"), ("sep2", "multi"), ("mixed", "multi"), ("mixed", "supernet")):
        assert (runs / arm / f"{stage}.yaml").is_file()  # the config the torchrun job ran
        assert load_checkpoint(runs / arm / stage / "last.pt")["global_step"] == 2 * (4 if arm == "sep2" else 1)
    assert load_int8(runs / "mixed" / "supernet" / "model.int8.pt")["graph"]["bits"] == [4, 3, 2]


def test_full_driver_refuses_to_run_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="as one process.*nproc"):
        _full(out, "double_rounding/configs/resnet20_cifar10.yaml", f"data.root={tmp_path}")
    assert not out.exists()


def test_missing_or_damaged_cifar10_is_one_clear_error(tmp_path):
    argv = ["reproduce", "--scale", "full", "--out", str(tmp_path / "out"), "--config",
            "double_rounding/configs/resnet20_cifar10.yaml", f"--config-set=data.root={tmp_path}"]
    with pytest.raises(UsageError, match="CIFAR-10 not found.*test_batch"):
        run(argv)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UsageError, match="damaged"):
        run(argv)
    assert not marker.exists()  # the MD5 check runs before any unpickling


# the tiny CIFAR-10 copy passes torchvision's MD5 check only with this patch, applied in each torchrun worker
WORKER = """import sys
import torchvision.datasets.cifar as c
c.CIFAR10._check_integrity = lambda self: True
c.check_integrity = lambda *a, **k: True
from double_rounding.cli import main
main(sys.argv[1:])
"""


def _torchrun(tmp_path, port, *args):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", str(worker),
           "train", "--device", "cpu", "--quiet", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_train_cli_under_two_process_torchrun_on_tiny_cifar10_and_imagenet(tmp_path, cifar_ok):
    out = tmp_path / "r20"
    common = ["--config", "double_rounding/configs/resnet20_cifar10.yaml", "--set", f"data.root={cifar_ok}",
              "--set", "model.width=4", *[x for s in TINY for x in ("--set", s)]]
    _torchrun(tmp_path, 29741, "--stage", "fp32", "--out", str(out), *common)
    _torchrun(tmp_path, 29742, "--stage", "multi", "--out", str(out), *common)
    # 40 training images, 2 ranks, batches of 8 per rank: 2 steps per epoch on each rank (5 in one process)
    state = load_checkpoint(out / "multi" / "last.pt")
    assert state["global_step"] == 2 and state["extra"]["precision_step"]["steps"] == 2
    assert run(["eval", "--int8", str(out / "multi" / "model.int8.pt"), "--bits", "all", "--device", "cpu",
                *common]) == 0

    root = tiny_imagenet_folder(tmp_path / "imagenet", (4, 3), "png")
    sets = ["model.arch=tiny_cnn", "model.width=4", "model.num_classes=2", f"data.root={root}", *TINY,
            "data.batch_size=2"]
    config = ["--config", "double_rounding/configs/resnet18_imagenet.yaml", *[x for s in sets for x in ("--set", s)]]
    imagenet = tmp_path / "r18"
    _torchrun(tmp_path, 29743, "--stage", "fp32", "--out", str(imagenet), *config)
    _torchrun(tmp_path, 29744, "--stage", "multi", "--out", str(imagenet), *config)
    assert load_checkpoint(imagenet / "multi" / "last.pt")["global_step"] == 2  # 8 images, 2 ranks, batches of 2
    artefact = load_int8(imagenet / "multi" / "model.int8.pt")
    assert artefact["available_bits"] == [8, 6, 4, 2] and artefact["meta"]["model"]["arch"] == "tiny_cnn"
