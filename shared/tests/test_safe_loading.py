"""Checkpoints are read as data only: a crafted file whose unpickling would run code is refused before any of it
runs (one UsageError), for every loader of the shared package; our own files, old and new, still load."""

import io
import random

import numpy as np
import pytest
import torch
from effrepro.errors import UsageError
from effrepro.testing import write_crafted
from effrepro.train import Trainer, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from effrepro.train.checkpoint import check_kind, file_kind, unsafe_globals
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CASES = [
    ("zip", "system", None),
    ("legacy", "system", None),
    ("pickle", "system", None),
    ("zip", "exec", None),
    ("zip", "system", lambda p: p),  # the payload is the whole file
    ("zip", "system", lambda p: {"rng": {"numpy": np.array([p], dtype=object)}}),  # inside an allowed NumPy array
]


@pytest.mark.parametrize("layout,how,wrap", CASES)
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, layout, how, wrap):
    marker = tmp_path / "pwned"
    path = write_crafted(tmp_path / "evil.pt", marker, layout, how, wrap)
    assert not marker.exists()
    with pytest.raises(UsageError, match="refusing to load|corrupt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_the_refusal_names_what_the_file_would_import(tmp_path):
    path = write_crafted(tmp_path / "evil.pt", tmp_path / "pwned")
    assert unsafe_globals(path) == ["posix.system"] or unsafe_globals(path) == ["nt.system"]
    with pytest.raises(UsageError, match=r"refusing to load .*system.*could run code"):
        load_checkpoint(path)


def test_save_refuses_objects_that_would_not_load_as_data(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"step": 1})
    with pytest.raises(TypeError, match="would need"):
        save_checkpoint(tmp_path / "ck.pt", {"step": 2, "model": nn.Linear(2, 2)})
    assert load_checkpoint(tmp_path / "ck.pt") == {"step": 1}  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_save_turns_paths_and_numpy_values_into_loadable_ones(tmp_path):
    from pathlib import Path

    state = nn.BatchNorm1d(3).state_dict()
    save_checkpoint(tmp_path / "ck.pt", {"out": Path("/x/y"), "lr": np.float32(0.5), "n": np.int64(3),
                                         "arr": np.arange(3), "model": state})
    back = load_checkpoint(tmp_path / "ck.pt")
    assert back["out"] == "/x/y" and back["lr"] == 0.5 and back["n"] == 3 and isinstance(back["n"], int)
    assert torch.equal(back["arr"], torch.arange(3))
    assert back["model"]._metadata == state._metadata  # state-dict version info survives


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    seed_everything(3)
    random.random(), np.random.rand(), torch.rand(1)
    np.random.randn()  # leaves a cached gaussian
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1)) == expected


def test_old_checkpoints_with_a_numpy_rng_state_still_load_and_restore(tmp_path):
    seed_everything(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "rng": old}, tmp_path / "last.pt")  # the former format
    expected = (random.random(), np.random.rand(), torch.rand(1))
    seed_everything(0)
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def _trainer(out_dir, epochs):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def loss_fn(m, batch):
        return {"loss": nn.functional.cross_entropy(m(batch[0]), batch[1])}

    return Trainer(model, opt, data, loss_fn=loss_fn, epochs=epochs, out_dir=out_dir, progress=False,
                   config={"lr": 0.1}, ema_decay=0.9)


