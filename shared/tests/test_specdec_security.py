"""A head file is data: ``python -m effrepro.specdec eval | generate | tune --head`` refuse a crafted checkpoint
(whose unpickling would create a marker file) and files of another kind with exit 2 and one ``error:`` line.
These load SmolLM2 first (about 10 s each), hence ``slow``."""

import pytest
from effrepro.errors import run_cli
from effrepro.specdec.cli import main
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint

pytestmark = pytest.mark.slow
COMMANDS = {
    "generate": ["generate", "--prompt", "Hi", "--max-new-tokens", "4", "--total-tokens", "8"],
    "eval": ["eval", "--max-questions", "1", "--max-new-tokens", "4", "--total-tokens", "8"],
    "tune": ["tune", "--no-cache"],
}


def _cli(argv):
    run_cli(main, argv)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_head_option_refuses_a_crafted_checkpoint(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "head.pt", marker)
    code, _, err = exit_of(_cli, [*COMMANDS[command], "--head", str(evil), "--device", "cpu"], capsys)
    assert_refused(code, err, marker)


@pytest.mark.parametrize("obj,match", [
    ({"kind": "ftp_plan", "schedule": [], "scope": "block", "router": None}, "is an FTP plan file"),
    ({"method": "GumihoDraft", "config": {}, "state_dict": {}}, "holds a GumihoDraft head, not an EAGLE head"),
    ({"method": "EagleHead", "config": {"hidden_size": 576}, "state_dict": {}}, "missing fields"),
])
def test_head_option_refuses_files_of_another_kind(tmp_path, capsys, obj, match):
    path = save_checkpoint(tmp_path / "head.pt", obj)
    code, _, err = exit_of(_cli, [*COMMANDS["generate"], "--head", str(path), "--device", "cpu"], capsys)
    assert_refused(code, err, tmp_path / "none", match=match)
