"""A checkpoint is data: ``kerneldna eval`` and a resumed ``kerneldna train`` refuse a crafted checkpoint (whose
unpickling would create a marker file) with exit 2 and one ``error:`` line; a file of another kind likewise."""

import pytest
import yaml
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint
from kerneldna.cli import main


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(arch="mini", variant="kerneldna", dataset="clutter", epochs=1, batch_size=16,
                                        train_size=32, test_size=16, mini_widths=[4, 8, 8], mini_stem_stride=2,
                                        progress=False)))
    return path


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle"])
def test_eval_refuses_a_crafted_checkpoint(tmp_path, capsys, layout):
    marker = tmp_path / "pwned"
    code, _, err = exit_of(main, ["eval", str(write_crafted(tmp_path / "evil.pt", marker, layout))], capsys)
    assert_refused(code, err, marker)


def test_train_refuses_a_crafted_last_pt_to_resume_from(tmp_path, capsys):
    marker = tmp_path / "pwned"
    write_crafted(tmp_path / "run" / "last.pt", marker)
    argv = ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "run")]
    code, _, err = exit_of(main, argv, capsys)
    assert_refused(code, err, marker)


def test_files_of_another_kind_are_one_clear_error(tmp_path, capsys):
    plan = save_checkpoint(tmp_path / "plan.pt", {"kind": "ftp_plan", "schedule": [], "scope": "block",
                                                  "router": None})
    code, _, err = exit_of(main, ["eval", str(plan)], capsys)
    assert_refused(code, err, tmp_path / "none", match="is an FTP plan file")
    save_checkpoint(tmp_path / "run" / "last.pt", {"model": {}, "arch": "mlp_tiny"})  # a deepkd student
    argv = ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "run")]
    code, _, err = exit_of(main, argv, capsys)
    assert_refused(code, err, tmp_path / "none", match="is a distilled student")