def test_trainer_checkpoints_load_as_data_and_resume_bit_for_bit(tmp_path):
    straight = _trainer(tmp_path / "a", 3)
    straight.fit()
    _trainer(tmp_path / "b", 1).fit()
    assert unsafe_globals(tmp_path / "b" / "last.pt") == []
    torch.load(tmp_path / "b" / "last.pt", weights_only=True)  # no allow-list needed for new files
    resumed = _trainer(tmp_path / "b", 3)
    assert resumed.start_epoch == 1
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_crafted_last_pt_in_the_run_folder_is_refused_on_resume(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    write_crafted(tmp_path / "run" / "last.pt", marker)
    with pytest.raises(UsageError, match="refusing to load"):
        _trainer(tmp_path / "run", 1)
    assert not marker.exists()


def test_int8_loader_refuses_crafted_and_wrong_kind_files(tmp_path):
    from effrepro.quant.export import load_int8

    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(UsageError, match="refusing to load"):
        load_int8(tmp_path / "evil.pt")
    save_checkpoint(tmp_path / "head.pt", {"method": "EagleHead", "config": {}, "state_dict": {}})
    with pytest.raises(UsageError, match="is a trained draft head.*expected an int8 export.*double_rounding train"):
        load_int8(tmp_path / "head.pt")
    assert not marker.exists()


def test_eagle_head_loader_refuses_crafted_and_wrong_kind_files(tmp_path):
    from effrepro.specdec.eagle import read_eagle_head

    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(UsageError, match="refusing to load"):
        read_eagle_head(tmp_path / "evil.pt", torch.zeros(10, 4))
    _trainer(tmp_path / "run", 1).fit()
    with pytest.raises(UsageError, match="is a training state.*expected a trained draft head"):
        read_eagle_head(tmp_path / "run" / "last.pt", torch.zeros(10, 4))
    save_checkpoint(tmp_path / "bad.pt", {"method": "EagleHead", "config": {"no_such_field": 1}, "state_dict": {}})
    with pytest.raises(UsageError, match="config"):
        read_eagle_head(tmp_path / "bad.pt", torch.zeros(10, 4))
    assert not marker.exists()


def test_mm_backbone_checkpoint_refuses_a_crafted_file(tmp_path):
    pytest.importorskip("timm")
    from effrepro.mm.backbones import TimmBackbone

    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(UsageError, match="refusing to load"):
        TimmBackbone("resnet18", init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "evil.pt")})
    assert not marker.exists()


def test_file_kinds_are_recognised_with_or_without_a_kind_field(tmp_path):
    assert file_kind({"kind": "ftp_plan"}) == "ftp-plan"
    assert file_kind({"format": "effrepro-int8/1"}) == "int8"
    assert file_kind({"model": {}, "optimizer": {}, "epoch": 1, "rng": {}}) == "train-state"
    assert file_kind({"method": "JakiroDraft", "config": {}, "state_dict": {}}) == "draft-head"
    assert file_kind({"w": torch.zeros(1)}) == "state-dict"
    assert file_kind([1, 2]) is None and file_kind({"x": 1}) is None
    check_kind({"x": 1}, "f.pt", "int8")  # unknown kinds are left to the caller's own checks
    with pytest.raises(UsageError, match="f.pt is an FTP plan file.*expected a training state"):
        check_kind({"kind": "ftp_plan"}, "f.pt", "train-state")


def test_in_memory_buffers_load_weights_only():
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


@pytest.mark.mm
def test_mm_runner_checkpoints_are_data_and_resume_their_logs(tmp_path):
    from effrepro.mm.runner import resume_globals, safe_checkpoint_hook
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import _load_checkpoint

    hub = MessageHub.get_instance("safe-loading-test")
    for step in range(3):
        hub.update_scalar("train/loss", np.float64(1.0 / (step + 1)))
        hub.update_info("iter", step)
    hub.update_info("coco/bbox_mAP", np.float64(0.5))
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    marker = tmp_path / "pwned"
    checkpoint = {"meta": {"epoch": 1, "iter": 3, "cfg": "model = dict()", "seed": 0,
                           "config": f"import os\nos.system('touch {marker}')"},
                  "state_dict": model.state_dict(), "message_hub": hub.state_dict(), "optimizer": opt.state_dict(),
                  "param_schedulers": [{"milestones": __import__("collections").Counter([8, 11]), "last_step": 3}]}
    hook = safe_checkpoint_hook()
    hook.before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, tmp_path / "epoch_1.pth")
    assert unsafe_globals(tmp_path / "epoch_1.pth") == []  # no HistoryBuffer, no getattr of its methods
    with torch.serialization.safe_globals(resume_globals()):
        loaded = _load_checkpoint(str(tmp_path / "epoch_1.pth"), map_location="cpu")
        hook.after_load_checkpoint(None, loaded)
        assert "config" not in loaded["meta"]  # mmengine's resume would execute it as a Python config
        restored = MessageHub.get_instance("safe-loading-restored")
        restored.load_state_dict(loaded["message_hub"])
        assert restored.get_scalar("train/loss").current() == pytest.approx(1 / 3)
        assert restored.get_scalar("train/loss").mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
        write_crafted(tmp_path / "epoch_2.pth", marker, wrap=lambda p: {"meta": {}, "message_hub": p})
        with pytest.raises(Exception, match="posix.system|Unsupported"):
            _load_checkpoint(str(tmp_path / "epoch_2.pth"), map_location="cpu")
    assert not marker.exists()


