"""A checkpoint is data: ``deepkd eval --ckpt``, a teacher checkpoint (``teacher_ckpt=``) and a resumed
``deepkd train`` refuse a crafted checkpoint (whose unpickling would create a marker file) with exit 2 and one
``error:`` line; a file of another kind likewise."""

import pytest
from deepkd.cli import main
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint

DATA = ["data.dataset=mnist100", "data.train_size=32", "data.test_size=32", "data.batch_size=16",
        "data.test_batch_size=32", "data.workers=0", "solver.epochs=1", "solver.decay_epochs=[1]"]
PLAIN = [*DATA, "student=mlp_tiny", "teacher=null", "distiller.name=none", "solver.method=sgd"]


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle"])
def test_eval_refuses_a_crafted_checkpoint(tmp_path, capsys, layout):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "evil.pt", marker, layout)
    code, _, err = exit_of(main, ["eval", "--ckpt", str(evil), "--arch", "mlp_tiny", *DATA], capsys)
    assert_refused(code, err, marker)


def test_train_refuses_a_crafted_teacher(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "teacher.pt", marker)
    argv = ["train", "--out", str(tmp_path / "run"), "--quiet", *DATA, "student=mlp_tiny", "teacher=mlp_tiny",
            f"teacher_ckpt={evil}"]
    code, _, err = exit_of(main, argv, capsys)
    assert_refused(code, err, marker)


def test_train_refuses_a_crafted_last_pt_to_resume_from(tmp_path, capsys):
    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "run" / "last.pt", marker)
    code, _, err = exit_of(main, ["train", "--out", str(tmp_path / "run"), "--quiet", *PLAIN], capsys)
    assert_refused(code, err, marker)


def test_files_of_another_kind_are_one_clear_error(tmp_path, capsys):
    head = save_checkpoint(tmp_path / "head.pt", {"method": "JakiroDraft", "config": {}, "state_dict": {}})
    code, _, err = exit_of(main, ["eval", "--ckpt", str(head), "--arch", "mlp_tiny", *DATA], capsys)
    assert_refused(code, err, tmp_path / "none", match="is a trained draft head")
    argv = ["train", "--out", str(tmp_path / "run"), "--quiet", *DATA, "student=mlp_tiny", "teacher=mlp_tiny",
            f"teacher_ckpt={head}"]
    code, _, err = exit_of(main, argv, capsys)
    assert_refused(code, err, tmp_path / "none", match="is a trained draft head")
