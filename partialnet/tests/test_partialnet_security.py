"""A checkpoint is data: every ``partialnet`` command that reads a checkpoint refuses a crafted one (whose
unpickling would create a marker file) with exit 2 and one ``error:`` line, and a file of another kind likewise."""

from pathlib import Path

import pytest
import torch
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint
from partialnet.cli import main

TINY = ["model_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], feature_dim: 16}"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        for label in ("n01", "n02"):
            (root / split / label).mkdir(parents=True)
            Image.fromarray(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).save(root / split / label / "0.JPEG")
    return root


def _eval(folder, ckpt):
    return ["eval", "--model", "partialnet_t0", "--data", str(folder), "--checkpoint", str(ckpt), "--img-size", "32",
            "--workers", "0"]


def _train(folder, out):
    return ["train", "--model", "partialnet_t0", "--data", str(folder), "--out", str(out), "epochs=1", "batch_size=2",
            "eval_batch_size=2", "workers=0", "warmup_epochs=0", "augment.image_size=32", "augment.multi_scale=null",
            *TINY]


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle"])
def test_eval_refuses_a_crafted_checkpoint(image_folder, tmp_path, capsys, layout):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "evil.pt", marker, layout)
    code, _, err = exit_of(main, _eval(image_folder, evil), capsys)
    assert_refused(code, err, marker)


def test_train_refuses_a_crafted_last_pt_to_resume_from(image_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "run" / "last.pt", marker)
    code, _, err = exit_of(main, _train(image_folder, tmp_path / "run"), capsys)
    assert_refused(code, err, marker)


def test_files_of_another_kind_are_one_clear_error(image_folder, tmp_path, capsys):
    head = save_checkpoint(tmp_path / "head.pt", {"method": "EagleHead", "config": {}, "state_dict": {}})
    code, _, err = exit_of(main, _eval(image_folder, head), capsys)
    assert_refused(code, err, tmp_path / "none", match="is a trained draft head")
    save_checkpoint(tmp_path / "run" / "last.pt", {"kind": "ftp_plan", "schedule": [], "scope": "block",
                                                   "router": None})
    code, _, err = exit_of(main, _train(image_folder, tmp_path / "run"), capsys)
    assert_refused(code, err, tmp_path / "none", match="is an FTP plan file")
