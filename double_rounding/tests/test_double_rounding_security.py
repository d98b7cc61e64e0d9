"""A checkpoint is data: every ``double_rounding`` command that reads a checkpoint or int8 file (``eval --int8``,
``search --int8``, ``train --init``, ``hessian --init``, a resumed ``train``) refuses a crafted one (whose
unpickling would create a marker file) with exit 2 and one ``error:`` line; a file of another kind likewise."""

import pytest
from double_rounding.cli import main
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint

TINY = ["--set", "model.width=4", "--set", "data.train_size=32", "--set", "data.test_size=32", "--set",
        "data.batch_size=16", "--set", "quant.calib_images=16", "--device", "cpu"]


def _commands(evil, out):
    return {
        "eval": ["eval", "--int8", str(evil), *TINY],
        "search": ["search", "--int8", str(evil), "--out", str(out), "--traces", str(evil), *TINY],
        "train-multi": ["train", "--stage", "multi", "--init", str(evil), "--out", str(out), "--quiet", *TINY],
        "train-supernet": ["train", "--stage", "supernet", "--init", str(evil), "--out", str(out), "--quiet",
                           "--set", "mixed.sampler=uniform", *TINY],
        "hessian": ["hessian", "--init", str(evil), "--out", str(out), *TINY],
    }


@pytest.mark.parametrize("command", ["eval", "search", "train-multi", "train-supernet", "hessian"])
@pytest.mark.parametrize("layout", ["zip", "pickle"])
def test_file_options_refuse_a_crafted_checkpoint(tmp_path, capsys, command, layout):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "evil.pt", marker, layout)
    code, _, err = exit_of(main, _commands(evil, tmp_path / "out")[command], capsys)
    assert_refused(code, err, marker)


def test_train_refuses_a_crafted_last_pt_to_resume_from(tmp_path, capsys):
    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "out" / "fp32" / "last.pt", marker)
    code, _, err = exit_of(main, ["train", "--stage", "fp32", "--out", str(tmp_path / "out"), "--quiet", *TINY],
                           capsys)
    assert_refused(code, err, marker)


def test_files_of_another_kind_are_one_clear_error(tmp_path, capsys):
    head = save_checkpoint(tmp_path / "head.pt", {"method": "EagleHead", "config": {}, "state_dict": {}})
    code, _, err = exit_of(main, ["eval", "--int8", str(head), *TINY], capsys)
    assert_refused(code, err, tmp_path / "none", match="is a trained draft head")