def test_a_crafted_cifar100_file_never_runs(tmp_path):
    """CIFAR-100 comes as python pickles; torchvision checks their MD5 sums before unpickling, so a crafted file
    is a 'damaged' error and its payload never runs."""
    from effrepro.data import cifar100

    marker = tmp_path / "pwned"
    for name in ("train", "test", "meta"):
        write_crafted(tmp_path / "cifar-100-python" / name, marker, "pickle")
    with pytest.raises(UsageError, match="damaged"):
        cifar100(tmp_path, train=True)
    assert not marker.exists()


def test_head_configs_of_another_version_are_one_clear_error():
    from effrepro.specdec.eagle import DraftModelConfig
    from effrepro.train.checkpoint import config_from

    base = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=2, vocab_size=10)
    assert config_from(DraftModelConfig, dict(base, head_dim=None), "h.pt").hidden_size == 8
    for bad, match in ((dict(base, hidden_size="8"), "wrong value type at hidden_size='8'"),
                       (dict(base, fc_bias=None), "wrong value type at fc_bias=None"),
                       ({"hidden_size": 8}, "missing fields intermediate_size"),
                       (dict(base, experts=4), "unknown fields experts"),
                       ([1, 2], "not a mapping")):
        with pytest.raises(UsageError, match=match):
            config_from(DraftModelConfig, bad, "h.pt")


def test_a_config_with_paths_resumes(tmp_path):
    from pathlib import Path

    def make():
        seed_everything(0)
        model = nn.Linear(2, 2)
        data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), data, epochs=2, out_dir=tmp_path,
                       loss_fn=lambda m, b: {"loss": nn.functional.cross_entropy(m(b[0]), b[1])}, progress=False,
                       config={"data": Path("/data/x"), "lr": np.float32(0.1), "sizes": (1, 2)})

    trainer = make()
    trainer.epochs = 1
    trainer.fit()
    assert make().start_epoch == 1  # the stored config (paths as strings) equals the new run's


def test_no_source_or_test_file_loads_with_the_full_unpickler():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    banned = ("weights_only=" + "False", "TORCH_FORCE_NO_" + "WEIGHTS_ONLY_LOAD")
    offenders = []
    for folder in ("shared", *sorted(p.name for p in root.iterdir() if (p / "src").is_dir() and p.name != "shared")):
        for path in (root / folder).rglob("*.py"):
            if ".venv" in path.parts:
                continue
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(root)}: {word}" for word in banned if word in text]
    assert not offenders


def _tiny_detection(tmp_path, epochs):
    from effrepro.data import DIGIT_CLASSES, write_coco_digits
    from effrepro.mm import detection_config, mask_rcnn

    if not (tmp_path / "annotations").exists():
        write_coco_digits(tmp_path, "train", size=8)
        write_coco_digits(tmp_path, "val", size=4)
    backbone = dict(type="ResNet", depth=18, base_channels=8, num_stages=4, out_indices=(0, 1, 2, 3),
                    norm_cfg=dict(type="BN", requires_grad=True), style="pytorch", init_cfg=None)
    model = mask_rcnn(backbone, [8, 16, 32, 64], num_classes=10, width=32, fc_channels=64, roi_samples=32)
    return detection_config(model, tmp_path, tmp_path / "work", epochs=epochs, lr=1e-4, classes=DIGIT_CLASSES,
                            batch_size=4, warmup_iters=2, image_scale=(128, 128))


@pytest.mark.mm
def test_mm_runner_refuses_a_crafted_checkpoint_in_its_work_dir(tmp_path):
    from effrepro.mm import train_and_evaluate

    marker = tmp_path / "pwned"
    cfg = _tiny_detection(tmp_path, 1)
    write_crafted(tmp_path / "work" / "epoch_1.pth", marker, wrap=lambda p: {"meta": {"epoch": 1}, "state_dict": p})
    (tmp_path / "work" / "last_checkpoint").write_text(str(tmp_path / "work" / "epoch_1.pth"))
    with pytest.raises(UsageError, match="refusing to resume.*posix.system"):
        train_and_evaluate(cfg)
    assert not marker.exists()


@pytest.mark.mm
@pytest.mark.slow
def test_mm_runner_resumes_from_its_own_data_only_checkpoint(tmp_path):
    from effrepro.mm import train_and_evaluate

    train_and_evaluate(_tiny_detection(tmp_path, 1))
    assert set(unsafe_globals(tmp_path / "work" / "epoch_1.pth")) <= {"numpy._core.multiarray.scalar", "numpy.dtype"}
    train_and_evaluate(_tiny_detection(tmp_path, 2))  # resumes from epoch_1.pth under weights_only
    assert (tmp_path / "work" / "epoch_2.pth").is_file()
